"""Process settings that make CPU time go to the work: glibc's malloc keeps freed tensor buffers.

By default glibc's malloc serves every allocation over 128 KiB to 32 MiB (its threshold moves) with
a fresh ``mmap`` and gives it back with ``munmap`` when freed, and trims the heap top whenever
more than twice that is free. A training loop frees and re-allocates the same large activation
buffers every iteration, so the kernel maps, zeroes and unmaps them every iteration: on the 2-core
AMD EPYC of benchmarks/cpu-time.md a one-thread DM encode spent half its CPU time in the kernel.

:func:`keep_freed_memory` raises both thresholds once, with ``mallopt`` (what the environment
variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would do), so freed buffers stay
in the process and are reused. The cost: the process keeps its peak memory until it exits. It is
called by the encoders (d3codec.encode.pipeline), the student trainer (d3codec.evaluation.students), the ``d3``
command and the benchmarks. It does nothing where the C library is not glibc, where the user has
set either variable or ``GLIBC_TUNABLES`` (their choice stands), or where ``D3CODEC_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30  # allocations up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # the most mallopt's int takes: the heap is (almost) never trimmed
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_state: dict[str, str] = {}


def keep_freed_memory() -> str:
    """Make glibc's malloc keep and reuse freed large buffers (once per process; later calls are free).

    Returns: what was done, for logs: ``"set"``, or why not: ``"not glibc"``, ``"user setting"``
    (an environment variable of USER_SETTINGS is set), ``"disabled"`` (``D3CODEC_MALLOC=system``)
    or ``"refused"`` (mallopt returned 0). Never raises.
    """
    if "outcome" not in _state:
        _state["outcome"] = _apply()
    return _state["outcome"]


def _apply() -> str:
    if os.environ.get("D3CODEC_MALLOC", "").lower() == "system":
        return "disabled"
    if any(name in os.environ for name in USER_SETTINGS):
        return "user setting"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD_BYTES)) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD_BYTES)) == 1 and ok
    except (OSError, AttributeError):
        return "not glibc"
    return "set" if ok else "refused"


def release_freed_memory() -> bool:
    """Give the memory freed so far back to the system (glibc's ``malloc_trim``), between the stages of a
    long run: with :func:`keep_freed_memory` a process otherwise holds the peak of every stage before, and
    a rank that distils several subtasks in turn (d3codec.encode.federated) would hold their sum of fragments.
    Returns whether anything was released; False where the C library is not glibc. Never raises."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0) == 1
    except (OSError, AttributeError):
        return False


def cuda_debug_from_environment() -> str | None:
    """``D3CODEC_SYNC_DEBUG=warn`` (or ``error``) sets torch.cuda.set_sync_debug_mode, so that every host
    synchronisation in a CUDA run is reported (benchmarks/gpu_check.py counts them). Returns the mode set,
    or None (unset, or no CUDA here). Raises ValueError for another value."""
    import torch

    mode = os.environ.get("D3CODEC_SYNC_DEBUG", "").strip().lower()
    if not mode:
        return None
    if mode not in ("warn", "error", "default"):
        raise ValueError(f"D3CODEC_SYNC_DEBUG must be warn, error or default, not {mode!r}")
    if not torch.cuda.is_available():
        return None
    torch.cuda.set_sync_debug_mode(mode)
    return mode
