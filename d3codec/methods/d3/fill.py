"""Filling a group's share of the budget once its priors are trained and labelled.

The plan (D3Encoder.plan) counts priors and soft labels at PRIOR_STORED_RATIO of their raw bytes, a
guess made before training. Priors that come out more alike compress further (a short warm start, few
real images a class, the ImageNet rehearsal's 8.4 % fill), and the bytes the guess kept for them would
stay empty. So a group, once labelled, measures what its tensors take under zstd against what the plan
counted on for it, and adds priors to every class with what is left (GroupDistiller.filled, group.py): each new prior's
mean is fitted to a new real image of its class through the trained decoder (generative latent
optimisation's inversion, :func:`d3codec.methods.d3.glo.fit_latents`) and labelled like the others.
The writer's trim drops what a slightly optimistic count passes (layout.trimmed_priors).
"""

from __future__ import annotations

import safetensors.torch
import torch

from d3codec.format.container import safetensors_size, stored_size
from d3codec.format.limits import DEFAULT_LIMITS, network_cost
from d3codec.methods.d3.archive import prior_values
from d3codec.methods.d3.layout import GroupPlan, group_tensors

FILL_MARGIN = 0.98  # the share of the room the added priors may take: zstd stores them about as the others
FILL_ROUNDS = 3  # measure, add, measure again: added priors (their log-variances alike) compress further


def planned_bytes(g: GroupPlan, index: int, image_shape: tuple[int, int, int], cfg, ratio: float) -> float:
    """What the plan counted on for group ``index``: its decoder's raw bytes and its priors' and soft labels'
    at ``ratio`` of theirs (D3Encoder.plan's estimate, for this group alone; ``cfg`` a D3Config)."""
    with torch.device("meta"):  # placeholders counted, not made
        part = group_tensors(g, index, image_shape, cfg)
    raw = {section: safetensors_size(tensors) for section, tensors in part.items()}
    return raw["decoder"] + ratio * (raw["priors"] + raw.get("prior_labels", 0))


def stored_bytes(part: dict[str, dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(all sections, the priors and soft labels) of one group's tensors (by section) as zstd stores them."""
    sizes = {section: stored_size(safetensors.torch.save(tensors)) for section, tensors in part.items()}
    return sum(sizes.values()), sizes["priors"] + sizes.get("prior_labels", 0)


def priors_to_add(
    planned: float, part: dict[str, dict[str, torch.Tensor]], num_classes: int, priors_per_class: int
) -> int:
    """Priors per class that fit in FILL_MARGIN of ``planned`` bytes beside ``part`` (the group as it is),
    each class's at the stored size of the group's priors so far (labels included)."""
    total, priors = stored_bytes(part)
    per_round = priors / priors_per_class  # one more prior in every class of the group
    return max(0, int((FILL_MARGIN * planned - total) // max(per_round, 1.0)))


def most_priors(g: GroupPlan, image_shape: tuple[int, int, int], num_classes: int) -> int:
    """The most priors a class group ``g`` may hold so that a reader with the default decode limits still loads
    the archive: its share (K_g / K) of ``max_parameters``, counted as D3Sampler counts it (the decoder, each
    prior's mean, log-variance and order, its soft labels)."""
    k, z = g.num_classes, g.latent_dim
    decoder = network_cost(lambda: g.decoder(image_shape), lambda: (torch.zeros(1, z),), "the decoder").parameters
    share = DEFAULT_LIMITS.max_parameters * k // num_classes
    return max(g.priors_per_class, (share - decoder) // (k * prior_values(g, soft_labels=True)))


def appended_labels(labels, more):
    """Soft labels of a group's priors with ``more``'s after them along the prior axis: (K_g, P, K_g) rows,
    or (values, indices) (K_g, P, k) each for top-k labels; None stays None."""
    if labels is None:
        return None
    if isinstance(labels, tuple):
        return tuple(torch.cat([a, b], 1) for a, b in zip(labels, more))
    return torch.cat([labels, more], 1)
