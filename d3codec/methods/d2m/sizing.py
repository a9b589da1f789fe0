"""D2M's plan: the generator's sizes, and the stored teacher's, that fill a byte budget.

The archive holds the generator (and with soft labels a ConvNet-3 teacher) as int8 with a float16 scale
per output channel, or as float16 (d3codec.format.weights); its exact bound (compression off, metadata
reserve included) is counted from placeholder tensors of the right shapes, never from trained weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable, cast

from d3codec.encode.interface import DatasetSpec, MetaFor
from d3codec.errors import D3BudgetError, D3Error
from d3codec.format.accounting import META_RESERVE_BYTES, archive_bound
from d3codec.format.container import Section
from d3codec.format.weights import stored_zeros
from d3codec.methods.d2m.config import D2MConfig, D2MPlan
from d3codec.methods.d2m.networks import GENERATOR_WIDTHS, PretrainedGenerator, generator_shapes, teacher_shapes
from d3codec.nn.models import ConvNet
from d3codec.nn.teacher import Teacher


def generator_meta(
    config: D2MConfig,
    architecture: str,
    z: int,
    e: int,
    width: int,
    samples: int,
    stats: dict,
    teacher_width: int | None = None,
) -> dict[str, Any]:
    """The method metadata (``params``) of a D2M archive: the generator's architecture and sizes, its
    storage, the default draw per class, the stored teacher's width and label temperature (when one is
    stored), the run's ``stats`` and every option."""
    labels = (
        {} if teacher_width is None else {"teacher_width": teacher_width, "label_temperature": config.label_temperature}
    )
    return {
        "architecture": architecture,
        "noise_dim": z,
        "embed_dim": e,
        "generator_width": width,
        "weight_dtype": config.weight_dtype,
        "samples_per_class": samples,
        **labels,
        "stats": stats,
        "config": asdict(config),
    }


def stored_teacher_width(config: D2MConfig, teacher: Teacher | None, spec: DatasetSpec) -> int | None:
    """The width of the ConvNet-3 teacher the archive will store (None without soft labels): the given
    ``teacher``'s, or ``config.teacher_width`` for one trained in the run.

    Raises: D3Error when a given teacher cannot be stored: it must be a ConvNet-3 of this
    dataset's image shape with one logit per class, in class order.
    """
    if not config.soft_labels:
        return None
    if spec.image_shape[1] != spec.image_shape[2]:
        raise D3Error(
            f"soft labels need a ConvNet-3 teacher, which takes square images, not "
            f"{spec.image_shape[1]}×{spec.image_shape[2]}: turn `soft_labels` off or use square images"
        )
    if teacher is None:
        return config.teacher_width
    k, (c, h, _) = spec.num_classes, spec.image_shape
    net = teacher.net
    width = cast(int, net.features[0].out_channels) if isinstance(net, ConvNet) else None
    ordered = teacher.classes == list(range(k)) and teacher.out_index == list(range(k))
    if (
        width is None
        or not ordered
        or teacher_shapes(c, k, h, width) != {n: tuple(v.shape) for n, v in net.state_dict().items()}
    ):
        raise D3Error(
            "the given teacher cannot be stored for soft labels: it must be a ConvNet-3 of depth 3 "
            f"for {c}×{h}×{h} images with {k} logits in class order; give another `teacher` or "
            "turn `soft_labels` off"
        )
    return width


def teacher_placeholder(config: D2MConfig, spec: DatasetSpec, teacher_width: int | None) -> list[Section]:
    """The ancillary ``teacher`` section of a ConvNet-3 of width ``teacher_width``, zeros of its shapes stored
    as ``weight_dtype``, for counting the archive's bound ([] without a stored teacher)."""
    if teacher_width is None:
        return []
    (c, h, _), k = spec.image_shape, spec.num_classes
    zeros = stored_zeros(teacher_shapes(c, k, h, teacher_width), "", config.weight_dtype)
    return [Section.tensors("teacher", zeros, critical=False)]


