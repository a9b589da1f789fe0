"""A compress run as one request: what ``d3 compress`` asks for, handled by the library.

The command line fills a :class:`CompressRequest` from its flags and hands it to :func:`run_request`, which
holds every decision a run makes beyond distilling: the budget (exactly one of IPC and bytes), the output
(refused before any work where it exists or names a picture), the default rule's options where no method
was named (d3codec.encode.defaults), a stored labeller, the checkpoint policy (resume, insist on resuming,
or restart), and where the run goes (this process, local worker ranks, or the ranks torchrun started).
A refusal is a :class:`D3RequestError` naming the request's field; the command line names the flag.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from d3codec.data import sources
from d3codec.data.real import RealData
from d3codec.encode.defaults import default_choice, with_user_options
from d3codec.encode.federated import barrier, join_process_group, rank, world_size
from d3codec.encode.interface import Encoder
from d3codec.encode.pipeline import CompressResult, compress, compress_with_workers
from d3codec.errors import D3Error
from d3codec.format.accounting import ipc_budget, ipc_equivalent
from d3codec.nn.models import resolve_device
from d3codec.registry import BuildContext, get_method

PICTURES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
Resume = Literal["auto", "resume", "restart"]


class D3RequestError(D3Error, ValueError):
    """A request the library refuses before any work; ``field`` names what to change (a CompressRequest field,
    or two joined by ``/``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LabellerRequest:
    """A labeller to store beside the archive (d3codec.encode.labelled): trained here at ``width`` (``"auto"``:
    the budget rule, d3codec.encode.labelled.auto_width), or a trained teacher's file ``path``."""

    width: int | Literal["auto"] | None = None  # ConvNet-3 channels; None with no path: no labeller
    path: Path | None = None  # a teacher saved by --save-teacher, stored instead of training one
    epochs: float = 10.0  # training epochs over the real training set
    temperature: float = 1.0  # of the soft labels it gives
    dtype: str = "int8"  # how its weights are stored: int8 or float16


@dataclass(frozen=True)
class CompressRequest:
    """What to distil, into what, and how (``d3 compress``'s flags, as Python values)."""

    method: str  # a registered method (d3codec.registry.method_names)
    dataset: str  # a registered dataset's name or a class-per-folder path
    output: Path  # the .d3 archive to write
    ipc: float | None = None  # the budget as float32 images a class; exactly one of ipc and budget
    budget: int | None = None  # the budget in bytes, the whole file counted
    preset: str = "fast"  # the method's preset (its options' defaults)
    options: dict[str, object] = field(default_factory=dict)  # the method's options; None keeps the preset's
    defaulted: bool = False  # no method was named: the default rule's options fill those left None
    data_root: str | None = None  # where datasets are found (default d3codec.data.sources.default_data_root)
    resolution: int | None = None  # image side for folder datasets
    device: str = "auto"  # cpu, cuda, cuda:N, mps or auto
    seed: int = 0  # the run's seed (d3codec.encode.seeds)
    checkpoint: Path | None = None  # where the run checkpoints (default beside the output)
    resume: Resume = "auto"  # auto: resume a checkpoint there is; resume: insist on one; restart: delete them
    workers: int | None = None  # local ranks for a federated run (d3codec.encode.federated)
    labeller: LabellerRequest = field(default_factory=LabellerRequest)  # a labeller stored beside it, if any
    experts: Path | None = None  # the expert pool's folder (d3codec.nn.experts)
    force: bool = False  # overwrite an existing output
    progress: bool = True  # progress bars and lines on standard error


@dataclass
class Prepared:
    """A request made ready to run: the data, the encoder, what the checkpoint policy found, and the default
    rule's reason where it chose the options."""

    request: CompressRequest
    real: RealData
    encoder: Encoder
    device: torch.device
    resumed_from: list[Path]
    chosen: str | None


def check_request(request: CompressRequest) -> None:
    """Refuse what neither the data nor the process group is needed to refuse. Raises: D3RequestError."""
    if (request.ipc is None) == (request.budget is None):
        raise D3RequestError("ipc/budget", "give exactly one of an IPC and a budget in bytes")
    output = Path(request.output)
    if output.suffix.lower() in PICTURES:
        raise D3RequestError(
            "output",
            f"{output}: compress writes a .d3 archive, not a picture; write the archive "
            f"({output.with_suffix('.d3').name}), then draw it with d3 expand ARCHIVE --grid "
            f"{output.name}",
        )
    if output.exists() and not request.force:
        raise D3RequestError("force", f"{output} exists; overwrite it (force) or choose another output")


def check_federated(request: CompressRequest) -> None:
    """Refuse what a federated run cannot do (after joining torchrun's process group). Raises: D3RequestError."""
    if request.workers is not None and request.workers > 1 and world_size() > 1:
        raise D3RequestError("workers", "local workers start their own ranks: leave them out under torchrun")
    federated = (request.workers or 0) > 1 or world_size() > 1
    if federated and (request.labeller.width is not None or request.labeller.path is not None):
        raise D3RequestError(
            "labeller",
            "a federated run (local workers, torchrun) does not store a labeller yet: "
            "leave the labeller out, or run in one process",
        )


def prepare(request: CompressRequest) -> Prepared:
    """Check ``request``, join a process group where torchrun started one, load the data, choose the default
    rule's options where no method was named, build the encoder (and its labeller) and apply the checkpoint
    policy. Raises: D3RequestError, D3Error, ValueError naming the fix."""
    check_request(request)
    if request.experts is not None:  # read by d3codec.nn.experts.experts_dir, here and in the workers' processes
        os.environ["D3CODEC_EXPERTS"] = str(Path(request.experts).resolve())
    device = join_process_group(resolve_device(request.device))  # a missing device before the data loads
    check_federated(request)
    real = sources.load_dataset(request.dataset, request.data_root, request.resolution)  # looked up now (patchable)
    method = get_method(request.method)
    options, chosen = dict(request.options), None
    budget = (
        request.budget
        if request.budget is not None
        else ipc_budget(request.ipc or 0.0, real.num_classes, real.image_shape)
    )
    if request.defaulted:
        choice = default_choice(
            real.num_classes, ipc_equivalent(budget, real.num_classes, real.image_shape), request.preset
        )
        if choice.method == method.name:  # a folder counted otherwise before loading: the method parsed stands
            options, chosen = with_user_options(choice, options), choice.reason
    context = BuildContext(
        Path(request.output),
        Path(request.checkpoint) if request.checkpoint else None,
        device,
        real.image_shape,
        real.num_classes,
    )
    encoder = labelled(method.make_encoder(request.preset, options, context), request.labeller, context, budget)
    return Prepared(request, real, encoder, device, checkpoint_policy(encoder, request), chosen)


def labelled(encoder: Encoder, wanted: LabellerRequest, context: BuildContext, budget: int) -> Encoder:
    """``encoder``, or it with a stored labeller beside it where ``wanted`` asks for one."""
    from d3codec.encode.labelled import LabelledEncoder, LabellerConfig, auto_width
    from d3codec.nn.teacher import load_teacher

    width = wanted.width
    if width == "auto" and wanted.path is None:
        width = auto_width(context.image_shape, context.num_classes, budget, wanted.dtype)
    if width is None and wanted.path is None:
        return encoder
    teacher = (
        load_teacher(wanted.path, context.image_shape, context.num_classes, context.device)
        if wanted.path is not None
        else None
    )
    return LabelledEncoder(
        encoder,
        LabellerConfig(
            width if isinstance(width, int) else 16, wanted.epochs, wanted.temperature, wanted.dtype, teacher
        ),
    )


def checkpoint_policy(encoder: Encoder, request: CompressRequest) -> list[Path]:
    """Apply ``request.resume`` to the encoder's checkpoint files; returns those the run resumes from.
    Raises: D3RequestError where ``resume`` insists and there is none."""
    found = encoder.checkpoint_files()
    if request.resume == "resume" and not found:
        raise D3RequestError(
            "resume", f"there is no checkpoint of {request.output} to go on from; leave resume out to start"
        )
    if request.resume == "restart":
        if rank() == 0:
            for path in found:
                path.unlink(missing_ok=True)
        barrier()  # no rank starts before they are gone
        found = []
    return found


def run_prepared(ready: Prepared) -> CompressResult:
    """Distil and write the archive of a prepared request: in this process (one of torchrun's ranks, or
    alone) or on ``workers`` local ranks."""
    request = ready.request
    if request.workers is not None and request.workers > 1:
        return compress_with_workers(
            request.workers,
            request.dataset,
            request.output,
            encoder=ready.encoder,
            data_root=request.data_root,
            resolution=request.resolution,
            ipc=request.ipc,
            budget=request.budget,
            seed=request.seed,
            device=str(ready.device),
            progress=request.progress,
        )
    return compress(
        ready.real,
        request.output,
        encoder=ready.encoder,
        ipc=request.ipc,
        budget=request.budget,
        seed=request.seed,
        device=ready.device,
        progress=request.progress,
    )


def run_request(request: CompressRequest, announce: Callable[[Prepared], None] | None = None) -> CompressResult:
    """:func:`prepare`, then :func:`run_prepared`; ``announce(prepared)`` is called in between (what the
    command line prints before a long run). Raises: as :func:`prepare`, and what compress raises."""
    ready = prepare(request)
    if announce is not None:
        announce(ready)
    return run_prepared(ready)


__all__ = [
    "CompressRequest",
    "LabellerRequest",
    "D3RequestError",
    "Prepared",
    "prepare",
    "run_prepared",
    "run_request",
    "check_request",
]
