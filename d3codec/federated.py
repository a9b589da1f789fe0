"""Federated distillation over torch.distributed: subtasks spread across ranks, merged by rank 0.

Run ``torchrun --nproc-per-node N -m d3codec.cli.main compress d3 ... --subtasks K``
(or ``d3 compress ... --workers N``, which spawns N local ranks itself). Every rank makes the same plan;
rank r distils subtasks r, r + N, r + 2N, ... (each seeded by (seed, subtask), so which rank runs a
subtask does not change it), writes each as a complete subtask archive beside the output, and rank
0 has the encoder merge them into the output once all are written. Backend: gloo on CPU, NCCL on CUDA.
The subtask archives must be on a file system every rank sees (one machine, or a shared folder); they
are removed after the merge unless ``D3CODEC_KEEP_SUBTASKS=1``.

This module knows no method: it drives any d3codec.methods.base.SubtaskEncoder.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .container import Section, write_archive
from .data import RealData
from .errors import D3Error
from .methods.base import Encoded, Encoder, SubtaskEncoder


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

    ``meta`` is the archive's common metadata, from which each subtask archive's metadata is made.
    Raises: D3Error when ``encoder`` does not split into subtasks.
    """
    if not isinstance(encoder, SubtaskEncoder):
        raise D3Error(f"method {encoder.method!r} does not split into subtasks; run it without torchrun/--workers")
    me, world, count = rank(), world_size(), encoder.subtask_count(plan)
    classes = meta["dataset"]["classes"]
    for index in range(me, count, world):
        part = encoder.distill_subtask(real, plan, index, device=device, seed=seed, progress=progress and me == 0)
        a, b = part.classes
        part_meta = {**meta, "dataset": {**meta["dataset"], "classes": classes[a:b]},
                     "params": part.encoded.method_meta, "stats": part.encoded.stats,
                     "federated": {"budget": meta["budget"]["bytes"], "subtask": index, "subtasks": count,
                                   "classes": [a, b]}}
        write_archive(subtask_path(output, index, count), [Section.json("meta", part_meta)] + part.encoded.sections)
    dist.barrier()
    if me != 0:
        return None
    paths = [subtask_path(output, i, count) for i in range(count)]
    result = encoder.merge_subtasks(paths)
    result.stats["workers"] = world
    result.cleanup = lambda: encoder.remove_checkpoints(count)  # once the archive is written
    if os.environ.get("D3CODEC_KEEP_SUBTASKS") != "1":
        for p in paths:
            p.unlink()
    return result


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()


def run_ranks(workers: int, target: Callable, args: tuple, device: str = "cpu") -> None:
    """Run ``target(device, *args)`` on ``workers`` local ranks (spawned processes) joined in one process
    group (gloo, or NCCL on CUDA). ``target`` must be a module-level function (it is pickled by name).

    Each rank uses cores / workers threads; on CUDA, rank r uses GPU r mod (number of GPUs).
    Raises: ValueError for fewer than 2 workers; D3Error when a rank fails, with its error.
    """
    if workers < 2:
        raise ValueError("--workers must be at least 2 (leave it out to run in this process)")
    try:
        mp.start_processes(_rank_main, args=(workers, _free_port(), device, target, args), nprocs=workers,
                           start_method="spawn")
    except mp.ProcessRaisedException as e:
        raise D3Error(f"a worker failed:\n{e}") from None


def _rank_main(index: int, workers: int, port: int, device: str, target: Callable, args: tuple) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", index % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=index, world_size=workers)
    try:
        target(dev, *args)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
