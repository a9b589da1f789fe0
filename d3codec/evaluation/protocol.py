"""Evaluating an archive: the field's protocol on its images, beside the honest baselines.

``d3codec.evaluate("fm.d3")`` reads the archive (d3codec.D3Dataset), loads the real dataset it was
made from for its test split, trains fresh students on the archive (d3codec.evaluation.students: ConvNet-3,
300 epochs, DSA, SGD, the final epoch's test accuracy, several students per row) and, on request,
on random real images stored in the same bytes. ``d3 eval`` is this function with a command line.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Literal, get_args

import torch

from d3codec.data import sources
from d3codec.data.real import RealData
from d3codec.decode.dataset import D3Dataset
from d3codec.decode.labeller import stored_bytes
from d3codec.evaluation.ranking import FULL_DATA_ACCURACY, Ranking
from d3codec.evaluation.students import (
    COMPILE_MODES,
    JPEG_QUALITY,
    CompileMode,
    EvalResult,
    Role,
    StudentConfig,
    random_real_subset,
    replay_students,
    test_split,
    train_students,
)
from d3codec.format.container import D3Reader
from d3codec.format.limits import DecodeLimits, output_bytes
from d3codec.format.text import safe_text
from d3codec.nn.models import resolve_device
from d3codec.registry import archive_kind

Training = Literal["auto", "replay", "standard", "both"]
Labels = Literal["auto", "online", "stored", "hard"]
Baseline = Literal["none", "random-real"]
TRAININGS: tuple[Training, ...] = get_args(Training)
LABELS: tuple[Labels, ...] = get_args(Labels)
BASELINES: tuple[Baseline, ...] = get_args(Baseline)
RESAMPLE_SEED_STRIDE = 100_003  # student r's fresh draw at epoch e uses sample_seed + STRIDE · (r + 1) + e


@dataclass(frozen=True)
class EvalProtocol:
    """How an archive is evaluated.

    Attributes:
        model: the student network (``convnet3``, ``resnet18``, ``mlp``; d3codec.nn.models).
        epochs: student epochs (standard training); runs: students per row (mean ± std).
        baseline: ``none``, or ``random-real``: random real images in the same bytes (float32, PNG, and
            JPEG at ``jpeg_quality``) with hard labels; for an archive with a labeller (labelled online),
            also PNG and JPEG images in the budget less the labeller's bytes, labelled online by the same
            labeller (the fair baseline); for an archive with a schedule, as many real images as it stores.
        jpeg_quality: the JPEG baseline's quality (1 to 95).
        ranking: also report DD-Ranking's metrics (d3codec.evaluation.ranking), training the rows they need (the
            archive with hard labels, random real PNG images with the archive's labels) where not already.
        training: ``replay`` trains by the archive's own schedule (bptt archives), ``standard`` by the
            protocol, ``auto`` replay where the archive has a schedule, ``both`` a row each.
        samples_per_class / sample_seed: the draw of a sampled archive (d3, d2m; None: the archive's).
        resample_every_epoch: fresh samples for every student epoch (DiM), same count per class.
        labels: what the archive's students learn from (standard training): ``online``, the archive's
            stored labeller's soft labels of every augmented batch; ``stored``, the soft labels stored
            with the images (or the hard ones where there are none); ``hard``, the classes; ``auto``,
            online where the archive has a labeller, else stored.
        seed: the first student's seed (then seed + 1, ...).
        compile: torch.compile the students: ``on``, ``off``, or ``auto`` (on for long runs; see
            d3codec.evaluation.students.StudentConfig).
    """

    model: str = "convnet3"
    epochs: int = 300
    runs: int = 3
    baseline: Baseline = "none"
    training: Training = "auto"
    samples_per_class: int | None = None
    sample_seed: int = 0
    resample_every_epoch: bool = False
    labels: Labels = "auto"
    seed: int = 0
    jpeg_quality: int = JPEG_QUALITY
    ranking: bool = False
    compile: CompileMode = "auto"

    def __post_init__(self):
        if self.training not in TRAININGS or self.baseline not in BASELINES or self.labels not in LABELS:
            raise ValueError(
                f"training must be one of {', '.join(TRAININGS)}, baseline one of {', '.join(BASELINES)} "
                f"and labels one of {', '.join(LABELS)}, not {self.training!r}, {self.baseline!r} and "
                f"{self.labels!r}"
            )
        if self.epochs < 1 or self.runs < 1:
            raise ValueError(f"epochs and runs must be at least 1, not {self.epochs} and {self.runs}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"the JPEG quality must be 1 to 95, not {self.jpeg_quality}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: one row per way of training (the archive's rows first, then the
    baselines'), each with its final-epoch accuracies (fractions), seconds per student and bytes."""

    archive: str
    dataset: str
    device: str
    protocol: EvalProtocol
    rows: list[EvalResult] = field(default_factory=list)
    ranking: Ranking | None = None  # DD-Ranking's metrics (protocol.ranking)

    def header(self) -> str:
        p = self.protocol
        return (
            f"{p.model}, {p.epochs} epochs (standard rows), {p.runs} runs, device {self.device}; final-epoch "
            f"test accuracy on {self.dataset}:"
        )

    def to_json(self) -> dict:
        """The evaluation as JSON-ready values (``d3 eval --json``)."""
        return {
            "archive": self.archive,
            "dataset": self.dataset,
            "device": self.device,
            "protocol": asdict(self.protocol),
            "rows": [
                {
                    "name": r.name,
                    "images": r.images,
                    "bytes": r.file_bytes,
                    "accuracies": r.accuracies,
                    "seconds": r.seconds,
                    "mean": r.mean,
                    "std": r.std,
                }
                for r in self.rows
            ],
            "ranking": self.ranking.to_json() if self.ranking is not None else None,
        }


def evaluate(
    archive: str | os.PathLike,
    protocol: EvalProtocol | None = None,
    *,
    dataset: str | RealData | None = None,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    limits: DecodeLimits | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **options,
) -> Evaluation:
    """Train fresh students on ``archive`` and test them on the real test split.

    Args:
        protocol: an :class:`EvalProtocol`; ``options`` override its fields by name
            (``evaluate("fm.d3", epochs=100, baseline="random-real")``).
        dataset: the real dataset (a name or folder for d3codec.data.sources.load_dataset, or RealData; default
            the archive's ``meta.dataset.name``, a label: a registered dataset, or a folder of that name
            under ``data_root``, never a path the archive gives, d3codec.data.sources.archive_dataset).
        device: ``auto`` (CUDA where there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
        limits: the decode limits (d3codec.format.limits.DecodeLimits) the archive is read within.
        progress: show each student's epochs (a bar in a terminal, a line every 30 s in a log).
        log: called with a line per student as it finishes.
    Returns: :class:`Evaluation`.
    Raises: D3FormatError / D3LimitError for an archive that cannot be read; D3DatasetError when the
        real dataset cannot be found; ValueError for options that do not fit the archive (an unknown
        option, replaying an archive without a schedule, resampling stored images, other classes).
    """
    unknown = set(options) - {f.name for f in fields(EvalProtocol)}
    if unknown:
        raise ValueError(
            f"evaluate() has no option {', '.join(sorted(unknown))}; the protocol's fields are "
            f"{', '.join(f.name for f in fields(EvalProtocol))}"
        )
    protocol = replace(protocol or EvalProtocol(), **options)
    dev = resolve_device(device)
    ds = D3Dataset(
        archive, samples_per_class=protocol.samples_per_class, seed=protocol.sample_seed, device=dev, limits=limits
    )
    real = real_data_of(ds, dataset, data_root)
    training = training_of(ds, protocol)
    with D3Reader(archive) as reader:
        kind = archive_kind(ds.meta["method"])
        section = kind.labeller_section if kind is not None else None
        labeller_bytes = stored_bytes(reader) or (stored_bytes(reader, section) if section else 0)
    run = _Runner(protocol, real, test_split(real), dev, log, progress, labeller_bytes)
    file_bytes = Path(archive).stat().st_size
    rows = []
    if training in ("replay", "both"):
        rows.append(run.replayed(ds, file_bytes))
    if training in ("standard", "both"):
        rows.append(run.standard(ds, file_bytes))
    if protocol.baseline == "random-real":
        rows += run.random_real(ds, file_bytes)
    ranking = None
    if protocol.ranking:
        rows += run.ranking_rows(ds, file_bytes, rows)
        ranking = run.ranking(ds, rows)
    return Evaluation(str(archive), real.name, str(dev), protocol, rows, ranking)


def real_data_of(ds: D3Dataset, dataset: str | RealData | None, data_root: str | os.PathLike | None) -> RealData:
    """The real dataset an archive is evaluated on: ``dataset`` (loaded at the archive's resolution), or the
    archive's own dataset name, a label resolved only among registered names or under ``data_root``.
    Raises: ValueError where its classes or image shape are not the archive's."""
    resolution = ds.image_shape[1]  # folder datasets are read at the archive's size
    if isinstance(dataset, RealData):
        real = dataset
    elif dataset is not None:
        real = sources.load_dataset(dataset, data_root, resolution)
    else:
        real = sources.archive_dataset(ds.meta["dataset"]["name"], data_root, resolution)
    if real.classes != ds.classes:
        raise ValueError(
            f"the archive's classes do not match {safe_text(real.name, 120)}'s; pass the `dataset` it was made from"
        )
    if tuple(real.image_shape) != ds.image_shape:
        raise ValueError(
            f"the archive's image shape {ds.image_shape} is not {safe_text(real.name, 120)}'s "
            f"{tuple(real.image_shape)}; pass the `dataset` it was made from"
        )
    return real


def training_of(ds: D3Dataset, protocol: EvalProtocol) -> Training:
    """How the archive's students train under ``protocol`` (``auto`` resolved: replay where it has a schedule).
    Raises: ValueError for a protocol the archive cannot follow, naming the protocol's field to change."""
    training = protocol.training
    if training == "auto":
        training = "replay" if ds.schedule is not None else "standard"
    if training in ("replay", "both") and ds.schedule is None:
        raise ValueError(
            "this archive carries no training schedule (only archives of method bptt do); use `training` standard"
        )
    if protocol.labels == "online" and ds.labeller is None:
        raise ValueError("this archive stores no labeller: use `labels` stored or hard")
    if protocol.resample_every_epoch and not ds.sampled:
        raise ValueError(f"`resample_every_epoch` needs a sampled archive (d3, d2m), not {ds.meta['method']}")
    if protocol.ranking and training == "replay":
        raise ValueError(
            "DD-Ranking's metrics compare students trained the standard way: use `training` standard or both"
        )
    return training


# A lazy archive's draw is trained on a batch at a time, decoded as it comes, once holding it whole would take
# more than this (images, labels and soft labels in float32): ImageNet's default draw at 64 pixels, 6.8 GB.
STREAM_ABOVE_BYTES = 2 << 30


def streamed(ds: D3Dataset, protocol: EvalProtocol, labels: str) -> bool:
    """Whether the archive's students read ``ds`` a batch at a time: a lazy draw over STREAM_ABOVE_BYTES, with
    the dataset's own targets or its labeller (hard labels of a soft-labelled draw, and per-epoch draws, take
    the draw whole)."""
    if not ds.lazy or protocol.resample_every_epoch or (labels == "hard" and ds.has_soft_labels):
        return False
    return output_bytes(len(ds), ds.image_shape, len(ds.classes), ds.has_soft_labels) > STREAM_ABOVE_BYTES


def archive_labels(protocol: EvalProtocol, ds: D3Dataset) -> str:
    """What the archive's students learn from under ``protocol``: online, stored or hard."""
    if protocol.labels != "auto":
        return protocol.labels
    return "online" if ds.labeller is not None else "stored"


@dataclass
class _Runner:
    """The rows of one evaluation (the archive's, the baselines'), sharing its protocol and test split."""

    protocol: EvalProtocol
    real: RealData
    test: tuple[torch.Tensor, torch.Tensor]
    device: torch.device
    log: Callable[[str], None] | None
    progress: bool
    labeller_bytes: int = 0  # the archive's labeller's bytes in its file

    def rows(self, name, images, targets, runs, file_bytes, role: Role | None = None, **kw) -> EvalResult:
        p = self.protocol
        config = StudentConfig(model=p.model, epochs=p.epochs, compile=p.compile)
        row = train_students(
            name, images, targets, self.real, runs, config, p.seed, self.device, self.test, self.log, **kw
        )
        row.file_bytes, row.role = file_bytes, role
        return row

    def replayed(self, ds: D3Dataset, file_bytes: int) -> EvalResult:
        sched = ds.schedule
        if sched is None:
            raise ValueError("this archive carries no training schedule to replay")
        fixed = sched.init == "fixed"  # from the stored θ₀ every run is the same computation: run it once
        note = "stored θ₀: one run, as every run is the same" if fixed else "a fresh θ₀ per run"
        row = replay_students(
            f"archive ({ds.meta['method']}, replayed {sched.network} schedule of {sched.steps}×"
            f"{sched.epochs} steps, {note})",
            sched,
            ds.images,
            ds.labels,
            self.real,
            1 if fixed else self.protocol.runs,
            self.protocol.seed,
            self.device,
            self.test,
            self.log,
        )
        row.file_bytes = file_bytes
        return row

    def standard(self, ds: D3Dataset, file_bytes: int, labels: str | None = None) -> EvalResult:
        p = self.protocol
        labels = labels or archive_labels(p, ds)
        named = {"online": ", labelled online by its labeller", "hard": ", hard labels"}.get(labels, "")
        per_class = len(ds) // len(ds.classes)
        if streamed(ds, p, labels):  # decoded a batch at a time: the whole draw would not be held
            role: Role = "archive" if labels == "online" or ds.has_soft_labels else "archive-hard"
            return self.rows(
                f"archive ({ds.meta['method']}{named})",
                ds,
                ds.labeller if labels == "online" else None,
                p.runs,
                file_bytes,
                role,
                progress=self.progress,
            )
        targets = {"online": ds.labeller, "hard": ds.labels}.get(labels, ds.soft_labels)
        targets = targets if targets is not None else ds.labels

        def fresh_draw(run: int, epoch: int):  # student ``run``'s samples for ``epoch`` (--resample-every-epoch)
            images, labels, soft = ds.draw(per_class, seed=p.sample_seed + RESAMPLE_SEED_STRIDE * (run + 1) + epoch)
            return images, (soft if soft is not None and ds.soft_labels is not None else labels)

        return self.rows(
            f"archive ({ds.meta['method']}{named})",
            ds.images,
            targets,
            p.runs,
            file_bytes,
            "archive-hard" if labels == "hard" or targets is ds.labels else "archive",
            resample=fresh_draw if p.resample_every_epoch else None,
            progress=self.progress,
        )

    def real_files(self, budget: int, storage: str, labeller=None) -> EvalResult:
        """Random real PNG or JPEG images in ``budget`` bytes (less the labeller's, where given: the fair
        baseline), with hard labels or labelled online by ``labeller``."""
        p = self.protocol
        cost = self.labeller_bytes if labeller is not None else 0
        x, y, used = random_real_subset(self.real, budget - cost, storage, p.seed, p.jpeg_quality)
        stored = "PNG" if storage == "png" else f"JPEG q{p.jpeg_quality}"
        png: Role | None = None if storage != "png" else "real-png-labeller" if labeller is not None else "real-png"
        if labeller is None:
            return self.rows(f"random real ({stored})", x, y, p.runs, used, png, progress=self.progress)
        return self.rows(
            f"random real ({stored}, {cost} B fewer) labelled online by the archive's labeller",
            x,
            labeller,
            p.runs,
            used + cost,
            png,
            progress=self.progress,
        )

    def random_real(self, ds: D3Dataset, file_bytes: int) -> list[EvalResult]:
        p, out = self.protocol, []
        if ds.schedule is not None:  # the BPTT paper's baseline: as many real images as the archive stores
            n = len(ds) // len(ds.classes)
            x, y, _ = random_real_subset(
                self.real, n * len(ds.classes) * math.prod(ds.image_shape) * 4, "float32", p.seed
            )
            out.append(
                self.rows(f"random real (same count, {n} per class)", x, y, p.runs, None, progress=self.progress)
            )
        budget = _budget(ds, file_bytes)
        x, y, used = random_real_subset(self.real, budget, "float32", p.seed)
        out.append(self.rows("random real (float32)", x, y, p.runs, used, progress=self.progress))
        out += [self.real_files(budget, storage) for storage in ("png", "jpeg")]
        if ds.labeller is not None and archive_labels(p, ds) == "online":
            out += [self.real_files(budget, storage, ds.labeller) for storage in ("png", "jpeg")]
        return out

    def ranking_rows(self, ds: D3Dataset, file_bytes: int, rows: list[EvalResult]) -> list[EvalResult]:
        """The rows DD-Ranking's metrics need (d3codec.evaluation.ranking) that ``rows`` lack, trained now: the
        archive with hard labels, and random real PNG images with the archive's labels."""
        roles, more = {r.role for r in rows}, []
        if "archive-hard" not in roles:
            more.append(self.standard(ds, file_bytes, "hard"))
        online = archive_labels(self.protocol, ds) == "online"
        if ("real-png-labeller" if online else "real-png") not in roles:
            more.append(self.real_files(_budget(ds, file_bytes), "png", ds.labeller if online else None))
        return more

    def ranking(self, ds: D3Dataset, rows: list[EvalResult]) -> Ranking:
        """DD-Ranking's metrics from ``rows``, which hold every row :meth:`ranking_rows` names."""
        labels = archive_labels(self.protocol, ds)
        by_role = {r.role: r for r in rows if r.role is not None}
        labelled = by_role.get("archive", by_role["archive-hard"])
        real = by_role["real-png-labeller" if labels == "online" else "real-png"]
        full = FULL_DATA_ACCURACY.get((self.real.name, self.protocol.model))
        same = {"online": "labelled online by the archive's labeller", "hard": "hard labels"}.get(
            labels, "hard labels (stored soft labels belong to the archive's own images)"
        )
        return Ranking(full[0] if full else None, by_role["archive-hard"].mean, labelled.mean, real.mean, same)


def _budget(ds: D3Dataset, file_bytes: int) -> int:
    """The archive's byte budget (its file size where it names none)."""
    return ds.meta.get("budget", {}).get("bytes") or file_bytes
