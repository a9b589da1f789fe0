"""The encoder interface every distillation method implements.

An encoder is made from its options, plans its storage against a byte budget before any work
(refusing a budget it cannot meet), then distils. It returns the archive's method sections and
the method's metadata; the shared code in :mod:`d3codec.encode.pipeline` adds the common metadata,
writes the file atomically and checks its size.
"""

from __future__ import annotations

import math
import os
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Protocol, TypeVar

import torch

from d3codec.data.real import RealData
from d3codec.encode.loop import ResumableLoop
from d3codec.format.container import Section


@dataclass(frozen=True)
class DatasetSpec:
    """What a plan needs to know of a dataset, without loading it."""

    name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def of(cls, real: RealData) -> "DatasetSpec":
        c, h, w = real.image_shape
        return cls(real.name, tuple(real.classes), (c, h, w), tuple(real.mean), tuple(real.std))


@dataclass(frozen=True)
class Overrun:
    """How far an archive would pass its budget: ``excess`` bytes over it, and the bytes each section
    takes in the file (``stored``, by section name), so that a method can tell how many of its units
    (images, priors) to drop in one go instead of recompressing once per unit."""

    excess: int
    stored: dict[str, int]

    def units_to_drop(self, units: int, sections: tuple[str, ...]) -> int:
        """Of ``units`` equal units filling ``sections``, how many to drop to remove ``excess`` bytes: the
        estimate from their mean stored size, rounded up, with 2 % and one unit more (compression varies
        from unit to unit: DM's rehearsal at ImageNet scale fell 0.6 % short with 1 %, and each further round
        is a compression, a minute at 98 MB on a CPU)."""
        per_unit = max(1.0, sum(self.stored.get(s, 0) for s in sections) / max(1, units))
        return min(units, math.ceil(self.excess / per_unit * 1.02) + 1)


@dataclass
class Encoded:
    """An encoder's result: its sections (no metadata section) and its metadata fields.

    ``trim``, where given, takes an :class:`Overrun` and returns a smaller result (e.g. fewer images),
    or None when it may not shrink further; the writer calls it while the archive would pass the budget.
    ``cleanup``, where given, runs once the archive is written (e.g. to delete a checkpoint).
    ``meta``: top-level metadata fields beside ``params`` (``labeller``, spec/FORMAT.md §5.8).
    """

    sections: list[Section]
    method_meta: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    trim: Callable[[Overrun], "Encoded | None"] | None = None
    cleanup: Callable[[], None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def preset_config(presets: dict[str, Any], preset: str, overrides: dict[str, Any]) -> Any:
    """``presets[preset]`` with the overrides that are not None, each coerced to its field's type
    (see :func:`coerce_field`).

    Raises: ValueError for an unknown preset, a name that is no field of the config, or a value that
    is not of its field's type."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(presets)}")
    config = presets[preset]
    hints = typing.get_type_hints(type(config))
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in fields(config)})
    if unknown:
        raise ValueError(
            f"{type(config).__name__} has no field {', '.join(unknown)}; its fields: "
            f"{', '.join(f.name for f in fields(config))}"
        )
    return replace(config, **{k: coerce_field(k, v, hints[k]) for k, v in given.items()})


def coerce_field(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type ``annotation`` names (``int``, ``float``, ``bool``, ``str``, or one of them
    ``| None``): an int field takes an int or a whole float or numeral ("300"); a float field takes any
    finite number or numeral; a bool field takes a bool or "true"/"false"; a str field takes a str.

    Raises: ValueError naming the field, the type and the value."""
    allowed = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    kind = allowed[0] if len(allowed) == 1 else None
    if kind not in (bool, int, float, str):
        return value  # a field of another type (or a union of several): taken as it is
    if kind is bool:
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
            return value if isinstance(value, bool) else value.lower() == "true"
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float and not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, (int, float, str)) else math.nan
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    elif kind is str and isinstance(value, str):
        return value
    raise ValueError(f"{name} must be {getattr(kind, '__name__', kind)}, not {repr(value)[:40]}")


class Plan(Protocol):
    """What the pipeline reads of every method's plan (the rest is the method's own)."""

    @property
    def max_bytes(self) -> int:
        """The exact upper bound of the archive's bytes under this plan (its metadata included)."""
        ...


PlanT = TypeVar("PlanT", bound=Plan)  # what an encoder's plan returns and its distill takes (e.g. PixelPlan, D3Plan)
ConfigT = TypeVar("ConfigT")  # a checkpointed encoder's config dataclass (e.g. DMConfig)
MetaFor = Callable[[dict[str, Any]], dict[str, Any]]  # method metadata → the metadata section as written


