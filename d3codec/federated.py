"""Federated distillation over torch.distributed: subtasks spread across ranks, merged by rank 0.

Run ``torchrun --nproc-per-node N -m d3codec.cli.main compress d3 ... --subtasks K``
(or ``d3 compress ... --workers N``, which spawns N local ranks itself). Every rank makes the same plan;
rank r distils groups r, r + N, r + 2N, ... (each seeded by (seed, group), so which rank runs a
group does not change it), writes each as a complete subtask archive beside the output, and rank
0 merges the subtask archives (d3codec.merge) into the output once all are written. Backend: gloo
on CPU, NCCL on CUDA. The subtask archives must be on a file system every rank sees (one machine,
or a shared folder); they are removed after the merge unless ``D3CODEC_KEEP_SUBTASKS=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .container import Section, write_archive
from .data import RealData
from .errors import D3Error
from .merge import Part, combine, rename_group
from .methods.base import Encoded, Encoder
from .methods.d3 import sections_of


def world_size() -> int:
    """Ranks of the initialised default process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def join_process_group(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...) if there is one.

    Returns the device this process should use: on CUDA under torchrun, cuda:LOCAL_RANK.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def subtask_path(output: Path, index: int, count: int) -> Path:
    return output.with_name(f"{output.name}.subtask{index + 1}-of-{count}.d3")


def distill_federated(encoder: Encoder, real: RealData, plan, output: Path, meta: dict, *, device: torch.device,
                      seed: int, progress: bool = True) -> Encoded | None:
    """This rank's share of the subtasks; on rank 0, the merged result (None on the other ranks).

    ``encoder`` must split into groups (``plan.groups``, ``distill_group``); ``meta`` is the
    archive's common metadata, from which each subtask archive's metadata is made.
    """
    if not hasattr(encoder, "distill_group"):
        raise D3Error(f"method {encoder.method!r} does not split into subtasks; run it without torchrun/--workers")
    me, world, count = rank(), world_size(), len(plan.groups)
    classes = meta["dataset"]["classes"]
    for index in range(me, count, world):
        tensors, entry = encoder.distill_group(real, plan, index, device=device, seed=seed, progress=progress and me == 0)
        a, b = entry["classes"]
        part_meta = {**meta, "dataset": {**meta["dataset"], "classes": classes[a:b]},
                     "params": encoder.method_meta([{**entry, "classes": [0, b - a]}]), "stats": entry["stats"],
                     "federated": {"budget": meta["budget"]["bytes"], "subtask": index, "subtasks": count,
                                   "classes": [a, b]}}
        local = {section: rename_group(group, index, 0) for section, group in tensors.items()}
        write_archive(subtask_path(output, index, count), [Section.json("meta", part_meta)] + sections_of([local]))
    dist.barrier()
    result = None
    if me == 0:
        paths = [subtask_path(output, i, count) for i in range(count)]
        parts = [Part.read(p) for p in paths]
        fields, sections = combine(parts)
        seconds = sum(p.meta["stats"].get("distill_seconds", 0.0) for p in parts)
        result = Encoded(sections, encoder.method_meta(fields["groups"]),  # seconds: summed over subtasks
                         {"distill_seconds": round(seconds, 3), "workers": world})
        if hasattr(encoder, "remove_checkpoints"):  # once the archive is written
            result.cleanup = lambda: encoder.remove_checkpoints(count)
        if os.environ.get("D3CODEC_KEEP_SUBTASKS") != "1":
            for p in paths:
                p.unlink()
    return result


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()



def compress_with_workers(workers: int, dataset: str, output: str | os.PathLike, *, encoder: Encoder,
                          data_root: str | None = None, resolution: int | None = None, ipc: float | None = None,
                          budget: int | None = None, seed: int = 0, device: str = "cpu", progress: bool = True) -> None:
    """Run :func:`d3codec.compress.compress` on ``workers`` local ranks (spawned processes, gloo or NCCL).

    Each worker loads ``dataset`` itself (d3codec.data.load_dataset) and uses cores / workers
    threads; on CUDA, worker r uses GPU r mod (number of GPUs).
    Raises: D3Error when a worker fails, with its error.
    """
    import torch.multiprocessing as mp

    if workers < 2:
        raise ValueError("--workers must be at least 2 (leave it out to run in this process)")
    args = (workers, _free_port(), dataset, str(output), encoder, data_root, resolution, ipc, budget, seed, device,
            progress)
    try:
        mp.start_processes(_worker, args=args, nprocs=workers, start_method="spawn")
    except mp.ProcessRaisedException as e:
        raise D3Error(f"a worker failed:\n{e}") from None


def _worker(index, workers, port, dataset, output, encoder, data_root, resolution, ipc, budget, seed, device, progress):
    from .compress import compress
    from .data import load_dataset

    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", index % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=index, world_size=workers)
    try:
        real = load_dataset(dataset, data_root, resolution)
        compress(real, output, encoder=encoder, ipc=ipc, budget=budget, seed=seed, device=dev,
                 progress=progress and index == 0)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
