"""The encoder pipeline shared by every method: budget, plan, distil, write, check.

``d3codec.compress("fashion-mnist", "fm.d3", method="dm", ipc=10)`` plans the storage against the byte budget
before distilling (refusing an impossible budget at once), distils, writes the archive
atomically, and checks the real file size against the budget.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from d3codec.data.real import RealData
from d3codec.data.sources import load_dataset
from d3codec.encode.defaults import default_choice, with_user_options
from d3codec.encode.federated import barrier, distill_federated, rank, run_ranks, world_size
from d3codec.encode.interface import DatasetSpec, Encoded, Encoder, Overrun, Plan, PlanT
from d3codec.errors import D3BudgetError
from d3codec.format.accounting import ipc_budget, ipc_equivalent
from d3codec.format.container import D3Reader, Section, encode_archive, write_atomic
from d3codec.format.meta import base_meta, open_archive, utc_now
from d3codec.nn.models import resolve_device
from d3codec.registry import BuildContext, get_method
from d3codec.util.progress import note
from d3codec.util.runtime import keep_freed_memory, release_freed_memory


@dataclass
class CompressResult:
    """What compress wrote: the path, its size and budget in bytes, the plan, the run's stats and the
    method's metadata as written (``meta.params``: what was stored, after any trimming to fit)."""

    path: Path
    file_bytes: int
    budget: int
    plan: Plan | None  # None where read back from the archive (compress_with_workers)
    stats: dict
    params: dict = field(default_factory=dict)


MAX_BUDGET_BYTES = 1 << 31  # 2 GiB: a reader's default limit on a section (the format's own is 4 GiB)
MAX_SEED = (1 << 32) - 1
MIN_SIDE = 8  # the smallest images d3codec distils: its ConvNet-3 networks pool three times
MAX_REAL_PER_CLASS = 4096  # real images per class per iteration at most (the papers use up to 256)


def resolve_budget(spec: DatasetSpec, ipc: float | None, budget: int | None) -> int:
    """Bytes from ``budget`` or ``ipc`` (exactly one), 1 to MAX_BUDGET_BYTES.

    Raises: ValueError naming the option for neither or both, a non-integer or non-positive budget, a
    non-finite or non-positive IPC, a budget past MAX_BUDGET_BYTES, or images smaller than MIN_SIDE a side
    (checked before any planning)."""
    if min(spec.image_shape[1:]) < MIN_SIDE:
        raise ValueError(
            f"images of {spec.image_shape[1]} × {spec.image_shape[2]} pixels are too small to distil: "
            f"d3codec's networks need at least {MIN_SIDE} × {MIN_SIDE} (a `resolution` of {MIN_SIDE} or more)"
        )
    if (ipc is None) == (budget is None):
        raise ValueError("give exactly one of `ipc` (float32 images per class) and `budget` (bytes)")
    if budget is not None:
        if type(budget) is not int or budget <= 0:
            raise ValueError(f"`budget` must be a positive whole number of bytes, not {budget!r}")
        bytes_ = budget
    else:
        if not isinstance(ipc, (int, float)) or isinstance(ipc, bool) or not math.isfinite(ipc) or ipc <= 0:
            raise ValueError(f"`ipc` must be a finite positive number, not {ipc!r}")
        if ipc > MAX_BUDGET_BYTES:  # before multiplying, so that no product overflows
            raise ValueError(f"`ipc` {ipc:g} is over the largest budget d3codec writes ({MAX_BUDGET_BYTES} bytes)")
        bytes_ = ipc_budget(ipc, spec.num_classes, spec.image_shape)
        if bytes_ < 1:
            raise ValueError(f"`ipc` {ipc:g} gives a budget of {bytes_} bytes; use a larger `ipc`")
    if bytes_ > MAX_BUDGET_BYTES:
        raise ValueError(
            f"a budget of {bytes_} bytes is over the largest d3codec writes, {MAX_BUDGET_BYTES} bytes "
            "(2 GiB: larger sections are refused by readers' default limits)"
        )
    return bytes_


