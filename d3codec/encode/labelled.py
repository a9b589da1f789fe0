"""Storing a labeller beside any method's archive (spec/FORMAT.md §5.8): :class:`LabelledEncoder` wraps a method's
encoder, trains (or takes) a ConvNet-3 labeller, plans its section into the budget and adds it to the archive;
:func:`auto_width` is the budget rule for its width. Reading it back is d3codec.decode.labeller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from d3codec.data.real import RealData
from d3codec.decode.labeller import labeller_parts, section_cost
from d3codec.encode import seeds
from d3codec.encode.interface import DatasetSpec, Encoded, Encoder, Overrun, Plan
from d3codec.errors import D3BudgetError, D3Error
from d3codec.format.container import Section
from d3codec.format.weights import WEIGHT_DTYPES
from d3codec.nn.accuracy import test_accuracy, test_split
from d3codec.nn.models import ConvNet
from d3codec.nn.teacher import Teacher, train_teacher
from d3codec.util.progress import Stage, Stages


@dataclass(frozen=True)
class LabellerConfig:
    """The labeller an archive stores. Units: ConvNet-3 channels; epochs over the training set.

    ``teacher`` (a d3codec.nn.teacher.Teacher of the dataset's classes in order, e.g. from ``--teacher``'s
    file) is stored instead of training one; its width then overrides ``width``."""

    width: int = 16  # channels of the ConvNet-3 trained here
    epochs: float = 10.0  # its training epochs (SGD, cosine schedule: d3codec.nn.teacher.train_teacher)
    temperature: float = 1.0  # the softmax temperature students see
    dtype: str = "int8"  # how it is stored: int8 (a scale per output channel) or float16
    teacher: Teacher | None = None  # a trained Teacher to store instead


@dataclass(frozen=True)
class LabelledPlan:
    """An encoder's plan for the budget less the labeller's bytes; ``max_bytes`` counts both. Other
    attributes are the inner plan's (``plan.images_per_class`` and so on)."""

    inner: Plan
    labeller_bytes: int

    @property
    def max_bytes(self) -> int:
        return self.inner.max_bytes + self.labeller_bytes

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class LabelledEncoder(Encoder):
    """Any encoder's archive with a stored labeller beside it (spec/FORMAT.md §5.8): the inner encoder
    plans for the budget less the labeller's exact stored size (its section with compression off), the
    labeller is trained (or given) before the inner distillation, and the archive holds both.

    Args: inner: the method's encoder; config: :class:`LabellerConfig`.
    """

    def __init__(self, inner: Encoder, config: LabellerConfig = LabellerConfig()):
        if config.dtype not in WEIGHT_DTYPES or not 1e-3 <= config.temperature <= 1e3 or config.width < 1:
            raise ValueError(
                f"a labeller needs a width of at least 1, a dtype of {' or '.join(WEIGHT_DTYPES)} and a "
                f"temperature from 0.001 to 1000, not {config.width}, {config.dtype!r} and "
                f"{config.temperature!r}"
            )
        self.inner, self.config, self.method = inner, config, inner.method

    def _placeholder(self, spec: DatasetSpec) -> tuple[dict, Section]:
        """The labeller's meta field and section as they will be, with zero weights of the right shapes."""
        c, h, w = spec.image_shape
        if h != w or h < 8:
            raise D3Error(
                f"a labeller is a ConvNet-3, which needs square images of at least 8 × 8 pixels, not "
                f"{h} × {w}: leave out `labeller_width` and `labeller`"
            )
        teacher, everyone = self.config.teacher, list(range(spec.num_classes))
        if teacher is not None and (teacher.classes != everyone or teacher.out_index != everyone):
            raise D3Error(
                f"the given labeller gives {len(teacher.classes)} classes ({teacher.classes[:5]}...), not "
                f"the dataset's {spec.num_classes} in order: a stored labeller labels every class"
            )
        net = teacher.net if teacher is not None else ConvNet(c, spec.num_classes, h, width=self.config.width)
        return labeller_parts(net, self.config.temperature, self.config.dtype)

    def plan(self, spec: DatasetSpec, budget: int, meta_for, real: RealData | None = None) -> LabelledPlan:
        """The inner plan for ``budget`` less the labeller section's exact bound. Raises: D3BudgetError
        (with the smallest budget that would work) when the labeller leaves the method too little."""
        described, section = self._placeholder(spec)
        cost = section_cost(section)
        if cost >= budget:
            raise D3BudgetError(
                f"the labeller alone takes {cost} bytes of the budget of {budget}: use a narrower "
                "`labeller_width` or a larger `budget`",
                min_budget=cost + 1,
            )
        try:
            inner = self.inner.plan(spec, budget - cost, lambda m: {**meta_for(m), "labeller": described}, real)
        except D3BudgetError as error:
            needed = error.min_budget + cost if error.min_budget is not None else None
            raise D3BudgetError(
                f"with a labeller of {cost} bytes: {error}"
                + (f" (with the labeller, a `budget` of {needed})" if needed else ""),
                min_budget=needed,
            ) from None
        return LabelledPlan(inner, cost)

    def distill(
        self, real: RealData, plan: LabelledPlan, *, device: torch.device, seed: int, progress: bool = True
    ) -> Encoded:
        """Train the labeller (unless one is given), distil with the inner encoder, and add the labeller's
        section; its test accuracy (``labeller_accuracy``, a fraction) and training seconds
        (``labeller_seconds``, beside the method's ``distill_seconds``) are in the stats."""
        teacher, stats = train_labeller(real, self.config, seed, device, progress)
        described, section = labeller_parts(teacher.net, self.config.temperature, self.config.dtype)
        return _with_labeller(
            self.inner.distill(real, plan.inner, device=device, seed=seed, progress=progress), described, section, stats
        )

    @property
    def kept_state(self):
        return self.inner.kept_state

    def checkpoint_files(self):
        return self.inner.checkpoint_files()


