"""The encoder interface every distillation method implements.

An encoder is made from its options, plans its storage against a byte budget before any work
(refusing a budget it cannot meet), then distils. It returns the archive's method sections and
the method's metadata; the shared code in :mod:`d3codec.compress` adds the common metadata,
writes the file atomically and checks its size.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..container import Section
from ..data import RealData


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
        return cls(real.name, tuple(real.classes), tuple(real.image_shape), tuple(real.mean), tuple(real.std))


@dataclass
class Encoded:
    """An encoder's result: its sections (no metadata section) and its metadata fields.

    ``trim``, where given, returns a smaller result (e.g. one image fewer per class), or None when
    it may not shrink further; the writer calls it while the archive would pass the budget.
    ``cleanup``, where given, runs once the archive is written (e.g. to delete a checkpoint).
    """

    sections: list[Section]
    method_meta: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    trim: Callable[[], "Encoded | None"] | None = None
    cleanup: Callable[[], None] | None = None


def preset_config(presets: dict[str, Any], preset: str, overrides: dict[str, Any]) -> Any:
    """``presets[preset]`` with the overrides that are not None. Raises ValueError for an unknown preset."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(presets)}")
    return replace(presets[preset], **{k: v for k, v in overrides.items() if v is not None})


class Encoder(ABC):
    """One distillation method. Subclasses set ``method`` and implement plan and distil."""

    method: str = ""

    @abstractmethod
    def plan(self, spec: DatasetSpec, budget: int, meta_for: Callable[[dict], dict],
             real: RealData | None = None) -> Any:
        """Decide what fits in ``budget`` bytes, before any distillation.

        ``meta_for(method_meta)`` gives the metadata section as it will be written; ``real``, when
        given, lets the plan measure the data (e.g. how well it compresses). Raises D3BudgetError
        with the smallest workable budget if nothing fits."""

    @abstractmethod
    def distill(self, real: RealData, plan: Any, *, device: torch.device, seed: int,
                progress: bool = True) -> Encoded:
        """Run the distillation and return the archive's method sections."""

    @property
    def kept_state(self) -> Path | None:
        """The checkpoint that holds the distilled state after :meth:`distill` (None: none is kept).
        When writing the archive fails, compress names it so that the next run only writes."""
        return None

    def checkpoint_files(self) -> list[Path]:
        """The checkpoint files of this encoder that exist now (a run with them resumes)."""
        return []


class CheckpointedEncoder(Encoder):
    """An encoder of one long loop that checkpoints itself (d3codec.checkpoint) when given a file.

    Subclasses set ``presets`` (name → config). ``Sub(config, checkpoint="run.ckpt")``, or
    ``Sub.from_options("fast", "run.ckpt", iterations=...)``; ``checkpoint_seconds`` is the least
    time between two saves.
    """

    presets: dict[str, Any] = {}

    def __init__(self, config: Any = None, checkpoint: str | os.PathLike | None = None,
                 checkpoint_seconds: float = 300.0):
        self.config = config if config is not None else self.presets["fast"]
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds

    @property
    def kept_state(self) -> Path | None:
        return self.checkpoint

    def checkpoint_files(self) -> list[Path]:
        return [self.checkpoint] if self.checkpoint is not None and self.checkpoint.is_file() else []

    @classmethod
    def from_options(cls, preset: str = "fast", checkpoint: str | os.PathLike | None = None,
                     checkpoint_seconds: float = 300.0, **overrides) -> "CheckpointedEncoder":
        return cls(preset_config(cls.presets, preset, overrides), checkpoint, checkpoint_seconds)

    def resume_checkpoint(self, kind: str, run: tuple, optimisers: dict[str, torch.optim.Optimizer],
                          generator: torch.Generator, learned: dict[str, torch.Tensor], device: torch.device):
        """Open this encoder's checkpoint (None without a file name) and, if the file exists, restore
        ``learned`` in place (tensors of the same names were saved), the optimisers and random states.

        ``run``: what decides the result (options, plan, seed, data); a checkpoint of another run is refused.
        Returns: (Checkpoint or None, first iteration to run, the last saved loss or NaN).
        Raises: D3Error for another run's or a damaged checkpoint.
        """
        from ..checkpoint import Checkpoint, fingerprint

        if self.checkpoint is None:
            return None, 0, float("nan")
        ckpt = Checkpoint(self.checkpoint, kind, fingerprint(kind, *run), self.checkpoint_seconds)
        resumed = ckpt.resume(optimisers, generator, device, learned)
        if resumed is None:
            return ckpt, 0, float("nan")
        first, saved = resumed
        return ckpt, first, float(saved.get("loss", torch.tensor(float("nan"))))

