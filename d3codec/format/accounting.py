"""Exact byte accounting: budgets in bytes, exact upper bounds of archives, and the largest count that fits.

The literature states budgets as IPC, the bytes of IPC float32 images per class: ``--ipc N`` means
N · K · C · H · W · 4 bytes, and the whole archive file counts against it. A plan's floor is exact, not
estimated: an archive of the planned tensor shapes encoded with compression off (a stored section is never
larger than its raw form) and its metadata padded by META_RESERVE_BYTES bounds every archive of those
shapes (:func:`archive_bound`).
"""

from __future__ import annotations

from typing import Callable

from d3codec.format.container import Section, archive_size

META_RESERVE_BYTES = 256  # room for metadata written after distillation (timings, losses)


def ipc_budget(ipc: float, num_classes: int, image_shape: tuple[int, int, int]) -> int:
    """Bytes of ``ipc`` float32 images per class: ipc · K · C · H · W · 4 (rounded down)."""
    c, h, w = image_shape
    return int(ipc * num_classes * c * h * w * 4)


def ipc_equivalent(num_bytes: int, num_classes: int, image_shape: tuple[int, int, int]) -> float:
    """How many float32 images per class ``num_bytes`` would hold."""
    return num_bytes / ipc_budget(1, num_classes, image_shape)


def archive_bound(sections: list[Section], meta_reserve: int = META_RESERVE_BYTES) -> int:
    """Exact upper bound, in bytes, of an archive of these sections written with any compression.

    The first section must be the JSON metadata; ``meta_reserve`` bytes are added to it for
    fields written later. Sections of meta tensors (a plan's placeholders: d3codec.format.container.PlannedBytes)
    count without any bytes being made.
    """
    return archive_size(sections) + meta_reserve


def largest_fitting(fits: Callable[[int], bool], upper: int, guess: int | None = None) -> int:
    """Largest n in [1, upper] with fits(n), for fits true at 1 and monotone (true, then false).

    ``guess``: where the answer is expected (an affine estimate of an archive's size): the search gallops
    out from it (guess, guess ± 1, ± 2, ± 4, …) to bracket the answer before bisecting, so that a good guess
    costs a few calls of ``fits`` (each of which may build a budget-sized placeholder archive) instead of
    log2(upper)."""
    lo, hi = 1, upper
    if guess is not None and 1 <= guess <= upper:
        step = 1
        if fits(guess):  # gallop up: lo fits, hi bounds what may
            lo = guess
            while lo < hi:
                probe = min(hi, lo + step)
                if not fits(probe):
                    hi = probe - 1
                    break
                lo, step = probe, step * 2
        else:  # gallop down from the guess, which does not fit
            hi = guess - 1
            while lo < hi:
                probe = max(lo, guess - step)
                if fits(probe):
                    lo = probe
                    break
                hi, step = probe - 1, step * 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
