"""Reading D3 archives: the priors and decoders of every group, checked, then drawn and decoded.

Nothing here trains (that is encoder.py); the archive's layout is layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3codec.decode.sampler import Sampler
from d3codec.errors import D3FormatError
from d3codec.format import noise
from d3codec.format.limits import DEFAULT_LIMITS, batch_size, check, default_draw_cap, draw_macs, network_cost
from d3codec.format.meta import meta_bool, meta_int, meta_str
from d3codec.format.storage import check_probabilities
from d3codec.format.weights import (
    check_names,
    dequantise_int8,
    load_stored_module,
    read_stored,
    stored_names,
    stored_tensor,
)
from d3codec.methods.d3.layout import DECODER_DTYPES, MAX_TOP_K_CLASSES, PRIOR_DTYPES, GroupPlan, TopKLabels
from d3codec.nn.models import DECODER_ARCHITECTURES

# the work of ordering a class's priors (spec/FORMAT.md §5.4: a hash per prior, then a sort), counted against
# max_parameters as this many values a prior: its key, its place and the sort's scratch, 8 bytes each
PRIOR_ORDER_VALUES = 32

# ---- the groups --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredGroup:
    """One group as an archive's metadata declares it (``params.groups[i]``), checked."""

    plan: GroupPlan
    decoder_dtype: str
    prior_dtype: str
    soft_labels: bool


def read_groups(meta: dict, num_classes: int) -> list[StoredGroup]:
    """The groups of an archive's metadata, every field checked for its JSON type and range, covering
    the classes in order. Raises: D3FormatError naming the field."""
    groups = (meta.get("params") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise D3FormatError("meta: 'params.groups' must be a non-empty list")
    out, expected = [], 0
    for i, e in enumerate(groups):
        where = f"params.groups[{i}]."
        if not isinstance(e, dict):
            raise D3FormatError(f"meta: 'params.groups[{i}]' must be an object")
        bounds = e.get("classes")
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(type(v) is int for v in bounds)
            and bounds[0] == expected
            and expected < bounds[1] <= num_classes
        ):
            raise D3FormatError(
                f"meta: '{where}classes' must be [{expected}, stop] with {expected} < stop ≤ "
                f"{num_classes} (groups follow one another from class 0)"
            )
        k = bounds[1] - bounds[0]
        top_k = meta_int(e, "label_top_k", 1, min(k - 1, MAX_TOP_K_CLASSES), where, default=None) if k > 1 else None
        if k == 1 and "label_top_k" in e:
            raise D3FormatError(f"meta: '{where}label_top_k' needs a group of at least 2 classes")
        g = GroupPlan(
            bounds[0],
            bounds[1],
            meta_int(e, "latent_dim", 1, 4096, where),
            meta_int(e, "priors_per_class", 1, 1_000_000, where),
            meta_int(e, "decoder_width", 1, 4096, where),
            meta_str(e, "decoder_architecture", DECODER_ARCHITECTURES, where, default="uniform"),
            top_k,
        )
        out.append(
            StoredGroup(
                g,
                meta_str(e, "decoder_dtype", DECODER_DTYPES, where),
                meta_str(e, "prior_dtype", PRIOR_DTYPES, where, default="float16"),
                meta_bool(e, "soft_labels", where),
            )
        )
        expected = bounds[1]
    if expected != num_classes:
        raise D3FormatError(f"meta: 'params.groups' cover {expected} classes, the dataset has {num_classes}")
    return out


def prior_values(g: GroupPlan, soft_labels: bool) -> int:
    """The values one prior of group ``g`` counts against ``max_parameters`` while an archive is drawn: its
    mean and log-variance, its order (PRIOR_ORDER_VALUES), and where it has soft labels the whole row, or
    the top-k values (F16), indices (I16) and the row's rest (F32), counted as 3 values a label and one a row."""
    labels = g.num_classes if g.label_top_k is None else 3 * g.label_top_k + 1
    return 2 * g.latent_dim + PRIOR_ORDER_VALUES + (labels if soft_labels else 0)