def plan_generator(
    config: D2MConfig,
    spec: DatasetSpec,
    budget: int,
    meta_for: MetaFor,
    *,
    generator: PretrainedGenerator | None = None,
    teacher: Teacher | None = None,
) -> D2MPlan:
    """Sizes that fill ``budget`` bytes, by this rule (each step overridable by a config field or
    fixed by a given pre-trained ``generator``):

    1. noise and embedding dimensions 32 for images up to 32 pixels a side, else 64;
    2. generator width: the largest of GENERATOR_WIDTHS (up to ``max_generator_width``) whose
       exact archive bound (compression off, metadata reserve included, and with ``soft_labels``
       the stored teacher, ``teacher`` or one trained in the run) fits the budget.

    Raises: D3Error when a given teacher cannot be stored for soft labels; D3BudgetError, with
    the smallest workable budget, when the narrowest generator does not fit.
    """
    cfg, k, shape = config, spec.num_classes, spec.image_shape
    side = max(shape[1:])
    given = generator
    architecture = given.architecture if given else cfg.architecture
    z = given.noise_dim if given else cfg.noise_dim or (32 if side <= 32 else 64)
    e = given.embed_dim if given else cfg.embed_dim or (32 if side <= 32 else 64)
    ipc = (meta_for({}).get("budget") or {}).get("ipc")
    samples = cfg.samples_per_class or max(10, round(ipc or 0))
    stats = {"pretrain_seconds": 0.0, "finetune_seconds": 0.0, "teacher_accuracy": 0.0, "final_loss": 0.0}
    teacher_width = stored_teacher_width(cfg, teacher, spec)
    stored_teacher = teacher_placeholder(cfg, spec, teacher_width)
    too_big = " or turn `soft_labels` off (the stored teacher takes part of the budget)" if stored_teacher else ""

    def bound(width: int) -> int:
        state = stored_zeros(generator_shapes(architecture, k, z, e, width, shape), "", cfg.weight_dtype)
        meta = generator_meta(cfg, architecture, z, e, width, samples, stats, teacher_width)
        sections = [Section.json("meta", meta_for(meta)), Section.tensors("generator", state), *stored_teacher]
        return archive_bound(sections, META_RESERVE_BYTES)

    fixed = given.width if given is not None else cfg.generator_width
    if fixed is not None:
        width, needed = fixed, bound(fixed)
        if needed > budget:
            what = "the `generator`" if given else f"`generator_width` {width}"
            raise D3BudgetError(
                f"{what} needs {needed} bytes, over the budget of {budget}: raise `budget` to "
                f"{needed}" + ("" if given else " or lower `generator_width`") + too_big,
                min_budget=needed,
            )
    else:

        def weight_bytes(width: int) -> int:  # a lower bound of the archive, from the shapes alone
            return (1 if cfg.weight_dtype == "int8" else 2) * sum(
                math.prod(s) for s in generator_shapes(architecture, k, z, e, width, shape).values()
            )

        width, needed = widest_generator(budget, cfg.max_generator_width, bound, weight_bytes, too_big)
    return D2MPlan(architecture, z, e, width, cfg.weight_dtype, samples, needed, budget, teacher_width)


def widest_generator(
    budget: int,
    max_width: int | None,
    bound: Callable[[int], int],
    weight_bytes: Callable[[int], int],
    too_big: str = "",
) -> tuple[int, int]:
    """The widest of GENERATOR_WIDTHS (up to ``max_width``; None: no cap) whose archive ``bound`` (bytes, by
    width) fits ``budget``, and that bound, found by bisection (the bound grows with the width). Widths whose
    ``weight_bytes`` alone (a lower bound) pass the budget are never counted.

    Raises: D3BudgetError, with the smallest workable budget, when the narrowest does not fit (``too_big``
    ends its message)."""
    cap = max_width or GENERATOR_WIDTHS[-1]
    # widths whose weights alone pass the budget are never built (at ImageNet's budget, width 2 048
    # would be 0.6 G weights: gigabytes of placeholders to count)
    widths = [w for w in GENERATOR_WIDTHS if w <= cap and (w == GENERATOR_WIDTHS[0] or weight_bytes(w) <= budget)] or [
        GENERATOR_WIDTHS[0]
    ]
    bounds = {widths[0]: bound(widths[0])}
    lo, hi = 0, len(widths) - 1  # the bound grows with the width: bisect for the widest that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        bounds[widths[mid]] = bound(widths[mid])
        lo, hi = (mid, hi) if bounds[widths[mid]] <= budget else (lo, mid - 1)
    if bounds[widths[lo]] > budget:
        smallest = bounds[widths[0]]
        raise D3BudgetError(
            f"a budget of {budget} bytes cannot hold the narrowest generator (width "
            f"{widths[0]}); the smallest budget that works is {smallest} bytes "
            f"(`budget` {smallest}){too_big}",
            min_budget=smallest,
        )
    return widths[lo], bounds[widths[lo]]