LABELLER_WIDTHS = (8, 16, 32)  # the widths the budget rule picks from (benchmarks/per-byte-exploration.md)
LABELLER_SHARE = 0.15  # the most of the budget the rule gives a labeller


def auto_width(image_shape: tuple[int, int, int], num_classes: int, budget: int, dtype: str = "int8") -> int | None:
    """The budget rule: the widest ConvNet-3 of LABELLER_WIDTHS (for images (C, H, W) of ``num_classes``)
    whose section (its exact bound) takes at most LABELLER_SHARE of ``budget`` bytes, or None where even the
    narrowest takes more (then no labeller).

    Measured on Fashion-MNIST (benchmarks/per-byte-exploration.md, one 100-epoch student each): at the IPC 1
    budget (31 360 B) real PNG images with a width-8 labeller (4 112 B, 13 %) reached 75.29 %, with width
    16 (9 136 B, 29 %) 74.16 %, with hard labels 70.51 %; at IPC 10 width 16 (3 %) lifted PNG images by 1.6
    points and DM's by 0.6. The rule gives width 8 at IPC 1, 32 at IPC 10 and 50 for 28×28 images. It is a
    rule for when a labeller is wanted, not a default: on DM's DCT-formed images at IPC 1 a width-8
    labeller cost 1.0 point.
    """
    c, h, _ = image_shape
    fitting = [
        w
        for w in LABELLER_WIDTHS
        if section_cost(labeller_parts(ConvNet(c, num_classes, h, width=w), 1.0, dtype)[1]) <= LABELLER_SHARE * budget
    ]
    return max(fitting) if fitting else None


def train_labeller(
    real: RealData,
    config: LabellerConfig,
    seed: int,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
):
    """The labeller :class:`LabelledEncoder` stores for ``seed`` (``config.teacher`` where given, else one
    trained on ``real``'s training split), and stats: ``labeller_seconds`` (training), ``labeller_accuracy``
    (test split, a fraction; float32 weights). Returns: (d3codec.nn.teacher.Teacher, stats)."""
    teacher, stats, start = config.teacher, {}, time.time()
    if teacher is None:  # its bar is named "labeller training", not the method's "teacher"
        with Stages("labeller", [Stage("training", 1.0)], enabled=progress).stage("training"):
            teacher, _ = train_teacher(
                real,
                list(range(real.num_classes)),
                epochs=config.epochs,
                width=config.width,
                device=device,
                seed=seeds.stream_seed(seed, "labeller"),
                progress=progress,
            )
        stats["labeller_seconds"] = round(time.time() - start, 3)
    if real.test is not None:
        test_x, test_y = test_split(real)
        stats["labeller_accuracy"] = round(test_accuracy(teacher.net, test_x, test_y, real.mean, real.std, device), 4)
    return teacher, stats


def _with_labeller(encoded: Encoded, described: dict, section: Section, stats: dict) -> Encoded:
    """``encoded`` with the labeller's section and meta field added, trimming kept (the labeller stays)."""
    trim = encoded.trim

    def smaller(overrun: Overrun) -> Encoded | None:
        trimmed = trim(overrun) if trim is not None else None
        return _with_labeller(trimmed, described, section, stats) if trimmed is not None else None

    return replace(
        encoded,
        sections=encoded.sections + [section],
        stats={**encoded.stats, **stats},
        trim=smaller if trim is not None else None,
        meta={**encoded.meta, "labeller": described},
    )