class StoredPriors:
    """One of a group's prior tensors (means or log-variances, (K_g, P, Z)) kept as the archive stores it, int8
    with a float16 scale per latent dimension or float16, and dequantised to float32 only where a draw picks
    (as d3codec.format.weights.read_stored would, value for value): ImageNet's 807 000 priors of 64 values take 52 MB
    so kept, 206 MB in float32.

    Raises: D3FormatError for a missing, misshapen or mistyped tensor, or one that is not finite."""

    def __init__(self, tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, int, int], dtype: str):
        self.value, self.scale = stored_tensor(
            tensors, "priors", key, shape, len(shape) - 1 if dtype == "int8" else None
        )

    def _float(self, q: torch.Tensor) -> torch.Tensor:
        return dequantise_int8(q, self.scale, -1) if self.scale is not None else q.float()

    def at(self, local: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Prior ``prior[i]`` of local class ``local[i]`` (both (B,) int64): (B, Z) float32."""
        return self._float(self.value[local, prior])

    def full(self) -> torch.Tensor:
        """All of them, (K_g, P, Z) float32."""
        return self._float(self.value)


class D3Sampler(Sampler):
    """A D3 archive's priors and decoders, loaded (see :func:`load_sampler`)."""

    def __init__(self, reader, meta: dict, device: torch.device | str = "cpu", limits=None):
        ds = meta["dataset"]
        self.num_classes, self.image_shape = len(ds["classes"]), tuple(ds["image_shape"])
        self.limits, self.version, self.device = limits or DEFAULT_LIMITS, tuple(reader.version), device
        self.groups = read_groups(meta, self.num_classes)
        self.draw_cap = default_draw_cap(reader.file_size, self.num_classes, self.image_shape)
        self.soft = all(sg.soft_labels for sg in self.groups)
        labelled = [i for i, sg in enumerate(self.groups) if sg.soft_labels]
        costs = self._check_costs()
        self.group_batch = [batch_size(c, self.limits) for c in costs]
        self.batch = max(self.group_batch)  # images a whole draw decodes at once; each group in its own batches
        self.group_of = torch.cat([torch.full((sg.plan.num_classes,), i) for i, sg in enumerate(self.groups)])
        self._orders: dict[tuple[int, int, int], torch.Tensor] = {}  # (seed, group, local class) → its prior order
        self.image_macs = [c.macs for c in costs]
        priors_t, decoder_t, labels_t = self._read_sections(reader, labelled)
        # per group: (mu, logvar: StoredPriors (K_g, P, Z), decoder, soft labels: (K_g, P, K_g), TopKLabels or None)
        self.loaded = [self._load_group(i, sg, priors_t, decoder_t, labels_t) for i, sg in enumerate(self.groups)]

    def _check_costs(self) -> list:
        """What each group's decoder costs (d3codec.format.limits.network_cost), from the archive's declared
        shapes alone (networks on the meta device), checked with the priors and soft labels against the decode
        limits. Raises: D3LimitError over a limit."""
        costs, values = [], 0
        for i, sg in enumerate(self.groups):
            g = sg.plan
            cost = network_cost(
                lambda: g.decoder(self.image_shape),
                lambda: (torch.zeros(1, g.latent_dim),),
                f"the decoder of group {i}",
            )
            costs.append(cost)
            values += cost.parameters + g.num_classes * g.priors_per_class * prior_values(g, sg.soft_labels)
        check("values", values, self.limits, "max_parameters", "the decoders, priors and soft labels")
        check("multiply-adds", max(c.macs for c in costs), self.limits, "max_macs_per_image", "decoding one image")
        return costs

    def _read_sections(self, reader, labelled: list[int]) -> tuple[dict, dict, dict]:
        """The sections ``priors``, ``decoder`` and ``prior_labels`` (where the groups ``labelled`` have soft labels)
        as tensors by name, each name checked against the groups'. Raises: D3FormatError."""
        if labelled and "prior_labels" not in reader:
            raise D3FormatError("meta says groups have soft labels but there is no 'prior_labels' section")
        if not labelled and "prior_labels" in reader:
            raise D3FormatError("section 'prior_labels' is present but no group has soft labels")

        priors_t, decoder_t = reader.read_tensors("priors"), reader.read_tensors("decoder")
        labels_t = reader.read_tensors("prior_labels") if labelled else {}
        shapes = [sg.plan.decoder_shapes(self.image_shape) for sg in self.groups]
        check_names(
            priors_t,
            set().union(
                *(
                    stored_names({"mean": (1, 1), "logvar": (1, 1)}, f"g{i}.", sg.prior_dtype)
                    for i, sg in enumerate(self.groups)
                )
            ),
            "priors",
        )
        check_names(
            decoder_t,
            set().union(*(stored_names(shapes[i], f"g{i}.", sg.decoder_dtype) for i, sg in enumerate(self.groups))),
            "decoder",
        )
        check_names(
            labels_t,
            set().union(
                *(
                    {f"g{i}"} if self.groups[i].plan.label_top_k is None else {f"g{i}.values", f"g{i}.indices"}
                    for i in labelled
                )
            ),
            "prior_labels",
        )
        return priors_t, decoder_t, labels_t

    def _load_group(self, index: int, sg: StoredGroup, priors_t: dict, decoder_t: dict, labels_t: dict) -> tuple:
        """Group ``index``'s tensors, checked: (mu, logvar: StoredPriors (K_g, P, Z), its decoder on ``self.device``,
        soft labels: (K_g, P, K_g) float32, TopKLabels or None). Raises: D3FormatError."""
        g = sg.plan
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        mu, logvar = (
            StoredPriors(priors_t, f"g{index}.{name}", (k, p, z), sg.prior_dtype) for name in ("mean", "logvar")
        )
        decoder = load_stored_module(
            lambda: g.decoder(self.image_shape), decoder_t, f"g{index}.", sg.decoder_dtype, "decoder", self.device
        )
        lab: torch.Tensor | TopKLabels | None = None
        top_k = g.label_top_k
        if sg.soft_labels and top_k is None:
            lab = read_stored(labels_t, "prior_labels", f"g{index}", (k, p, k), None)
            check_probabilities(lab, "prior_labels", f"g{index}")
        elif sg.soft_labels and top_k is not None:  # the top k of each row (spec §5.6)
            top = (k, p, top_k)
            top_values, top_indices = (
                stored_tensor(labels_t, "prior_labels", f"g{index}.{name}", top, None, (dtype,))[0]
                for name, dtype in (("values", torch.float16), ("indices", torch.int16))
            )
            lab = TopKLabels(top_values, top_indices, k, "prior_labels", f"g{index}")  # kept as stored: 4 B a label
        return mu, logvar, decoder, lab

    def class_counts(self, samples_per_class: int | None) -> list[int]:
        return [self.per_class(sg, samples_per_class) for sg in self.groups for _ in range(sg.plan.num_classes)]

    def counts(self, samples_per_class: int | None) -> tuple[int, int]:
        sizes = [(sg.plan.num_classes, self.per_class(sg, samples_per_class), sg.plan.latent_dim) for sg in self.groups]
        return sum(k * n for k, n, _ in sizes), max(k * n * z for k, n, z in sizes)

    def macs(self, samples_per_class: int | None) -> int:
        return sum(
            draw_macs(sg.plan.num_classes * self.per_class(sg, samples_per_class), m, sg.plan.latent_dim)
            for sg, m in zip(self.groups, self.image_macs)
        )

    def per_class(self, group: StoredGroup, samples_per_class: int | None) -> int:
        """Images per class a draw takes of ``group``: ``samples_per_class``, by default one per prior up to
        ``draw_cap``."""
        return samples_per_class or min(group.plan.priors_per_class, self.draw_cap)

    def group_noise(self, index: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group ``index``'s draw of ``n`` per class: the prior of each sample (K_g, N) int64 and the noise
        ε (K_g, N, Z) float32. Format 1.1: the counter-based noise of spec/FORMAT.md §5.4, keyed by local
        class and sample; 1.0: a torch CPU generator seeded with ``seed`` per group (K_g permutations, then
        ε), as d3codec 0.1 drew them."""
        g = self.groups[index].plan
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        if self.version >= (1, 1):
            order = torch.from_numpy(np.stack([noise.permutation(seed, noise.D3_PRIOR_ORDER, i, p) for i in range(k)]))
            eps = torch.from_numpy(noise.normal(seed, noise.D3_LATENT, (k, n, z)))
        else:
            gen = torch.Generator().manual_seed(seed % (1 << 64))
            order = torch.stack([torch.randperm(p, generator=gen) for _ in range(k)])  # (K_g, P)
            eps = torch.randn(k, n, z, generator=gen)
        return order[:, torch.arange(n) % p], eps  # sample j of a class: prior order[j mod P]

    def prior_order(self, seed: int, index: int, local: int) -> torch.Tensor:
        """The random order (P,) int64 of local class ``local``'s priors in group ``index`` (format 1.1)."""
        key = (seed, index, local)
        if key not in self._orders:
            if len(self._orders) >= ORDER_CACHE or (self._orders and next(iter(self._orders))[0] != seed):
                self._orders.clear()  # one seed's orders at a time: what the decode limits counted
            p = self.groups[index].plan.priors_per_class
            self._orders[key] = torch.from_numpy(noise.permutation(seed, noise.D3_PRIOR_ORDER, local, p))
        return self._orders[key]

    @torch.no_grad()
    def _decode_at(self, samples_per_class: int | None, seed: int, classes: torch.Tensor, samples: torch.Tensor):
        images = torch.empty(len(classes), *self.image_shape)
        soft = torch.zeros(len(classes), self.num_classes) if self.soft else None
        groups = self.group_of[classes]
        for index in groups.unique().tolist():
            at = (groups == index).nonzero().squeeze(1)  # the rows of this group
            g, (mu, logvar, decoder, lab) = self.groups[index].plan, self.loaded[index]
            local, j = classes[at] - g.start, samples[at]
            present, row = local.unique(return_inverse=True)  # the classes asked for, and each row's among them
            orders = torch.stack([self.prior_order(seed, index, c) for c in present.tolist()])  # (U, P)
            prior = orders[row, j % g.priors_per_class]  # sample j of a class: prior order[j mod P]
            eps = torch.from_numpy(noise.normal_at(seed, noise.D3_LATENT, local.numpy(), j.numpy(), g.latent_dim))
            latents = mu.at(local, prior) + (0.5 * logvar.at(local, prior)).exp() * eps  # (B_g, Z)
            step = self.group_batch[index]
            for lo in range(0, len(at), step):
                images[at[lo : lo + step]] = decoder(latents[lo : lo + step].to(self.device)).cpu()
            if soft is not None:
                rows = lab.rows_at(local, prior) if isinstance(lab, TopKLabels) else lab[local, prior]  # (B_g, K_g)
                soft[at, g.start : g.stop] = rows
        return images, soft

    @torch.no_grad()
    def _draw_v10(self, samples_per_class: int | None, seed: int):
        images, hard, soft = [], [], []
        for index, (sg, (mu, logvar, decoder, lab)) in enumerate(zip(self.groups, self.loaded)):
            g = sg.plan
            k, z = g.num_classes, g.latent_dim
            n = self.per_class(sg, samples_per_class)
            which, eps = self.group_noise(index, n, seed)
            pick = which.unsqueeze(-1).expand(k, n, z)
            means, logvars = mu.full(), logvar.full()
            latents = means.gather(1, pick) + (0.5 * logvars.gather(1, pick)).exp() * eps  # (K_g, N, Z)
            flat, step = latents.view(k * n, z), self.group_batch[index]
            images.append(
                torch.cat([decoder(flat[i : i + step].to(self.device)).cpu() for i in range(0, k * n, step)])
            )  # (K_g·N, C, H, W)
            hard.append(torch.arange(g.start, g.stop).repeat_interleave(n))
            if self.soft:
                assert lab is not None, "every group of a soft-labelled archive has its labels"
                rows = (
                    lab.rows(which)
                    if isinstance(lab, TopKLabels)
                    else lab.gather(1, which.unsqueeze(-1).expand(k, n, k)).reshape(k * n, k)
                )  # (K_g·N, K_g)
                full = torch.zeros(k * n, self.num_classes)
                full[:, g.start : g.stop] = rows
                soft.append(full)
        return torch.cat(images), torch.cat(hard), (torch.cat(soft) if self.soft else None)


ORDER_CACHE = 4096  # prior orders kept (a few kB each): every class of an ImageNet draw under one seed


def load_sampler(reader, meta: dict, device: torch.device | str = "cpu", limits=None) -> D3Sampler:
    """The archive's priors and decoders, ready to draw: ``sampler(samples_per_class, seed)`` →
    (images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K) float32 or None).

    Images come group by group, within a group class by class, within a class sample j = 0, 1, …;
    sample j of local class i uses prior order_i[j mod P] of a random order of its P priors, and its
    latent is μ + exp(logvar / 2)·ε. The noise depends on the seed, the local class and the sample
    only (not on the group's position), so a group expands identically alone or merged.
    ``samples_per_class`` N defaults to each group's priors per class, at most ``draw_cap``. Soft labels come only when
    every group has them (a sample's probability is zero outside its group).

    ``limits`` (d3codec.format.limits.DecodeLimits, default its defaults): the decoders' multiply-adds per
    image and every stored value are checked at load, before any tensor is allocated; each draw's
    output before it is made.
    Raises: D3FormatError when a section does not match the metadata, D3LimitError past the limits.
    """
    return D3Sampler(reader, meta, device, limits)


def decode(
    reader,
    meta: dict,
    samples_per_class: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    limits=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw ``samples_per_class`` samples per class from a D3 archive's priors and decode them; see
    :func:`load_sampler`. Raises: D3FormatError when a section does not match the metadata."""
    return load_sampler(reader, meta, device, limits)(samples_per_class, seed)


def describe_params(params: dict) -> str:
    """A D3 archive's ``meta.params`` in a few words (d3 info, and the line d3 compress ends with)."""
    groups = params["groups"]
    g = groups[0]
    labels = ", soft labels" if any(entry.get("soft_labels") for entry in groups) else ""
    counts = sorted({int(entry["priors_per_class"]) for entry in groups})  # trimmed groups may differ by one
    priors = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return (
        f"{len(groups)} subtask(s), {priors} priors per class, latent {int(g['latent_dim'])}, "
        f"{g.get('decoder_architecture', 'uniform')} decoder of width {int(g['decoder_width'])} "
        f"({g['decoder_dtype']}), {g['prior_dtype']} priors{labels}"
    )