def plan_archive(
    encoder: Encoder[PlanT], spec: DatasetSpec, budget: int, meta: dict[str, Any], real: RealData | None = None
) -> PlanT:
    """The encoder's plan for ``budget`` bytes; raises D3BudgetError before any distillation.

    The budget is written into the metadata, so a smaller budget has a shorter metadata section:
    the smallest workable budget an error reports is checked by planning at it (and raised, if
    need be, until it is a fixed point), so that it really works.
    """

    def plan_at(b: int) -> PlanT:
        at = {**meta, "budget": {**meta["budget"], "bytes": b}}

        def meta_for(method_meta: dict[str, Any]) -> dict[str, Any]:
            return {**at, "params": method_meta, "accounting": {"budget_bytes": b, "bound_bytes": b}}

        return encoder.plan(spec, b, meta_for, real)

    try:
        return plan_at(budget)
    except D3BudgetError as error:
        smallest = error.min_budget
        for _ in range(4):
            if smallest is None:
                break
            try:
                plan_at(smallest)
                break
            except D3BudgetError as again:
                smallest = max(again.min_budget or smallest + 1, smallest + 1)
        if smallest is not None and smallest != error.min_budget:
            raise D3BudgetError(str(error).replace(str(error.min_budget), str(smallest)), min_budget=smallest) from None
        raise


def current_name(method: str | None) -> str | None:
    """``method``, with the deprecated name "pixel" (d3codec 0.1) read as "dm" and warned about."""
    if method != "pixel":
        return method
    warnings.warn(
        'method "pixel" is now called "dm" (BPTT is "bptt"); "pixel" goes in the next release',
        DeprecationWarning,
        stacklevel=3,
    )
    return "dm"


def chosen_method(
    method: str | None, preset: str, options: dict[str, Any] | None, spec: DatasetSpec, budget: int
) -> tuple[str, dict[str, Any] | None]:
    """The method and options to build: the default rule's where ``method`` is None (the user's options
    winning), else as given."""
    if method is None:
        choice = default_choice(spec.num_classes, ipc_equivalent(budget, spec.num_classes, spec.image_shape), preset)
        return choice.method, with_user_options(choice, options)
    return method, options


