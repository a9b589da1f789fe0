"""Evaluating an archive: the field's protocol on its images, beside the honest baselines.

``d3codec.evaluate("fm.d3")`` reads the archive (d3codec.D3Dataset), loads the real dataset it was
made from for its test split, trains fresh students on the archive (d3codec.students: ConvNet-3,
300 epochs, DSA, SGD, the final epoch's test accuracy, several students per row) and, on request,
on random real images stored in the same bytes. ``d3 eval`` is this function with a command line.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from . import data
from .data import RealData
from .dataset import D3Dataset
from .limits import DecodeLimits
from .models import resolve_device
from .students import EvalResult, StudentConfig, random_real_subset, replay_students, test_split, train_students

TRAININGS = ("auto", "replay", "standard", "both")
LABELS = ("auto", "online", "stored", "hard")
BASELINES = ("none", "random-real")
RESAMPLE_SEED_STRIDE = 100_003  # student r's fresh draw at epoch e uses sample_seed + STRIDE · (r + 1) + e


@dataclass(frozen=True)
class EvalProtocol:
    """How an archive is evaluated.

    Attributes:
        model: the student network (``convnet3``, ``resnet18``, ``mlp``; d3codec.models).
        epochs: student epochs (standard training); runs: students per row (mean ± std).
        baseline: ``none``, or ``random-real``: random real images in the same bytes (float32 and PNG)
            and, for an archive with a schedule, as many real images as it stores.
        training: ``replay`` trains by the archive's own schedule (bptt archives), ``standard`` by the
            protocol, ``auto`` replay where the archive has a schedule, ``both`` a row each.
        samples_per_class / sample_seed: the draw of a sampled archive (d3, d2m; None: the archive's).
        resample_every_epoch: fresh samples for every student epoch (DiM), same count per class.
        labels: what the archive's students learn from (standard training): ``online``, the archive's
            stored labeller's soft labels of every augmented batch; ``stored``, the soft labels stored
            with the images (or the hard ones where there are none); ``hard``, the classes; ``auto``,
            online where the archive has a labeller, else stored.
        seed: the first student's seed (then seed + 1, ...).
    """

    model: str = "convnet3"
    epochs: int = 300
    runs: int = 3
    baseline: str = "none"
    training: str = "auto"
    samples_per_class: int | None = None
    sample_seed: int = 0
    resample_every_epoch: bool = False
    labels: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.training not in TRAININGS or self.baseline not in BASELINES or self.labels not in LABELS:
            raise ValueError(f"training must be one of {', '.join(TRAININGS)}, baseline one of {', '.join(BASELINES)} "
                             f"and labels one of {', '.join(LABELS)}, not {self.training!r}, {self.baseline!r} and "
                             f"{self.labels!r}")
        if self.epochs < 1 or self.runs < 1:
            raise ValueError(f"epochs and runs must be at least 1, not {self.epochs} and {self.runs}")


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: one row per way of training (the archive's rows first, then the
    baselines'), each with its final-epoch accuracies (fractions), seconds per student and bytes."""

    archive: str
    dataset: str
    device: str
    protocol: EvalProtocol
    rows: list[EvalResult] = field(default_factory=list)

    def header(self) -> str:
        p = self.protocol
        return (f"{p.model}, {p.epochs} epochs (standard rows), {p.runs} runs, device {self.device}; final-epoch "
                f"test accuracy on {self.dataset}:")

    def to_json(self) -> dict:
        """The evaluation as JSON-ready values (``d3 eval --json``)."""
        return {"archive": self.archive, "dataset": self.dataset, "device": self.device,
                "protocol": asdict(self.protocol),
                "rows": [{"name": r.name, "images": r.images, "bytes": r.file_bytes, "accuracies": r.accuracies,
                          "seconds": r.seconds, "mean": r.mean, "std": r.std} for r in self.rows]}


def evaluate(archive: str | os.PathLike, protocol: EvalProtocol | None = None, *, dataset: str | RealData | None = None,
             data_root: str | os.PathLike | None = None, device: str = "auto", limits: DecodeLimits | None = None,
             progress: bool = False, log: Callable[[str], None] | None = None, **options) -> Evaluation:
    """Train fresh students on ``archive`` and test them on the real test split.

    Args:
        protocol: an :class:`EvalProtocol`; ``options`` override its fields by name
            (``evaluate("fm.d3", epochs=100, baseline="random-real")``).
        dataset: the real dataset (a name for d3codec.data.load_dataset, or RealData; default the
            archive's ``meta.dataset.name``).
        device: ``auto`` (CUDA where there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
        limits: the decode limits (d3codec.limits.DecodeLimits) the archive is read within.
        progress: show each student's epochs (a bar in a terminal, a line every 30 s in a log).
        log: called with a line per student as it finishes.
    Returns: :class:`Evaluation`.
    Raises: D3FormatError / D3LimitError for an archive that cannot be read; D3DatasetError when the
        real dataset cannot be found; ValueError for options that do not fit the archive (an unknown
        option, replaying an archive without a schedule, resampling stored images, other classes).
    """
    unknown = set(options) - {f.name for f in fields(EvalProtocol)}
    if unknown:
        raise ValueError(f"evaluate() has no option {', '.join(sorted(unknown))}; the protocol's fields are "
                         f"{', '.join(f.name for f in fields(EvalProtocol))}")
    protocol = replace(protocol or EvalProtocol(), **options)
    dev = resolve_device(device)
    ds = D3Dataset(archive, samples_per_class=protocol.samples_per_class, seed=protocol.sample_seed, device=dev,
                   limits=limits)
    real = dataset if isinstance(dataset, RealData) else data.load_dataset(dataset or ds.meta["dataset"]["name"],
                                                                         data_root)
    if real.classes != ds.classes:
        raise ValueError(f"the archive's classes do not match {real.name}'s; pass --dataset")
    if tuple(real.image_shape) != ds.image_shape:
        raise ValueError(f"the archive's image shape {ds.image_shape} is not {real.name}'s "
                         f"{tuple(real.image_shape)}; pass the --dataset it was made from")
    training = protocol.training
    if training == "auto":
        training = "replay" if ds.schedule is not None else "standard"
    if training in ("replay", "both") and ds.schedule is None:
        raise ValueError("this archive carries no training schedule (only archives of method bptt do); "
                         "use --training standard")
    if protocol.labels == "online" and ds.labeller is None:
        raise ValueError("this archive stores no labeller: use --labels stored or hard")
    if protocol.resample_every_epoch and not ds.sampled:
        raise ValueError(f"--resample-every-epoch needs a sampled archive (d3, d2m), not {ds.meta['method']}")
    run = _Runner(protocol, real, test_split(real), dev, log, progress)
    result = Evaluation(str(archive), real.name, str(dev), protocol)
    file_bytes = Path(archive).stat().st_size
    if training in ("replay", "both"):
        result.rows.append(run.replayed(ds, file_bytes))
    if training in ("standard", "both"):
        result.rows.append(run.standard(ds, file_bytes))
    if protocol.baseline == "random-real":
        result.rows += run.random_real(ds, file_bytes)
    return result


@dataclass
class _Runner:
    """The rows of one evaluation (the archive's, the baselines'), sharing its protocol and test split."""

    protocol: EvalProtocol
    real: RealData
    test: tuple
    device: object
    log: Callable[[str], None] | None
    progress: bool

    def rows(self, name, images, targets, runs, file_bytes, **kw) -> EvalResult:
        p = self.protocol
        row = train_students(name, images, targets, self.real, runs, StudentConfig(model=p.model, epochs=p.epochs),
                             p.seed, self.device, self.test, self.log, **kw)
        row.file_bytes = file_bytes
        return row

    def replayed(self, ds: D3Dataset, file_bytes: int) -> EvalResult:
        sched = ds.schedule
        fixed = sched.init == "fixed"  # from the stored θ₀ every run is the same computation: run it once
        note = "stored θ₀: one run, as every run is the same" if fixed else "a fresh θ₀ per run"
        row = replay_students(f"archive ({ds.meta['method']}, replayed {sched.network} schedule of {sched.steps}×"
                              f"{sched.epochs} steps, {note})", sched, ds.images, ds.labels, self.real,
                              1 if fixed else self.protocol.runs, self.protocol.seed, self.device, self.test, self.log)
        row.file_bytes = file_bytes
        return row

    def standard(self, ds: D3Dataset, file_bytes: int) -> EvalResult:
        p = self.protocol
        labels = p.labels if p.labels != "auto" else ("online" if ds.labeller is not None else "stored")
        targets = {"online": ds.labeller, "hard": ds.labels}.get(labels, ds.soft_labels)
        targets = targets if targets is not None else ds.labels
        named = {"online": ", labelled online by its labeller", "hard": ", hard labels"}.get(labels, "")
        per_class = len(ds) // len(ds.classes)

        def fresh_draw(run: int, epoch: int):  # student ``run``'s samples for ``epoch`` (--resample-every-epoch)
            images, labels, soft = ds.draw(per_class, seed=p.sample_seed + RESAMPLE_SEED_STRIDE * (run + 1) + epoch)
            return images, (soft if soft is not None and ds.soft_labels is not None else labels)
        return self.rows(f"archive ({ds.meta['method']}{named})", ds.images, targets, p.runs, file_bytes,
                         resample=fresh_draw if p.resample_every_epoch else None, progress=self.progress)

    def random_real(self, ds: D3Dataset, file_bytes: int) -> list[EvalResult]:
        p, out = self.protocol, []
        if ds.schedule is not None:  # the BPTT paper's baseline: as many real images as the archive stores
            n = len(ds) // len(ds.classes)
            x, y, _ = random_real_subset(self.real, n * len(ds.classes) * math.prod(ds.image_shape) * 4, "float32",
                                         p.seed)
            out.append(self.rows(f"random real (same count, {n} per class)", x, y, p.runs, None,
                                 progress=self.progress))
        budget = ds.meta.get("budget", {}).get("bytes") or file_bytes
        for storage in ("float32", "png"):
            x, y, used = random_real_subset(self.real, budget, storage, p.seed)
            out.append(self.rows(f"random real ({storage})", x, y, p.runs, used, progress=self.progress))
        return out