class Encoder(ABC, Generic[PlanT]):
    """One distillation method, generic in its plan type. Subclasses set ``method`` and implement plan
    and distil."""

    method: str = ""
    presets: ClassVar[dict[str, Any]] = {}  # preset name (fast, paper, ...) → config dataclass
    # True where distill itself splits its work across the ranks of a process group (d3codec.encode.federated:
    # every rank calls it, rank 0's result is written): d2m shares each iteration's classes
    data_parallel: bool = False

    @abstractmethod
    def plan(self, spec: DatasetSpec, budget: int, meta_for: MetaFor, real: RealData | None = None) -> PlanT:
        """Decide what fits in ``budget`` bytes, before any distillation.

        ``meta_for(method_meta)`` gives the metadata section as it will be written; ``real``, when
        given, lets the plan measure the data (e.g. how well it compresses). Raises D3BudgetError
        with the smallest workable budget if nothing fits."""

    @abstractmethod
    def distill(
        self, real: RealData, plan: PlanT, *, device: torch.device, seed: int, progress: bool = True
    ) -> Encoded:
        """Run the distillation and return the archive's method sections."""

    @property
    def kept_state(self) -> Path | None:
        """The checkpoint that holds the distilled state after :meth:`distill` (None: none is kept).
        When writing the archive fails, compress names it so that the next run only writes."""
        return None

    def checkpoint_files(self) -> list[Path]:
        """The checkpoint files of this encoder that exist now (a run with them resumes)."""
        return []


@dataclass
class Subtask:
    """One subtask's result: the classes [start, stop) it covers and its part of the archive, encoded as
    an archive of those classes alone (method metadata with class indices local to the part)."""

    classes: tuple[int, int]
    encoded: Encoded


class SubtaskEncoder(Encoder[PlanT]):
    """An encoder whose work splits into independent subtasks over disjoint classes, which
    d3codec.encode.federated spreads over ranks (Qin et al. 2024, Sec. 3.3); method ``d3`` is one.

    Each subtask is written as a complete archive of its classes; :meth:`merge_subtasks` turns
    those files into the whole archive's sections."""

    @abstractmethod
    def subtask_count(self, plan: PlanT) -> int:
        """How many subtasks ``plan`` has."""

    @abstractmethod
    def distill_subtask(
        self, real: RealData, plan: PlanT, index: int, *, device: torch.device, seed: int, progress: bool = True
    ) -> Subtask:
        """Distil subtask ``index`` alone; its result depends only on the data, the plan and (seed, index)."""

    @abstractmethod
    def merge_subtasks(self, paths: list[Path], limits=None) -> Encoded:
        """The whole archive's sections, metadata and stats from the subtask archives at ``paths``
        (in subtask order), each read within ``limits`` (d3codec.format.limits.DecodeLimits)."""

    def remove_checkpoints(self, subtasks: int) -> None:
        """Delete the checkpoints of ``subtasks`` subtasks (once the archive is written)."""


class CheckpointedEncoder(Encoder[PlanT], Generic[PlanT, ConfigT]):
    """An encoder of one long loop that checkpoints itself (d3codec.encode.checkpoint) when given a file.

    Subclasses set ``presets`` (name → config). ``Sub(config, checkpoint="run.ckpt")``, or
    ``Sub.from_options("fast", "run.ckpt", iterations=...)``; ``checkpoint_seconds`` is the least
    time between two saves.
    """

    def __init__(
        self,
        config: ConfigT | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_seconds: float = 300.0,
    ):
        self.config: ConfigT = config if config is not None else self.presets["fast"]
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds

    @property
    def kept_state(self) -> Path | None:
        return self.checkpoint

    def checkpoint_files(self) -> list[Path]:
        return [self.checkpoint] if self.checkpoint is not None and self.checkpoint.is_file() else []

    @classmethod
    def from_options(
        cls,
        preset: str = "fast",
        checkpoint: str | os.PathLike | None = None,
        checkpoint_seconds: float = 300.0,
        **overrides,
    ) -> "CheckpointedEncoder":
        return cls(preset_config(cls.presets, preset, overrides), checkpoint, checkpoint_seconds)

    def loop(self, kind: str, run: tuple, total: int) -> ResumableLoop:
        """The resumable loop of this encoder's ``total`` iterations (d3codec.encode.loop), checkpointed in its
        file; ``run``: what decides the result (options, plan, seed, data): another run's file is refused."""
        return ResumableLoop(self.checkpoint, kind, run, total, self.checkpoint_seconds)