def compress(
    dataset: str | RealData,
    output: str | os.PathLike,
    *,
    ipc: float | None = None,
    budget: int | None = None,
    method: str | None = None,
    preset: str = "fast",
    options: dict[str, Any] | None = None,
    encoder: Encoder | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> CompressResult:
    """Distil ``dataset`` into an archive at ``output`` that fits the byte budget::

        d3codec.compress("fashion-mnist", "fm.d3", ipc=10, method="dm")

    Under torchrun (several ranks) every rank calls this alike: subtasks (d3) or a data-parallel encoder (d2m)
    spread over the ranks, and rank 0 writes (d3codec.encode.federated).

    Args:
        dataset: a dataset name or folder for d3codec.data.sources.load_dataset (``"fashion-mnist"``, ``"cifar10"``,
            an ImageFolder tree), or loaded real data (d3codec.data.real.RealData, e.g. with another resolution).
        ipc / budget: the budget, as float32 images per class or as bytes (exactly one).
        method: a registered method's name (d3codec.registry.method_names(): dm, bptt, d3, d2m); ``"pixel"``,
            the old name of dm, still works with a DeprecationWarning. None: the default rule for this dataset
            and budget (d3codec.encode.defaults.default_choice), its options overridden by ``options``.
        preset / options: the method's preset (``fast``, ``paper``) and overrides of its config fields or
            options by name (``options={"iterations": 20}``; ``d3 compress METHOD --help`` lists them).
        encoder: a ready encoder instead of method, preset and options.
        seed: 0 to MAX_SEED; makes the run reproducible on the same device and software.
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (CUDA where there is one).
        checkpoint: where a long encode saves its state to resume after a kill (the method's files derive
            from this name); None: no checkpoint (the ``d3 compress`` command writes one by default).
    Returns: CompressResult.
    Raises: D3BudgetError if the budget cannot hold the method's smallest archive (before any distillation) or the
        file would exceed it (nothing is left at ``output``); D3DatasetError when the dataset cannot be found;
        ValueError for bad options; OSError if ``output``'s folder is not writable.
    """
    keep_freed_memory()  # freed activation buffers are reused, not unmapped every iteration (d3codec.util.runtime)
    output = Path(output)
    check_arguments(output, seed, encoder is not None and (bool(options) or preset != "fast"))
    method = current_name(method)
    real = dataset if isinstance(dataset, RealData) else load_dataset(dataset)
    device = resolve_device(device)
    spec = DatasetSpec.of(real)
    budget = resolve_budget(spec, ipc, budget)
    if encoder is None:
        encoder = build_encoder(method, preset, options, spec, budget, output, checkpoint, device)
    meta = base_meta(spec, encoder.method, budget, ipc, seed, utc_now())
    plan = plan_archive(encoder, spec, budget, meta, real)
    release_freed_memory()  # planning built whole archives of zeros to count their bytes
    written = distill_and_write(encoder, real, plan, output, meta, budget, device=device, seed=seed, progress=progress)
    stats, params = (written.stats, written.method_meta) if written else ({}, {})
    return CompressResult(output, output.stat().st_size, budget, plan, stats, params)


def build_encoder(
    method: str | None,
    preset: str,
    options: dict[str, Any] | None,
    spec: DatasetSpec,
    budget: int,
    output: Path,
    checkpoint: str | os.PathLike | None,
    device: torch.device,
) -> Encoder:
    """The encoder of ``method`` (the default rule's where None) with ``options``, for the dataset ``spec`` and budget,
    checkpointing beside ``output`` where ``checkpoint`` is given."""
    method, options = chosen_method(method, preset, options, spec, budget)
    given = Path(checkpoint) if checkpoint else None
    context = BuildContext(
        output, given, device, spec.image_shape, spec.num_classes, checkpoints=checkpoint is not None
    )
    return get_method(method).make_encoder(preset, options, context)


def check_arguments(output: Path, seed: int, encoder_and_options: bool) -> None:
    """Refuse, before any work, an ``output`` whose folder cannot be written, a ``seed`` out of range, or an encoder
    given with a preset or options. Raises: PermissionError, ValueError."""
    if not output.parent.exists() or not os.access(output.parent, os.W_OK):
        raise PermissionError(
            f"cannot write to the folder {output.parent.resolve()}: create it or choose another `output`"
        )
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be an integer from 0 to {MAX_SEED}, not {seed!r}")
    if encoder_and_options:
        raise ValueError("give either encoder= or preset= and options= (an encoder is built with its own)")


def distill_and_write(
    encoder: Encoder[PlanT],
    real: RealData,
    plan: PlanT,
    output: Path,
    meta: dict[str, Any],
    budget: int,
    *,
    device: torch.device,
    seed: int,
    progress: bool,
) -> Encoded | None:
    """Distil ``plan`` (across the ranks of a process group where there are several: rank 0 merges and writes)
    and write the archive. Returns what was written (None on the ranks that did not write)."""
    if world_size() > 1:
        encoded = written = distill_federated(
            encoder, real, plan, output, meta, device=device, seed=seed, progress=progress
        )
        if encoded is not None:  # rank 0 writes the merged archive while the others wait
            written = write_encoded(output, meta, encoded, budget, plan.max_bytes, progress)
            if encoded.cleanup is not None:
                encoded.cleanup()
        barrier()
        return written
    encoded = encoder.distill(real, plan, device=device, seed=seed, progress=progress)
    try:
        written = write_encoded(output, meta, encoded, budget, plan.max_bytes, progress)
    except OSError as error:  # e.g. a full disk: say where the work is kept
        kept = encoder.kept_state
        if kept is None or not Path(kept).exists():
            raise
        raise OSError(
            error.errno,
            f"writing {output} failed ({error.strerror or error}); the distilled state is "
            f"kept in {kept}: free the space and run the same command again to write the archive "
            "without distilling anew",
        ) from error
    if encoded.cleanup is not None:
        encoded.cleanup()
    return written


def write_encoded(
    output: Path, meta: dict, encoded: Encoded, budget: int, bound: int, progress: bool = False
) -> Encoded:
    """Write the archive of ``encoded`` atomically within ``budget`` (trimming where the method allows)
    and check the size the file system reports; ``progress``: a line on standard error per compression
    (a minute or more at ImageNet's 98 MB). Returns what was written: ``encoded``, or the trimmed
    Encoded whose metadata says what the file holds (e.g. 4 images per class where the plan said 5).
    Memory freed before (distillation's buffers, kept for reuse while it ran) goes back to the system first,
    so that the compression does not add to the process's peak."""
    release_freed_memory()
    while True:  # a plan that counts on compression may have to drop images to fit
        meta_section = Section.json(
            "meta",
            {
                **meta,
                **encoded.meta,
                "params": encoded.method_meta,
                "stats": encoded.stats,
                "accounting": {"budget_bytes": budget, "bound_bytes": bound},
            },
        )
        raw = sum(len(s.payload) for s in encoded.sections)
        note(f"writing {output}: compressing {raw:,} bytes with zstd", progress)
        data = encode_archive([meta_section] + encoded.sections)
        if len(data) <= budget or encoded.trim is None:
            break
        with D3Reader(data) as table:
            stored = {s.name: table.info(s.name).stored_length for s in encoded.sections}
        smaller = encoded.trim(Overrun(len(data) - budget, stored))
        if smaller is None:
            break  # write_atomic refuses the oversize archive below
        note(
            f"{len(data) - budget:,} bytes over the budget: dropping the last images or priors that do not fit "
            "and compressing again",
            progress,
        )
        encoded = smaller
    size = write_atomic(output, data, max_bytes=budget)
    real_size = output.stat().st_size
    if real_size != size or real_size > budget:  # the file system's count is what counts
        raise D3BudgetError(f"{output} is {real_size} bytes on disk, expected {size} within {budget}")
    return encoded


def compress_with_workers(
    workers: int,
    dataset: str,
    output: str | os.PathLike,
    *,
    encoder: Encoder,
    data_root: str | None = None,
    resolution: int | None = None,
    ipc: float | None = None,
    budget: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> CompressResult:
    """Run :func:`compress` on ``workers`` local ranks (d3codec.encode.federated.run_ranks: spawned processes joined
    over gloo), each loading ``dataset`` itself (d3codec.data.sources.load_dataset); rank 0 merges their subtasks.
    Returns: what was written, read back from the archive (``plan`` None).
    Raises: ValueError for fewer than 2 workers; D3Error when a worker fails, with its error."""
    run_ranks(
        workers,
        _compress_on_rank,
        (dataset, str(output), encoder, data_root, resolution, ipc, budget, seed, progress),
        device,
    )
    output = Path(output)
    _, meta = open_archive(output)
    return CompressResult(
        output, output.stat().st_size, meta["budget"]["bytes"], None, meta.get("stats", {}), meta.get("params", {})
    )


def _compress_on_rank(
    device: torch.device,
    dataset: str,
    output: str,
    encoder: Encoder,
    data_root: str | None,
    resolution: int | None,
    ipc: float | None,
    budget: int | None,
    seed: int,
    progress: bool,
) -> None:
    real = load_dataset(dataset, data_root, resolution)
    compress(
        real,
        output,
        encoder=encoder,
        ipc=ipc,
        budget=budget,
        seed=seed,
        device=device,
        progress=progress and rank() == 0,
    )
