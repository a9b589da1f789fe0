"""The default method: what ``d3 compress DATASET`` and ``d3codec.compress(...)`` run when no method is named.

One rule, from what was measured (benchmarks/per-byte-exploration.md, benchmarks/RESULTS.md):

- **ImageNet-scale** (more than :data:`MANY_CLASSES` classes): D3 (Qin, Deng & Alvarez-Melis,
  "Distributional Dataset Distillation with Subtask Decomposition", 2024): priors per class and a decoder,
  which scale with classes rather than with images, in federated subtasks of at most
  :data:`CLASSES_PER_SUBTASK` classes (the paper's Sec. 3.3; ImageNet-1K: five); the README's ImageNet section.
- **Otherwise**: DM (Zhao & Bilen, WACV 2023) through FreD's variance-ranked DCT coefficients (Shin et al.,
  NeurIPS 2023, §3.2) with DANCE's matching through trained experts (Zhang et al., IJCAI 2024, §3), the
  formation factor 3 at budgets of up to :data:`FACTOR_3_MAX_IPC` images per class and 2 above. On
  Fashion-MNIST at IPC 1 this was 83.2 % against 80.0 % for the best real images in the same bytes.
  The smoke and rehearsal presets skip the expert pool (minutes of training): they check a pipeline.

Options a user names always win over the rule's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from d3codec.data.sources import registered_dataset

MANY_CLASSES = 100  # more classes than this is ImageNet-scale: D3
CLASSES_PER_SUBTASK = 200  # D3's subtasks at ImageNet scale: the README's plan, five of 200 classes
FACTOR_3_MAX_IPC = 2.0  # formation factor 3 up to this budget (images per class), 2 above
QUICK_PRESETS = ("smoke", "rehearsal")  # presets that check a pipeline: no expert pool
# class counts of the registered datasets (d3codec.data.sources.DATASETS), known before loading them
CLASS_COUNTS = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}
MAX_COUNTED_ENTRIES = 200_000  # a folder's entries looked at to count its classes, at most


@dataclass(frozen=True)
class DefaultChoice:
    """The method the rule picks, its option overrides by config field, and why, in a sentence."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


def default_method(num_classes: int) -> str:
    """The method the rule picks for a dataset of ``num_classes`` classes: ``"d3"`` or ``"dm"``."""
    return "d3" if num_classes > MANY_CLASSES else "dm"


def default_choice(num_classes: int, ipc: float, preset: str = "fast") -> DefaultChoice:
    """The rule (module docstring) for ``num_classes`` classes, a budget of ``ipc`` float32 images per class
    (any positive number; a byte budget divided by one class's float32 images) and ``preset``."""
    if default_method(num_classes) == "d3":
        subtasks = -(-num_classes // CLASSES_PER_SUBTASK)
        return DefaultChoice(
            "d3",
            {"subtasks": subtasks},
            f"D3: {num_classes} classes is ImageNet-scale (more than "
            f"{MANY_CLASSES}), in {subtasks} subtask(s) of at most {CLASSES_PER_SUBTASK} classes",
        )
    factor = 3 if ipc <= FACTOR_3_MAX_IPC else 2
    options: dict[str, Any] = {"formation": "dct-variance", "formation_factor": factor}
    if preset not in QUICK_PRESETS:
        options["matching"] = "dance"
    matched = "DANCE's trained experts" if "matching" in options else f"DM's own matching ({preset} preset)"
    return DefaultChoice(
        "dm",
        options,
        f"DM through FreD's dct-variance ×{factor} with {matched}: the best measured per byte at {num_classes} classes",
    )


def with_user_options(choice: DefaultChoice, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rule's options overridden by the user's (those not None): a formation the user names takes its
    factor from the user too, never the rule's."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    ours = {k: v for k, v in choice.options.items() if not (k == "formation_factor" and "formation" in given)}
    return {**(options or {}), **ours, **given}


def class_count(dataset: str) -> int | None:
    """Classes of ``dataset`` as ``d3 compress`` names it, known without loading it: a registered dataset's,
    or a folder's sub-folders (counted up to MAX_COUNTED_ENTRIES entries); None where it is neither."""
    key = registered_dataset(dataset)
    if key is not None:
        return CLASS_COUNTS.get(key)
    path = Path(dataset)
    try:
        if not path.is_dir():
            return None
        count = 0
        with os.scandir(path) as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_COUNTED_ENTRIES:
                    break
                count += entry.is_dir(follow_symlinks=False)
        return count
    except OSError:
        return None


__all__ = [
    "DefaultChoice",
    "default_choice",
    "with_user_options",
    "default_method",
    "class_count",
    "MANY_CLASSES",
    "FACTOR_3_MAX_IPC",
]
