"""The budget rule of method ``d3``: the groups' shapes and how many priors a class fill an archive's budget.

:func:`plan_groups` applies the rule :meth:`d3codec.methods.d3.encoder.D3Encoder.plan` states: the classes split
into subtask groups (Qin, Deng & Alvarez-Melis 2024, Sec. 3.3), a latent size and decoder by image size and
budget share, soft labels cut to their top k probabilities in large groups, then as many priors a class as fit
(:func:`plan_priors`), measured on placeholder archives built on the meta device (counted, not made).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from d3codec.encode.interface import DatasetSpec
from d3codec.errors import D3BudgetError
from d3codec.format.accounting import META_RESERVE_BYTES, archive_bound, largest_fitting
from d3codec.format.container import Section
from d3codec.methods.d3.config import D3Config
from d3codec.methods.d3.layout import (
    DECODER_WIDTHS,
    D3Plan,
    GroupPlan,
    decoder_shapes,
    group_entry,
    group_tensors,
    sections_of,
    split_classes,
)
from d3codec.nn.models import DECODER_ARCHITECTURES

# The stored/raw size the plan expects of priors and soft labels together (zstd, spec §5.6 storage): trained
# int8 priors with whole float16 label rows on Fashion-MNIST stored at 0.68 (smoke preset, 217 priors a class),
# 0.78 (fast preset, 217 a class) and 0.79 (smoke, 14 a class). The plan aims at the prior count whose estimated
# size fits and the writer drops the priors that do not (D3Encoder.prior_trimmed): an estimate on the low side
# costs a few trimmed priors, one on the high side unused bytes. Extra priors cost little: matching draws
# synthetic_per_class samples a class whatever the count, and the warm start a fixed number of batches.
PRIOR_STORED_RATIO = 0.7


def plan_priors(
    bound: Callable[[int], int], budget: int, fixed: int | None, fill: str, least_bytes: int
) -> tuple[int, int]:
    """(priors per class to distil, priors per class guaranteed to fit) under ``budget`` bytes, where
    ``bound(n)`` is the exact uncompressed size of an archive of n priors a class (it builds a placeholder
    archive: few calls, none far past the budget) and a prior in every class takes at least ``least_bytes``.
    ``fixed``: the count a user asked for; ``fill`` "compressed" aims past the exact bound, at the priors'
    expected compression (PRIOR_STORED_RATIO). Raises: D3BudgetError for a fixed count that does not fit."""
    smallest = bound(1)
    per_prior = max(1, bound(2) - smallest)  # raw bytes of one more prior in every class
    if fixed is not None:
        if smallest + (fixed - 1) * per_prior > 2 * budget:  # refused before building a huge placeholder
            needed = smallest + (fixed - 1) * per_prior
            raise D3BudgetError(
                f"{fixed} priors per class need about {needed} bytes, over the budget of {budget}: "
                "lower `priors_per_class`",
                min_budget=needed,
            )
        needed = bound(fixed)
        if needed > budget:
            raise D3BudgetError(
                f"{fixed} priors per class need {needed} bytes, over the budget of {budget}: "
                f"raise `budget` to {needed} or lower `priors_per_class`",
                min_budget=needed,
            )
        return fixed, fixed
    guaranteed = largest_fitting(
        lambda n: bound(n) <= budget, budget // least_bytes + 1, 1 + (budget - smallest) // per_prior
    )  # an affine guess
    if fill != "compressed":
        return guaranteed, guaranteed

    def estimate(n: int) -> float:  # affine: no placeholder archive past the budget is built
        return smallest + (n - 1) * per_prior - (1 - PRIOR_STORED_RATIO) * per_prior * n

    return largest_fitting(
        lambda n: estimate(n) <= budget, int(budget / (PRIOR_STORED_RATIO * per_prior)) + 1
    ), guaranteed


LABEL_TOP_K_ABOVE = 20  # groups of more classes store the top LABEL_TOP_K probabilities of each soft label
LABEL_TOP_K = 10


def label_top_k(given: int | None, group_classes: int) -> int | None:
    """How many of a soft label's largest probabilities a group of ``group_classes`` stores (None: the whole row):
    ``given`` (the config's ``label_top_k``; 0: whole rows) where not None, else LABEL_TOP_K above LABEL_TOP_K_ABOVE
    classes; None wherever the count would keep the whole row."""
    top = (LABEL_TOP_K if group_classes > LABEL_TOP_K_ABOVE else None) if given is None else (given or None)
    return top if top is not None and top < group_classes else None


def decoder_width(
    cfg: D3Config, budget: int, groups: int, z: int, image_shape: tuple[int, int, int], architecture: str
) -> int:
    """The rule's decoder width: ``decoder_width`` where given, else the largest of DECODER_WIDTHS (up to
    ``max_decoder_width``: 64 for images up to 32 pixels a side, else 256) whose ``groups`` decoders, stored, take
    at most ``decoder_share`` of ``budget`` bytes; the smallest width where none does."""
    if cfg.decoder_width is not None:
        return cfg.decoder_width
    cap = cfg.max_decoder_width or (64 if max(image_shape[1:]) <= 32 else 256)

    def decoder_bytes(width: int) -> int:
        n = sum(math.prod(s) for s in decoder_shapes(z, image_shape, width, architecture).values())
        return groups * n * (1 if cfg.decoder_dtype == "int8" else 2)

    fitting = [w for w in DECODER_WIDTHS if w <= cap and decoder_bytes(w) <= cfg.decoder_share * budget]
    return fitting[-1] if fitting else DECODER_WIDTHS[0]


def groups_bound(
    cfg: D3Config,
    groups: list[GroupPlan],
    image_shape: tuple[int, int, int],
    meta_of: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> int:
    """The exact uncompressed size in bytes of an archive of ``groups`` (compression off, metadata reserve
    included), from placeholder tensors on the meta device; ``meta_of``: the groups' metadata entries → the
    metadata section as written."""
    entries = [
        group_entry(g, cfg, {"distill_seconds": 0.0, "teacher_accuracy": 0.0, "final_loss": 0.0}) for g in groups
    ]
    with torch.device("meta"):  # placeholders counted, not made
        parts = [group_tensors(g, i, image_shape, cfg) for i, g in enumerate(groups)]
        sections = [Section.json("meta", meta_of(entries))] + sections_of(parts)
    return archive_bound(sections, META_RESERVE_BYTES + 64 * len(groups))


def plan_groups(
    cfg: D3Config, spec: DatasetSpec, budget: int, meta_of: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> D3Plan:
    """The plan of the budget rule (:meth:`d3codec.methods.d3.encoder.D3Encoder.plan` states it) for ``spec``
    under ``budget`` bytes; ``meta_of`` as for :func:`groups_bound`.

    Raises: ValueError for an unknown ``fill`` or decoder architecture; D3BudgetError, with the smallest workable
    budget, when one prior per class with the rule's decoder does not fit.
    """
    k, shape = spec.num_classes, spec.image_shape
    ranges = split_classes(k, cfg.subtasks)
    side = max(shape[1:])
    z = cfg.latent_dim or (32 if side <= 32 else 64)
    architecture = cfg.decoder_architecture or ("uniform" if side <= 32 else "tapered")
    if cfg.fill not in ("compressed", "raw"):
        raise ValueError(f"fill must be 'compressed' or 'raw', not {cfg.fill!r}")
    if architecture not in DECODER_ARCHITECTURES:
        raise ValueError(
            f"decoder architecture must be one of {', '.join(DECODER_ARCHITECTURES)}, not {architecture!r}"
        )

    def groups_for(width: int, priors: int) -> list[GroupPlan]:
        return [GroupPlan(a, b, z, priors, width, architecture, label_top_k(cfg.label_top_k, b - a)) for a, b in ranges]

    bounds: dict[tuple[GroupPlan, ...], int] = {}

    def bound(groups: list[GroupPlan]) -> int:
        if tuple(groups) not in bounds:
            bounds[tuple(groups)] = groups_bound(cfg, groups, shape, meta_of)
        return bounds[tuple(groups)]

    width = decoder_width(cfg, budget, len(ranges), z, shape, architecture)
    smallest = bound(groups_for(width, 1))
    if smallest > budget:
        raise D3BudgetError(
            f"a budget of {budget} bytes cannot hold {len(ranges)} decoder(s) of width {width} and one prior per "
            f"class; the smallest budget that works is {smallest} bytes (a `budget` of {smallest})",
            min_budget=smallest,
        )
    priors, guaranteed = plan_priors(
        lambda n: bound(groups_for(width, n)), budget, cfg.priors_per_class, cfg.fill, k * z * 2
    )
    return D3Plan(
        tuple(groups_for(width, priors)),
        cfg.decoder_dtype,
        cfg.prior_dtype,
        cfg.soft_labels,
        bound(groups_for(width, guaranteed)),
        budget,
    )
