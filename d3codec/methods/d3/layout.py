"""What a D3 archive's groups hold: their plan, the shapes and storage of priors, decoder and soft labels.

Shared by the encoder (encoder.py), the reader (archive.py) and merging (merge.py). Sections (keys per
group g): ``priors`` {g{g}.mean, g{g}.logvar: (K_g, P, Z) float16, or int8 with g{g}.mean.scale,
g{g}.logvar.scale (Z,) float16 per latent dimension}, ``decoder`` {g{g}.<param>: int8 weights with a
float16 scale per output channel, or float16}, ``prior_labels`` {g{g}: (K_g, P, K_g) float16
probabilities}, absent when soft labels are off (spec/FORMAT.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...container import Section
from ...errors import D3FormatError
from ...models import Decoder, parameter_shapes
from ...weights import WEIGHT_DTYPES, quantise_int8, quantise_state, read_stored

SECTIONS = {"meta": True, "priors": True, "decoder": True, "prior_labels": True}  # name → critical
DECODER_WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DECODER_DTYPES = WEIGHT_DTYPES
PRIOR_DTYPES = ("float16", "int8")
def decoder_shapes(latent_dim: int, image_shape: tuple[int, int, int], width: int) -> dict[str, tuple[int, ...]]:
    """The decoder's parameter shapes, computed without allocating them (meta device)."""
    return parameter_shapes(Decoder, latent_dim, image_shape, width)


# ---- storage of priors: int8 with a scale per latent dimension, or float16 (d3codec.weights) --------------------

def quantise_priors(mean: torch.Tensor, logvar: torch.Tensor, prefix: str, dtype: str) -> dict[str, torch.Tensor]:
    """Tensors to store for priors mean, logvar (K, P, Z): float16, or int8 with a float16 scale per latent
    dimension (``{prefix}mean.scale``, ``{prefix}logvar.scale``: (Z,))."""
    out = {}
    for name, value in (("mean", mean), ("logvar", logvar)):
        if dtype == "int8":
            out[f"{prefix}{name}"], out[f"{prefix}{name}.scale"] = quantise_int8(value, -1)
        else:
            out[f"{prefix}{name}"] = value.detach().float().cpu().half().contiguous()
    return out


def dequantise_priors(tensors: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int, int],
                      dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 (mean, logvar), each (K, P, Z), of stored priors.

    Raises: D3FormatError on a missing, misshapen, mistyped or non-finite tensor.
    """
    out = []
    for name in ("mean", "logvar"):
        key = f"{prefix}{name}"
        value = read_stored(tensors, "priors", key, shape, -1 if dtype == "int8" else None)
        if not torch.isfinite(value).all():
            raise D3FormatError(f"section 'priors': {key!r} holds non-finite values")
        out.append(value)
    return out[0], out[1]


# ---- the plan and the groups' tensors ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupPlan:
    """One subtask: classes [start, stop) of the dataset and the shapes of what it stores."""

    start: int
    stop: int
    latent_dim: int
    priors_per_class: int
    decoder_width: int

    @property
    def num_classes(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class D3Plan:
    """What a D3 archive stores; ``max_bytes`` is its exact upper bound (compression off)."""

    groups: tuple[GroupPlan, ...]
    decoder_dtype: str
    prior_dtype: str
    soft_labels: bool
    max_bytes: int
    budget: int


def split_classes(num_classes: int, subtasks: int) -> list[tuple[int, int]]:
    """Contiguous groups [start, stop) of sizes that differ by at most one (the paper's ImageNet split)."""
    if not 1 <= subtasks <= num_classes:
        raise ValueError(f"--subtasks must be between 1 and the number of classes ({num_classes}), not {subtasks}")
    bounds = [i * num_classes // subtasks for i in range(subtasks + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def group_entry(g: GroupPlan, cfg, stats: dict | None = None) -> dict:
    """The metadata entry of one group (``params.groups[i]``); ``cfg`` a D3Config (its storage dtypes, soft labels)."""
    return {"classes": [g.start, g.stop], "latent_dim": g.latent_dim, "priors_per_class": g.priors_per_class,
            "decoder_width": g.decoder_width, "decoder_dtype": cfg.decoder_dtype, "prior_dtype": cfg.prior_dtype,
            "soft_labels": cfg.soft_labels, "stats": stats or {}}


def group_tensors(g: GroupPlan, index: int, image_shape, cfg, priors=None,
                  decoder_state=None, labels=None) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors of group ``index`` by section name (``cfg`` a D3Config); zeros of the right shapes where contents
    are not given."""
    k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
    if priors is None:
        priors = (torch.zeros(k, p, z), torch.zeros(k, p, z))
    if decoder_state is None:
        decoder_state = {n: torch.zeros(s) for n, s in decoder_shapes(z, image_shape, g.decoder_width).items()}
    out = {"priors": quantise_priors(*priors, f"g{index}.", cfg.prior_dtype),
           "decoder": quantise_state(decoder_state, f"g{index}.", cfg.decoder_dtype)}
    if cfg.soft_labels:
        out["prior_labels"] = {f"g{index}": (labels if labels is not None else torch.zeros(k, p, k)).half().contiguous()}
    return out


def sections_of(parts: list[dict[str, dict[str, torch.Tensor]]]) -> list[Section]:
    """The method sections of an archive whose groups hold ``parts`` (each from group_tensors)."""
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for part in parts:
        for section, tensors in part.items():
            merged.setdefault(section, {}).update(tensors)
    return [Section.tensors(name, merged[name]) for name in ("priors", "decoder", "prior_labels") if name in merged]
