"""Federated distillation over torch.distributed: subtasks spread across ranks, merged by rank 0.

Run ``torchrun --nproc-per-node N -m d3codec.cli.main compress d3 ... --subtasks K``
(or ``d3 compress ... --workers N``, which spawns N local ranks itself). Every rank makes the same plan;
rank r distils subtasks r, r + N, r + 2N, ... (each seeded by (seed, subtask), so which rank runs a
subtask does not change it), writes each as a complete subtask archive beside the output, and rank
0 has the encoder merge them into the output once all are written. The subtask archives must be on a
file system every rank sees (one machine, or a shared folder); they are removed after the merge unless
``D3CODEC_KEEP_SUBTASKS=1``. An encoder that is ``data_parallel`` (d2m) instead runs on every rank and
shares its own work (:func:`sum_gradients`, :func:`broadcast_parameters`); rank 0 writes its result.

The ranks coordinate over gloo, on CPU and CUDA alike, with a timeout of COORDINATION_TIMEOUT: a rank
that finishes its subtasks early may wait hours for the others (uneven groups, a resumed group), which
NCCL's 10-minute watchdog would abort, and gloo lets several ranks share one GPU. The tensors the
ranks exchange (d2m's gradients, once per iteration) go through the CPU.

This module knows no method: it drives any d3codec.encode.interface.SubtaskEncoder or data-parallel Encoder.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d3codec.data.real import RealData
from d3codec.encode.interface import Encoded, Encoder, SubtaskEncoder
from d3codec.errors import D3Error
from d3codec.format.container import Section, write_archive
from d3codec.util.runtime import release_freed_memory

COORDINATION_TIMEOUT = timedelta(days=7)  # how long a rank waits for the others at a barrier
_SHARED_CORES: dict[str, int] = {}  # in a rank of run_ranks: "workers", the ranks sharing this machine's cores


def world_size() -> int:
    """Ranks of the initialised default process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def join_process_group(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...) if there is one.

    Returns the device this process should use: for ``cuda`` without an index under torchrun,
    cuda:(LOCAL_RANK mod the GPUs there are); a device with an index (``cuda:1``) is kept as given.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    device = rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("gloo", timeout=COORDINATION_TIMEOUT)
    return device


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of local rank ``local_rank``: ``cuda`` → cuda:(local_rank mod GPUs), made current; any
    other device (``cpu``, ``cuda:1``) as given."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def subtask_path(output: Path, index: int, count: int) -> Path:
    return output.with_name(f"{output.name}.subtask{index + 1}-of-{count}.d3")


def distill_federated(
    encoder: Encoder,
    real: RealData,
    plan,
    output: Path,
    meta: dict,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
) -> Encoded | None:
    """This rank's share of the subtasks; on rank 0, the merged result (None on the other ranks).

    ``meta`` is the archive's common metadata, from which each subtask archive's metadata is made.
    Raises: D3Error when ``encoder`` does not split into subtasks.
    """
    if encoder.data_parallel:
        encoded = encoder.distill(real, plan, device=device, seed=seed, progress=progress and rank() == 0)
        barrier()
        return encoded if rank() == 0 else None
    if not isinstance(encoder, SubtaskEncoder):
        raise D3Error(f"method {encoder.method!r} does not split into subtasks; run it without torchrun or `workers`")
    me, world, count = rank(), world_size(), encoder.subtask_count(plan)
    classes = meta["dataset"]["classes"]
    for index in range(me, count, world):
        if _SHARED_CORES:  # local ranks share the cores: those of a last, partial round take the idle ones
            torch.set_num_threads(round_threads(index, world, count, os.cpu_count() or 1))
        part = encoder.distill_subtask(real, plan, index, device=device, seed=seed, progress=progress and me == 0)
        a, b = part.classes
        part_meta = {
            **meta,
            "dataset": {**meta["dataset"], "classes": classes[a:b]},
            "params": part.encoded.method_meta,
            "stats": part.encoded.stats,
            "federated": {"budget": meta["budget"]["bytes"], "subtask": index, "subtasks": count, "classes": [a, b]},
        }
        write_archive(subtask_path(output, index, count), [Section.json("meta", part_meta)] + part.encoded.sections)
        del part
        release_freed_memory()  # the next subtask starts from what is live, not from this one's fragments
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


def round_threads(index: int, world: int, count: int, cores: int) -> int:
    """Threads for subtask ``index`` of ``count`` on a rank of ``world`` local ranks sharing ``cores``: the
    subtasks run in rounds of ``world`` (index mod world on each rank), and the ranks of a last round of
    fewer subtasks share the cores of those that are done (5 subtasks on 2 ranks, 2 cores: 1, 1, 1, 1, 2)."""
    busy = min(world, count - index // world * world)
    return max(1, cores // busy)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()


def sum_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Replace every parameter's gradient by its sum over the ranks (a missing one counts as zeros), in one
    exchange through the CPU. No-op in a single process."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.detach().reshape(-1).cpu() for g in grads])
    dist.all_reduce(flat)
    at = 0
    for p, g in zip(parameters, grads):
        p.grad = flat[at : at + g.numel()].view_as(g).to(p.device)
        at += g.numel()


def broadcast_parameters(module: torch.nn.Module, source: int = 0) -> None:
    """Copy rank ``source``'s parameters and buffers of ``module`` to every rank, in one exchange through
    the CPU. No-op in a single process."""
    if world_size() == 1:
        return
    tensors = [t for t in list(module.parameters()) + list(module.buffers())]
    flat = torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])
    dist.broadcast(flat, source)
    at = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[at : at + t.numel()].view_as(t))
            at += t.numel()


def sum_over_ranks(value: float) -> float:
    """``value`` summed over the ranks (itself in a single process)."""
    if world_size() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total)


def run_ranks(workers: int, target: Callable, args: tuple, device: str = "cpu") -> None:
    """Run ``target(device, *args)`` on ``workers`` local ranks (spawned processes) joined in one process
    group (gloo, with COORDINATION_TIMEOUT). ``target`` must be a module-level function (it is pickled by
    name).

    Each rank uses cores / workers threads (more in a last round of fewer subtasks: :func:`round_threads`);
    on ``cuda``, rank r uses GPU r mod (number of GPUs) (several ranks may share one); ``cuda:N`` puts
    every rank on GPU N.
    Raises: ValueError for fewer than 2 workers; D3Error when a rank fails, with its error.
    """
    if workers < 2:
        raise ValueError("`workers` must be at least 2 (leave it out to run in this process)")
    try:
        mp.start_processes(
            _rank_main, args=(workers, _free_port(), device, target, args), nprocs=workers, start_method="spawn"
        )
    except mp.ProcessRaisedException as e:
        raise D3Error(f"a worker failed:\n{e}") from None


def _rank_main(index: int, workers: int, port: int, device: str, target: Callable, args: tuple) -> None:
    dev = rank_device(torch.device(device), index)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    _SHARED_CORES["workers"] = workers
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=workers, timeout=COORDINATION_TIMEOUT
    )
    try:
        target(dev, *args)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
