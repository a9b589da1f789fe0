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

from d3codec.errors import D3FormatError
from d3codec.format.container import Section
from d3codec.format.limits import all_finite
from d3codec.format.storage import PROBABILITY_TOLERANCE
from d3codec.format.weights import WEIGHT_DTYPES, quantise_int8, quantise_state, read_stored, stored_zeros
from d3codec.nn.models import Decoder, parameter_shapes

SECTIONS = {"meta": True, "priors": True, "decoder": True, "prior_labels": True}  # name → critical
DECODER_WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DECODER_DTYPES = WEIGHT_DTYPES
PRIOR_DTYPES = ("float16", "int8")
MAX_TOP_K_CLASSES = 32767  # top-k soft labels store their classes as int16


def decoder_shapes(
    latent_dim: int, image_shape: tuple[int, int, int], width: int, architecture: str = "uniform"
) -> dict[str, tuple[int, ...]]:
    """The decoder's parameter shapes, computed without allocating them (meta device)."""
    return parameter_shapes(Decoder, latent_dim, image_shape, width, architecture)


# ---- storage of priors: int8 with a scale per latent dimension, or float16 (d3codec.format.weights) ----------


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


def dequantise_priors(
    tensors: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int, int], dtype: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 (mean, logvar), each (K, P, Z), of stored priors.

    Raises: D3FormatError on a missing, misshapen, mistyped or non-finite tensor.
    """
    mean, logvar = (
        read_stored(tensors, "priors", f"{prefix}{name}", shape, -1 if dtype == "int8" else None)
        for name in ("mean", "logvar")
    )  # read_stored refuses non-finite values
    return mean, logvar


# ---- the plan and the groups' tensors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPlan:
    """One subtask: classes [start, stop) of the dataset and the shapes of what it stores."""

    start: int
    stop: int
    latent_dim: int
    priors_per_class: int
    decoder_width: int
    decoder_architecture: str = "uniform"  # d3codec.nn.models.DECODER_ARCHITECTURES
    label_top_k: int | None = None  # soft labels stored as their k largest probabilities (None: whole rows)

    @property
    def num_classes(self) -> int:
        return self.stop - self.start

    def decoder(self, image_shape: tuple[int, int, int]) -> Decoder:
        """A freshly initialised decoder of this group's latent size, width and architecture."""
        return Decoder(self.latent_dim, image_shape, self.decoder_width, self.decoder_architecture)

    def decoder_shapes(self, image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
        return decoder_shapes(self.latent_dim, image_shape, self.decoder_width, self.decoder_architecture)


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
        raise ValueError(f"`subtasks` must be between 1 and the number of classes ({num_classes}), not {subtasks}")
    bounds = [i * num_classes // subtasks for i in range(subtasks + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def group_entry(g: GroupPlan, cfg, stats: dict | None = None) -> dict:
    """The metadata entry of one group (``params.groups[i]``); ``cfg`` a D3Config (its storage dtypes, soft labels).
    ``decoder_architecture`` is written where it is not "uniform" (absent means uniform, spec §5.6)."""
    entry = {
        "classes": [g.start, g.stop],
        "latent_dim": g.latent_dim,
        "priors_per_class": g.priors_per_class,
        "decoder_width": g.decoder_width,
        "decoder_dtype": cfg.decoder_dtype,
        "prior_dtype": cfg.prior_dtype,
        "soft_labels": cfg.soft_labels,
        "stats": stats or {},
    }
    if g.decoder_architecture != "uniform":
        entry["decoder_architecture"] = g.decoder_architecture
    if g.label_top_k is not None and cfg.soft_labels:
        entry["label_top_k"] = g.label_top_k
    return entry


def group_tensors(
    g: GroupPlan,
    index: int,
    image_shape,
    cfg,
    priors: tuple[torch.Tensor, torch.Tensor] | None = None,
    decoder_state: dict[str, torch.Tensor] | None = None,
    labels: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors of group ``index`` by section name (``cfg`` a D3Config); zeros of the right shapes where contents
    are not given."""
    k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
    if priors is None:  # a plan's placeholders, made in their stored dtypes (ImageNet's plan counts 98 MB of them)
        prior_shapes = {"mean": (k, p, z), "logvar": (k, p, z)}
        if cfg.prior_dtype == "int8":
            stored = {f"g{index}.{n}": torch.zeros(s, dtype=torch.int8) for n, s in prior_shapes.items()}
            stored.update({f"g{index}.{n}.scale": torch.zeros(z, dtype=torch.float16) for n in prior_shapes})
        else:
            stored = {f"g{index}.{n}": torch.zeros(s, dtype=torch.float16) for n, s in prior_shapes.items()}
    else:
        stored = quantise_priors(*priors, f"g{index}.", cfg.prior_dtype)
    decoder = (
        stored_zeros(g.decoder_shapes(image_shape), f"g{index}.", cfg.decoder_dtype)
        if decoder_state is None
        else quantise_state(decoder_state, f"g{index}.", cfg.decoder_dtype)
    )
    out = {"priors": stored, "decoder": decoder}
    if cfg.soft_labels and labels is None and g.label_top_k is not None:  # a plan's placeholder, in stored form
        out["prior_labels"] = {
            f"g{index}.values": torch.zeros(k, p, g.label_top_k, dtype=torch.float16),
            f"g{index}.indices": torch.zeros(k, p, g.label_top_k, dtype=torch.int16),
        }
    elif cfg.soft_labels:
        labels = labels if labels is not None else torch.full((k, p, k), 1.0 / k)
        out["prior_labels"] = stored_labels(labels, f"g{index}", g.label_top_k)
    return out


# ---- soft labels: whole rows, or the top k of each (spec/FORMAT.md §5.6) ----------------------------------------


def stored_labels(
    labels: torch.Tensor | tuple[torch.Tensor, torch.Tensor], key: str, top_k: int | None
) -> dict[str, torch.Tensor]:
    """The ``prior_labels`` tensors of one group's soft labels (K_g, P, K_g): ``{key}`` F16 rows, or with
    ``top_k`` the k largest probabilities of each row, ``{key}.values`` (K_g, P, k) F16, and their classes,
    ``{key}.indices`` (K_g, P, k) I16 (local; k < K_g ≤ 32 767). A reader spreads the rest of each row's
    mass evenly over its other classes (:func:`dense_labels`). With ``top_k``, ``labels`` may also be
    the (values, indices) of ``torch.topk`` already (as the encoder cuts them, batch by batch)."""

    def host(t: torch.Tensor) -> torch.Tensor:  # a plan's meta placeholders stay where they are
        return t if t.is_meta else t.cpu()

    if top_k is None:
        if isinstance(labels, tuple):
            raise ValueError("whole rows of soft labels are stored from a tensor, not from top-k pairs")
        return {key: host(labels.detach().float()).half().contiguous()}
    values, indices = (
        labels if isinstance(labels, tuple) else host(labels.detach().float()).topk(top_k, dim=-1)
    )  # (K_g, P, k) each, largest first
    return {f"{key}.values": values.half().contiguous(), f"{key}.indices": indices.to(torch.int16).contiguous()}


def dense_labels(values: torch.Tensor, indices: torch.Tensor, num_classes: int, section: str, key: str) -> torch.Tensor:
    """Whole rows (K_g, P, K_g) float32 of top-k soft labels: ``values`` (K_g, P, k) at ``indices``, and
    (1 − Σ values) / (K_g − k) (at least 0) at every other class.

    Raises: as :class:`TopKLabels`."""
    top = TopKLabels(values, indices, num_classes, section, key)
    return top.rows(torch.arange(values.shape[1]).expand(values.shape[0], -1)).view(*values.shape[:2], num_classes)


class TopKLabels:
    """Top-k soft labels kept as stored (spec/FORMAT.md §5.6): ``values`` (K_g, P, k) and ``indices``
    (K_g, P, k); whole rows are made only for the priors a draw picks (:meth:`rows`), so a reader never holds
    the K_g × P × K_g table.

    Raises: D3FormatError for an index outside [0, K_g) or repeated within a row, or values that are
    negative, not finite or sum to more than 1 within PROBABILITY_TOLERANCE."""

    def __init__(self, values: torch.Tensor, indices: torch.Tensor, num_classes: int, section: str, key: str):
        k = values.shape[-1]
        if ((indices < 0) | (indices.int() >= num_classes)).any():  # int32: K_g may pass int16's range
            raise D3FormatError(f"section {section!r}: {key}.indices holds a class outside [0, {num_classes})")
        if k > 1 and (indices.sort(-1).values.diff(dim=-1) == 0).any():
            raise D3FormatError(f"section {section!r}: {key}.indices repeats a class within a row")
        if not all_finite(values) or (values < 0).any():
            raise D3FormatError(f"section {section!r}: {key}.values holds negative or non-finite probabilities")
        total = values.sum(-1, keepdim=True, dtype=torch.float32)
        if (total - 1 > PROBABILITY_TOLERANCE).any():
            raise D3FormatError(f"section {section!r}: the rows of {key}.values sum to more than 1")
        # kept as stored (values float16 where stored so, indices int16), made float32 and int64 where drawn
        self.values, self.indices, self.num_classes = values, indices, num_classes
        self.rest = ((1 - total) / (num_classes - k)).clamp_min(0)  # (K_g, P, 1)

    def rows(self, which: torch.Tensor) -> torch.Tensor:
        """The whole rows (K_g·N, K_g) float32 of the priors ``which`` (K_g, N) int64 picks in each class."""
        k_g, n = which.shape
        return self.rows_at(torch.arange(k_g).repeat_interleave(n), which.reshape(-1))

    def rows_at(self, local: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """The whole rows (B, K_g) float32 of prior ``prior[i]`` of local class ``local[i]``, both (B,) int64."""
        rest = self.rest[local, prior]  # (B, 1)
        return (
            rest.expand(len(local), self.num_classes)
            .clone()
            .scatter_(-1, self.indices[local, prior].long(), self.values[local, prior].float())
        )


def first_priors(part: dict[str, dict[str, torch.Tensor]], keep: int) -> dict[str, dict[str, torch.Tensor]]:
    """A group's tensors (as :func:`group_tensors` gives them, any group key) with only the first ``keep``
    priors of each class: dimension 1 of the prior means, log-variances and soft labels (their int8 scales,
    per latent dimension, and the decoder stay as they are)."""
    out = {}
    for section, tensors in part.items():
        if section in ("priors", "prior_labels"):
            tensors = {key: t if key.endswith(".scale") else t[:, :keep].contiguous() for key, t in tensors.items()}
        out[section] = tensors
    return out


def trimmed_priors(priors: list[int], classes: list[int], units: int) -> list[int]:
    """Priors per class of each group after dropping at least ``units`` priors (a class's prior is a unit):
    one prior from every class of the group with the most priors per class (the last of equals) at a time,
    never below one. Returns ``priors`` itself where nothing can be dropped."""
    keep = list(priors)
    while units > 0 and max(keep) > 1:
        g = max(range(len(keep)), key=lambda i: (keep[i], i))
        keep[g] -= 1
        units -= classes[g]
    return keep


def sections_of(parts: list[dict[str, dict[str, torch.Tensor]]]) -> list[Section]:
    """The method sections of an archive whose groups hold ``parts`` (each from group_tensors)."""
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for part in parts:
        for section, tensors in part.items():
            merged.setdefault(section, {}).update(tensors)
    return [Section.tensors(name, merged[name]) for name in ("priors", "decoder", "prior_labels") if name in merged]
