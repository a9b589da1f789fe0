"""The storage plan of a pixel archive: how many images a class, stored how, fit a byte budget.

A plan is made before any distillation. Its floor is exact (d3codec.format.accounting.archive_bound). Since
zstd shrinks image data, the plan then aims higher, one image a class past the count whose estimated
compressed size fits; while the written archive would pass the budget, single images are dropped back
towards the guaranteed count, and the size on disk is checked after writing. The file never exceeds the
budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from d3codec.errors import D3BudgetError
from d3codec.format.accounting import archive_bound, largest_fitting
from d3codec.format.container import Section
from d3codec.format.storage import BYTES_PER_VALUE, resolve_storage_dtype

# the smallest stored/raw ratio a compressed-fill plan assumes, whatever it measures: real Fashion-MNIST
# uint8 images compress to 0.54, uniform images to 0.001; at 0.2 a plan holds at most 5 times the images
# whose raw size fits
MIN_COMPRESSION_RATIO = 0.2

# Below this many images a class a plan distils what it stores: it does not aim past its estimate, and a trim
# that must come drops whole rounds (one image of every class). DM matches each class's images as a set (the
# mean of their embeddings), so a set distilled for 5 a class and cut to 4 is not a set of 4: at IPC 1 on
# Fashion-MNIST, 40 images cut from 5 a class trained a student to 68.30 % where 40 distilled for 4 a class
# reached 75.9 to 77.1 % (benchmarks/per-byte-exploration.md). From 8 a class on, one image is an eighth of a
# class at most, and the plan aims one image a class past its estimate and trims image by image, so that the
# budget fills (the ImageNet rehearsal's 9 to 10 a class: 99.96 % of its bytes).
FEW_PER_CLASS = 8


@dataclass(frozen=True)
class PixelPlan:
    """What a pixel archive stores: ``images_per_class`` images per class as ``storage_dtype``.

    ``guaranteed_per_class`` is the count whose exact upper bound, ``max_bytes``, fits the budget
    whatever the images compress to. ``images_per_class`` may be larger when the plan counts on
    compression (``estimated_bytes``); the encoder then drops images down to the guaranteed count
    if the written archive would pass the budget.
    """

    images_per_class: int
    storage_dtype: str
    max_bytes: int
    budget: int
    guaranteed_per_class: int = 0
    estimated_bytes: int | None = None


def plan_pixel_storage(
    budget: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    sections_for: Callable[[int, str], list[Section]],
    storage_dtype: str = "auto",
    images_per_class: int | None = None,
    compression_ratio: float | None = None,
) -> PixelPlan:
    """Choose images per class and storage dtype to fill ``budget`` bytes without passing it.

    The rule: with ``storage_dtype="auto"`` choose uint8 (four times as many images as float32
    for the same bytes; its quantisation error, at most 1/510 of a class's range, costs nothing
    measurable in accuracy), then the largest images per class whose exact bound fits.

    Args:
        budget: bytes the whole file may take.
        sections_for: ``(images_per_class, dtype) -> sections`` of an archive of that plan with
            placeholder contents of the final shapes (metadata first).
        storage_dtype: "auto" or one of STORAGE_DTYPES.
        images_per_class: fix the count instead of filling the budget (it must still fit).
        compression_ratio: expected stored/raw size of the image payload (from real images, with
            a margin); when given, aim at the count whose *estimated* size fits, one image a class past it
            from FEW_PER_CLASS on (the encoder trims single images to fit), keeping the guaranteed count as
            the floor. Taken
            as at least MIN_COMPRESSION_RATIO, so that uniform images cannot plan without bound.
    Raises: D3BudgetError if not even one image per class fits, with the smallest budget that would.
    """
    dtype = resolve_storage_dtype(storage_dtype)

    def bound(n: int) -> int:
        with torch.device("meta"):  # placeholders counted, not made: a 2 GiB budget's images hold no memory
            return archive_bound(sections_for(n, dtype))

    smallest = bound(1)
    if smallest > budget:
        raise D3BudgetError(
            f"a budget of {budget} bytes cannot hold one {dtype} image per class for {num_classes} classes of "
            f"shape {image_shape}; the smallest budget that works is {smallest} bytes (`budget` {smallest})",
            min_budget=smallest,
        )
    if images_per_class is not None:
        return fixed_count_plan(budget, num_classes, image_shape, dtype, images_per_class, bound)
    c, h, w = image_shape
    payload = num_classes * c * h * w * BYTES_PER_VALUE[dtype]  # raw image bytes per image per class
    # per image a class the bound grows by the images' raw bytes (and a digit now and then): an affine
    # estimate guides the search, so that only a few budget-sized placeholder archives are built
    per_image = max(1, bound(2) - smallest)
    affine = lambda n: smallest + (n - 1) * per_image  # noqa: E731
    guaranteed = largest_fitting(
        lambda n: bound(n) <= budget, max(1, budget // payload), 1 + (budget - smallest) // per_image
    )
    if compression_ratio is None or compression_ratio >= 1:
        return PixelPlan(guaranteed, dtype, bound(guaranteed), budget, guaranteed)

    target, estimated = compressed_target(budget, payload, affine, compression_ratio, guaranteed)
    return PixelPlan(target, dtype, bound(guaranteed), budget, guaranteed, estimated)


def compressed_target(
    budget: int, payload: int, affine: Callable[[int], int], compression_ratio: float, guaranteed: int
) -> tuple[int, int]:
    """The images a class a compressed-fill plan aims at, and that count's estimated archive size in bytes.

    ``affine(n)``: the archive's raw bytes at n images a class; ``payload``: the raw image bytes each image a
    class adds; ``compression_ratio`` (< 1): their expected stored/raw size, taken as at least
    MIN_COMPRESSION_RATIO. The aim is the largest count whose estimate fits ``budget``, one image a class past
    it from FEW_PER_CLASS on (the writer trims single images), and never below ``guaranteed``."""
    compression_ratio = max(compression_ratio, MIN_COMPRESSION_RATIO)  # a measured 0.001 plans thousands

    def estimate(n: int) -> int:  # affine: no archive is built past the budget
        return int(affine(n) - (1 - compression_ratio) * payload * n)

    target = largest_fitting(lambda n: estimate(n) <= budget, max(1, int(budget / (payload * compression_ratio))) + 1)
    target = max(target + (target >= FEW_PER_CLASS), guaranteed)  # one past the estimate: the writer trims
    return target, estimate(target)


def fixed_count_plan(
    budget: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    dtype: str,
    images_per_class: int,
    bound: Callable[[int], int],
) -> PixelPlan:
    """The plan of exactly ``images_per_class`` images a class as ``dtype`` (a resolved storage dtype), whose
    archive's exact bound is ``bound(images_per_class)`` bytes.

    Raises: D3BudgetError when those images pass ``budget``: first by their raw bytes alone (no
    budget-sized placeholder archive is built for a count far too large), else by the exact bound."""
    needed = images_per_class * num_classes * math.prod(image_shape) * BYTES_PER_VALUE[dtype]
    if needed > budget:
        raise D3BudgetError(
            f"{images_per_class} {dtype} images per class need more than {needed} bytes, over the "
            f"budget of {budget}: lower `images_per_class`",
            min_budget=needed,
        )
    needed = bound(images_per_class)
    if needed > budget:
        raise D3BudgetError(
            f"{images_per_class} {dtype} images per class need {needed} bytes, over the budget of "
            f"{budget}: raise `budget` to {needed} or lower `images_per_class`",
            min_budget=needed,
        )
    return PixelPlan(images_per_class, dtype, needed, budget, images_per_class)
