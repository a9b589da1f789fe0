"""The encoder pipeline shared by every method: budget, plan, distil, write, check.

``compress(real, "fm.d3", method="pixel", ipc=10)`` plans the storage against the byte budget
before distilling (refusing an impossible budget at once), distils, writes the archive
atomically, and checks the real file size against the budget.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .archive import FORMAT_NAME
from .budget import ipc_budget
from .container import Section, encode_archive, write_atomic
from .data import RealData
from .errors import D3BudgetError
from .methods import ENCODERS, DatasetSpec, Encoder


@dataclass
class CompressResult:
    """What compress wrote: the path, its size and budget in bytes, the plan and the run's stats."""

    path: Path
    file_bytes: int
    budget: int
    plan: Any
    stats: dict


def resolve_budget(spec: DatasetSpec, ipc: float | None, budget: int | None) -> int:
    """Bytes from ``--budget`` or ``--ipc`` (exactly one). Raises ValueError otherwise."""
    if (ipc is None) == (budget is None):
        raise ValueError("give exactly one of --ipc N (N float32 images per class) or --budget BYTES")
    if budget is not None:
        if budget <= 0:
            raise ValueError(f"--budget must be a positive number of bytes, not {budget}")
        return int(budget)
    if ipc <= 0:
        raise ValueError(f"--ipc must be positive, not {ipc}")
    return ipc_budget(ipc, spec.num_classes, spec.image_shape)


def base_meta(spec: DatasetSpec, method: str, budget: int, ipc: float | None, seed: int, created: str) -> dict:
    """The metadata fields every archive carries, before the method's own."""
    return {
        "format": FORMAT_NAME,
        "method": method,
        "dataset": {"name": spec.name, "classes": list(spec.classes), "image_shape": list(spec.image_shape),
                    "mean": list(spec.mean), "std": list(spec.std)},
        "budget": {"bytes": budget, "ipc": ipc},
        "seed": seed,
        "created": created,
        "software": {"d3codec": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def plan_archive(encoder: Encoder, spec: DatasetSpec, budget: int, meta: dict, real: RealData | None = None):
    """The encoder's plan for ``budget`` bytes; raises D3BudgetError before any distillation."""
    def meta_for(method_meta: dict) -> dict:
        return {**meta, "params": method_meta, "accounting": {"budget_bytes": budget, "bound_bytes": budget}}
    return encoder.plan(spec, budget, meta_for, real)


def compress(real: RealData, output: str | os.PathLike, *, method: str = "pixel", encoder: Encoder | None = None,
             ipc: float | None = None, budget: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
             progress: bool = True) -> CompressResult:
    """Distil ``real`` into an archive at ``output`` that fits the byte budget.

    Args:
        real: the real training data (see d3codec.data.load_dataset).
        method: a key of d3codec.methods.ENCODERS (used when ``encoder`` is not given).
        ipc / budget: the budget, as float32 images per class or as bytes (exactly one).
        seed: makes the run reproducible on the same device and software.
    Returns: CompressResult.
    Raises: D3BudgetError if the budget cannot hold the method's smallest archive (before any
        distillation) or the written file would exceed it (nothing is left at ``output``);
        ValueError for bad options; OSError if ``output``'s folder is not writable.
    """
    output = Path(output)
    if not output.parent.exists() or not os.access(output.parent, os.W_OK):
        raise PermissionError(f"cannot write to the folder {output.parent.resolve()}: create it or choose another -o")
    encoder = encoder or ENCODERS[method]()
    spec = DatasetSpec.of(real)
    budget = resolve_budget(spec, ipc, budget)
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = base_meta(spec, encoder.method, budget, ipc, seed, created)
    plan = plan_archive(encoder, spec, budget, meta, real)

    encoded = encoder.distill(real, plan, device=torch.device(device), seed=seed, progress=progress)
    while True:  # a plan that counts on compression may have to drop images to fit
        meta_section = Section.json("meta", {**meta, "params": encoded.method_meta, "stats": encoded.stats,
                                             "accounting": {"budget_bytes": budget, "bound_bytes": plan.max_bytes}})
        data = encode_archive([meta_section] + encoded.sections)
        if len(data) <= budget or encoded.trim is None:
            break
        smaller = encoded.trim()
        if smaller is None:
            break  # write_atomic refuses the oversize archive below
        encoded = smaller
    size = write_atomic(output, data, max_bytes=budget)
    real_size = output.stat().st_size
    if real_size != size or real_size > budget:  # the file system's count is what counts
        raise D3BudgetError(f"{output} is {real_size} bytes on disk, expected {size} within {budget}")
    return CompressResult(output, real_size, budget, plan, encoded.stats)
