"""D3: distributional dataset distillation with per-class priors, a decoder, soft labels and subtasks.

After Qin, Deng & Alvarez-Melis, "Distributional Dataset Distillation with Subtask Decomposition"
(2024). The classes are split into ``subtasks`` contiguous groups (Sec. 3.3, federated
distillation); each group is distilled on its own, with its own decoder, seed and teacher, into:

- **priors**: ``priors_per_class`` diagonal Gaussians N(μ, diag exp(logvar)) per class in a
  latent space of ``latent_dim`` (Sec. 3.1);
- a **decoder** G: latent (N, Z) → image (N, C, H, W) in [0, 1] (a small upsampling ConvNet,
  :class:`d3codec.models.Decoder`), trained from scratch jointly with the priors;
- **soft labels**: one vector per prior, a teacher's softmax on the decoded prior mean over the
  group's classes (Sec. 3.4).

Objective (per iteration, per class c of the group; x̃ = G(μ + σ·ε) decoded samples of c's priors,
x real images of c, A a DSA draw shared by both, φ a ConvNet re-drawn at random each iteration as
in DM):

    L = w_mmd · MMD²_k(φ(A(x̃)), φ(A(x)))  +  w_mean · ‖mean φ(A(x)) − mean φ(A(x̃))‖²

MMD² with the RBF mixture k over bandwidths 1, 2, 4, 8, 16 is the paper's distribution term
(Eq. 6's MMD part, on penultimate features); the mean term is DM's (Zhao & Bilen 2023, Eq. 4).
Departure: the authors' matching term is trajectory matching on expert networks; on a CPU that is
too costly, so their place is taken by random-network matching. The objective is a list of
:class:`MatchingTerm` objects summed, so a trajectory-matching term (which needs expert
trajectories, a different kind of input) can be added as one more term. ``teacher_features`` adds
the same two terms on the teacher's features.

Before matching, a warm start fits the decoder and prior means to ``priors_per_class`` random real
images per class (generative latent optimisation, Bojanowski et al. 2018: latents start at the
images' PCA projections, then decoder and latents are fitted by Adam on pixel MSE under a one-cycle
schedule, :func:`fit_decoder`); this plays the part of DM's initialisation from real images, and
it is an addition of ours, not a step the paper describes; benchmarks/d3-exploration.md
measures what it buys.

Archive sections (keys per group g): ``priors`` {g{g}.mean, g{g}.logvar: (K_g, P, Z) float16, or int8
with g{g}.mean.scale, g{g}.logvar.scale (Z,) float16 per latent dimension (``prior_dtype``)},
``decoder`` {g{g}.<param>: int8 weights with g{g}.<param>.scale (out,) float16 per output channel,
or float16; 1-D parameters float16}, ``prior_labels`` {g{g}: (K_g, P, K_g) float16 probabilities},
absent when soft labels are off. The metadata's ``params.groups`` lists each group's classes and
shapes, so groups of different sizes and settings can be merged (d3codec.merge).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import noise
from ..augment import DSA
from ..budget import META_RESERVE_BYTES, archive_bound
from ..checkpoint import Checkpoint, fingerprint, weights_digest
from ..container import Section
from ..data import ClassSampler, RealData
from ..errors import D3BudgetError, D3FormatError
from ..losses import mean_embedding_loss, mmd_rbf
from ..models import ConvNet, Decoder, parameter_shapes
from ..storage import check_probabilities
from ..teacher import Teacher, train_teacher, untrained_teacher
from ..weights import (WEIGHT_DTYPES, dequantise_state, load_stored_module, quantise_int8, quantise_state,
                       read_stored)
from ..progress import progress_bar
from .base import DatasetSpec, Encoded, Encoder, Sampler, preset_config
from .registry import (TEACHER_OPTION, ArchiveKind, BuildContext, Method, Option, register_archive_kind,
                       register_method)

DECODER_WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DECODER_DTYPES = WEIGHT_DTYPES
PRIOR_DTYPES = ("float16", "int8")


@dataclass(frozen=True)
class D3Config:
    """Options of D3. Units: iterations; images per class; Adam learning rates; epochs.

    Storage (``None`` = chosen by the budget rule of :meth:`D3Encoder.plan`): ``latent_dim``,
    ``priors_per_class``, ``decoder_width``. ``decoder_share`` is the fraction of the budget the
    rule gives the decoders; ``max_decoder_width`` caps it. ``prior_dtype`` int8 stores about
    twice the priors of float16 in the same bytes (a storage choice of ours, not the paper's).
    """

    iterations: int = 2000
    init_iterations: int = 2000
    init_batch: int = 128
    init_lr_decoder: float = 3e-3
    init_lr_priors: float = 3e-2
    real_per_class: int = 128
    real_cache_per_class: int = 512
    class_chunk: int = 50
    synthetic_per_class: int = 64
    lr_decoder: float = 1e-3
    lr_priors: float = 1e-2
    init_logvar: float = -2.0
    embed_width: int = 128
    dsa: bool = True
    mmd_weight: float = 1.0
    mean_weight: float = 1.0
    teacher_features: bool = False
    soft_labels: bool = True
    label_temperature: float = 1.0
    teacher_epochs: float = 10.0
    teacher_width: int = 128
    subtasks: int = 1
    latent_dim: int | None = None
    priors_per_class: int | None = None
    decoder_width: int | None = None
    decoder_share: float = 0.5
    max_decoder_width: int | None = None
    decoder_dtype: str = "int8"
    prior_dtype: str = "int8"


PRESETS = {
    "paper": D3Config(),
    "fast": D3Config(iterations=300, init_iterations=2000, init_logvar=-4.0, real_per_class=64, synthetic_per_class=32,
                     embed_width=64, teacher_epochs=2.0, teacher_width=32),
}


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


# ---- the objective ------------------------------------------------------------------------------------------------

@dataclass
class MatchingBatch:
    """What the terms of one iteration see: a group's synthetic and real batches, after siamese DSA.

    ``synthetic`` (K_g, m, C, H, W) and ``real`` (K_g, r, C, H, W) are normalised images;
    ``extractor`` maps (N, C, H, W) to features (N, D). ``features()`` embeds both once per
    iteration, whichever terms ask (the real side without gradients).
    """

    synthetic: torch.Tensor
    real: torch.Tensor
    extractor: Callable[[torch.Tensor], torch.Tensor]
    _features: tuple[torch.Tensor, torch.Tensor] | None = None

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K_g, m, D) synthetic and (K_g, r, D) real features."""
        if self._features is None:
            k, m, r = self.synthetic.shape[0], self.synthetic.shape[1], self.real.shape[1]
            f_syn = self.extractor(self.synthetic.flatten(0, 1)).view(k, m, -1)
            with torch.no_grad():
                f_real = self.extractor(self.real.flatten(0, 1)).view(k, r, -1)
            self._features = (f_syn, f_real)
        return self._features


class MatchingTerm(Protocol):
    """One term of the objective: a scalar loss for one group's batch. A trajectory-matching term
    would hold its expert trajectories and use ``batch.synthetic`` directly."""

    def __call__(self, batch: MatchingBatch) -> torch.Tensor: ...


@dataclass
class PerClassFeatureTerm:
    """Σ_c w · loss(φ(x̃_c), φ(x_c)) for a feature loss of d3codec.losses: ``mmd_rbf`` (Qin et al.
    2024, Eq. 6, MMD part) or ``mean_embedding_loss`` (DM, Zhao & Bilen 2023, Eq. 4)."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight: float = 1.0

    def __call__(self, batch: MatchingBatch) -> torch.Tensor:
        f_syn, f_real = batch.features()
        return self.weight * sum(self.loss(f_syn[c], f_real[c]) for c in range(len(f_syn)))


# ---- the warm start ------------------------------------------------------------------------------------------------

def pca_latents(x: torch.Tensor, z: int, gen: torch.Generator) -> torch.Tensor:
    """Initial latents of generative latent optimisation (Bojanowski et al. 2018, Sec. 3.3: z from PCA).

    Args: x (N, D) float32 images flattened; z latent size.
    Returns: (N, Z) float32, the projections on the first principal axes, scaled to unit standard
    deviation overall; axes beyond min(N, D) are filled with small noise.
    """
    n, d = x.shape
    q = min(z, n, d)
    centred = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v (min(N, D), D), axes by variance
    out = 0.01 * torch.randn(n, z, generator=gen).to(x.device)
    out[:, :q] = centred @ v[:q].T  # (N, q)
    return out / out.std().clamp_min(1e-8)


def fit_decoder(decoder: nn.Module, latents: nn.Parameter, targets: torch.Tensor, cfg: "D3Config",
                gen: torch.Generator, desc: str = "D3 warm start", progress: bool = True) -> float:
    """Fit the decoder and the latents so that decoder(latents) ≈ targets (GLO).

    Adam with a one-cycle schedule peaking at ``init_lr_decoder`` / ``init_lr_priors``, batches of
    ``init_batch`` images, ``init_iterations`` steps, mean squared error in pixel space.

    Args: latents (..., Z) float32 Parameter holding N latents; targets (N, C, H, W) float32 in [0, 1].
    Returns: the last batch's loss.
    """
    opt = torch.optim.Adam([{"params": decoder.parameters(), "lr": cfg.init_lr_decoder},
                            {"params": [latents], "lr": cfg.init_lr_priors}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [cfg.init_lr_decoder, cfg.init_lr_priors],
                                                total_steps=cfg.init_iterations)
    flat = latents.view(-1, latents.shape[-1])  # (N, Z)
    n, batch, loss = len(targets), min(len(targets), cfg.init_batch), torch.tensor(float("nan"))
    for _ in progress_bar(range(cfg.init_iterations), desc=desc, enabled=progress, unit="it"):
        pick = torch.randperm(n, generator=gen)[:batch].to(targets.device)
        loss = F.mse_loss(decoder(flat[pick]), targets[pick])  # (B, C, H, W) against (B, C, H, W)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


# ---- the plan -----------------------------------------------------------------------------------------------------

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


def group_entry(g: GroupPlan, cfg: "D3Config", stats: dict | None = None) -> dict:
    """The metadata entry of one group (``params.groups[i]``)."""
    return {"classes": [g.start, g.stop], "latent_dim": g.latent_dim, "priors_per_class": g.priors_per_class,
            "decoder_width": g.decoder_width, "decoder_dtype": cfg.decoder_dtype, "prior_dtype": cfg.prior_dtype,
            "soft_labels": cfg.soft_labels, "stats": stats or {}}


def group_tensors(g: GroupPlan, index: int, image_shape, cfg: "D3Config", priors=None,
                  decoder_state=None, labels=None) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors of group ``index`` by section name; zeros of the right shapes where contents are not given."""
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


# ---- the encoder ----------------------------------------------------------------------------------------------------

class D3Encoder(Encoder):
    """D3 distillation. ``D3Encoder(PRESETS["fast"])`` or any :class:`D3Config`.

    Args:
        teacher: gives the soft labels and teacher features (trained per subtask if None).
        checkpoint: each subtask (group) ``i`` saves its matching state to ``STEM.g{i}.SUFFIX`` at least
            ``checkpoint_seconds`` apart and at its end (priors, decoder, the teacher it trained, Adam,
            random states; d3codec.checkpoint), and resumes from it; a finished group is not distilled
            again. The files are deleted once the archive is written. None: no checkpoint.
    """

    method = "d3"
    presets = PRESETS

    def __init__(self, config: D3Config = PRESETS["fast"], teacher: Teacher | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_seconds: float = 300.0):
        if config.decoder_dtype not in DECODER_DTYPES:
            raise ValueError(f"decoder dtype must be one of {DECODER_DTYPES}, not {config.decoder_dtype!r}")
        if config.prior_dtype not in PRIOR_DTYPES:
            raise ValueError(f"prior dtype must be one of {PRIOR_DTYPES}, not {config.prior_dtype!r}")
        for name in ("real_per_class", "synthetic_per_class", "embed_width", "class_chunk", "real_cache_per_class",
                     "subtasks", "teacher_width"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")
        self.config = config
        self.teacher = teacher
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds

    @classmethod
    def from_options(cls, preset: str = "fast", teacher: Teacher | None = None, checkpoint=None,
                     checkpoint_seconds: float = 300.0, **overrides) -> "D3Encoder":
        return cls(preset_config(PRESETS, preset, overrides), teacher, checkpoint, checkpoint_seconds)

    def group_checkpoint(self, index: int) -> Path | None:
        """Where group ``index`` checkpoints (None without a checkpoint)."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.with_name(f"{self.checkpoint.stem}.g{index}{self.checkpoint.suffix}")

    def checkpoint_files(self) -> list[Path]:
        if self.checkpoint is None:
            return []
        stem, suffix = self.checkpoint.stem, self.checkpoint.suffix
        return sorted(p for p in self.checkpoint.parent.glob(f"{stem}.g*{suffix}")
                      if p.name[len(stem) + 2:len(p.name) - len(suffix)].isdigit())

    def remove_checkpoints(self, groups: int) -> None:
        for index in range(groups):
            if (path := self.group_checkpoint(index)) is not None:
                path.unlink(missing_ok=True)

    def method_meta(self, groups: list[dict]) -> dict:
        return {"groups": groups, "config": asdict(self.config)}

    def plan(self, spec: DatasetSpec, budget: int, meta_for, real: RealData | None = None) -> D3Plan:
        """Shapes that fill ``budget`` bytes, by this rule (each step overridable by a config field):

        1. classes split into ``subtasks`` contiguous groups;
        2. latent_dim 32 for images up to 32 pixels a side, else 64;
        3. decoder width: the largest of DECODER_WIDTHS (up to ``max_decoder_width``: 64 for
           images up to 32 pixels, else 256) whose decoders take at most ``decoder_share`` of
           the budget; the smallest width where none does;
        4. priors per class: the most whose exact archive bound (compression off, metadata
           reserve included) fits the budget.

        Raises: D3BudgetError, with the smallest workable budget, when one prior per class with
        the narrowest decoder does not fit.
        """
        cfg, k, shape = self.config, spec.num_classes, spec.image_shape
        ranges = split_classes(k, cfg.subtasks)
        side = max(shape[1:])
        z = cfg.latent_dim or (32 if side <= 32 else 64)
        cap = cfg.max_decoder_width or (64 if side <= 32 else 256)

        def groups_for(width: int, priors: int) -> list[GroupPlan]:
            return [GroupPlan(a, b, z, priors, width) for a, b in ranges]

        def bound(groups: list[GroupPlan]) -> int:
            entries = [group_entry(g, cfg, {"distill_seconds": 0.0, "teacher_accuracy": 0.0, "final_loss": 0.0})
                       for g in groups]
            parts = [group_tensors(g, i, shape, cfg) for i, g in enumerate(groups)]
            sections = [Section.json("meta", meta_for(self.method_meta(entries)))] + sections_of(parts)
            return archive_bound(sections, META_RESERVE_BYTES + 64 * len(groups))

        def decoder_bytes(width: int) -> int:
            n = sum(math.prod(s) for s in decoder_shapes(z, shape, width).values())
            return len(ranges) * n * (1 if cfg.decoder_dtype == "int8" else 2)

        if cfg.decoder_width is not None:
            width = cfg.decoder_width
        else:
            fitting = [w for w in DECODER_WIDTHS if w <= cap and decoder_bytes(w) <= cfg.decoder_share * budget]
            width = fitting[-1] if fitting else DECODER_WIDTHS[0]
        smallest = bound(groups_for(width, 1))
        if smallest > budget:
            raise D3BudgetError(
                f"a budget of {budget} bytes cannot hold {len(ranges)} decoder(s) of width {width} and one prior per "
                f"class; the smallest budget that works is {smallest} bytes (--budget {smallest})", min_budget=smallest)
        if cfg.priors_per_class is not None:
            priors = cfg.priors_per_class
            needed = bound(groups_for(width, priors))
            if needed > budget:
                raise D3BudgetError(f"{priors} priors per class need {needed} bytes, over the budget of {budget}: "
                                    f"raise --budget to {needed} or lower --priors-per-class", min_budget=needed)
        else:
            lo, hi = 1, max(1, budget // (k * z * 4)) + 1
            while lo < hi:  # the largest prior count whose bound fits
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if bound(groups_for(width, mid)) <= budget else (lo, mid - 1)
            priors = lo
        groups = groups_for(width, priors)
        return D3Plan(tuple(groups), cfg.decoder_dtype, cfg.prior_dtype, cfg.soft_labels, bound(groups), budget)

    def distill(self, real: RealData, plan: D3Plan, *, device: torch.device, seed: int,
                progress: bool = True) -> Encoded:
        """Distil every group in turn, in this process (d3codec.federated spreads them over ranks)."""
        parts, entries = [], []
        for index, group in enumerate(plan.groups):
            tensors, entry = self.distill_group(real, plan, index, device=device, seed=seed, progress=progress)
            parts.append(tensors)
            entries.append(entry)
        return self.encoded(parts, entries)

    @property
    def kept_state(self) -> Path | None:
        return self.group_checkpoint(0)

    def encoded(self, parts: list[dict], entries: list[dict]) -> Encoded:
        seconds = sum(e["stats"].get("distill_seconds", 0.0) for e in entries)
        stats = {"distill_seconds": round(seconds, 3)}
        resumed = [e["stats"]["resumed_at_iteration"] for e in entries if "resumed_at_iteration" in e["stats"]]
        if resumed:
            stats["resumed_at_iteration"] = min(resumed)
        return Encoded(sections_of(parts), self.method_meta(entries), stats,
                       cleanup=lambda: self.remove_checkpoints(len(entries)))

    def group_fingerprint(self, real: RealData, plan: D3Plan, index: int, seed: int, device: torch.device) -> str:
        """What group ``index``'s result depends on, hashed: every option, its plan, the seed, the
        data, the device type and a given teacher's weights."""
        given = None
        if self.teacher is not None:
            given = [weights_digest(self.teacher.net.state_dict()), self.teacher.classes]
        return fingerprint(asdict(self.config), asdict(plan.groups[index]), index, seed, real.name, list(real.classes),
                           len(real.train_targets), device.type, given)

    def distill_group(self, real: RealData, plan: D3Plan, index: int, *, device: torch.device, seed: int,
                      progress: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Distil group ``index`` alone. Its result depends only on the data, the plan and (seed, index).

        Returns: (tensors by section, keyed g{index}.*; the group's metadata entry).
        """
        cfg, g = self.config, plan.groups[index]
        classes = list(range(g.start, g.stop))
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        c, h, w = real.image_shape
        group_seed = seed * 1_000_003 + index
        gen = torch.Generator().manual_seed(group_seed)
        torch.manual_seed(group_seed)  # network initialisations draw from the global generator
        start = time.time()
        mean = torch.tensor(real.mean, device=device).view(1, c, 1, 1)
        std = torch.tensor(real.std, device=device).view(1, c, 1, 1)
        normalise = lambda x: (x - mean) / std  # noqa: E731  pixel space → the networks' input

        ckpt = None
        if (path := self.group_checkpoint(index)) is not None:
            ckpt = Checkpoint(path, "d3-group", self.group_fingerprint(real, plan, index, seed, device),
                              self.checkpoint_seconds)
        resuming = ckpt is not None and ckpt.path.is_file()  # then the warm start and the teacher are in it

        teacher, teacher_acc = None, None
        own_teacher = (cfg.soft_labels or cfg.teacher_features) and self.teacher is None
        if cfg.soft_labels or cfg.teacher_features:
            if self.teacher is not None:
                teacher = self.teacher.restricted(classes)
            elif resuming:  # a network of the teacher's shape, its weights loaded from the checkpoint below
                teacher = untrained_teacher(real.image_shape, classes, cfg.teacher_width, device)
            else:
                teacher, teacher_acc = train_teacher(real, classes, epochs=cfg.teacher_epochs, width=cfg.teacher_width,
                                                     device=device, seed=group_seed, progress=progress)

        decoder = Decoder(z, real.image_shape, g.decoder_width).to(device)
        prior_mean = torch.nn.Parameter(0.1 * torch.randn(k, p, z, generator=gen).to(device))  # (K_g, P, Z)
        prior_logvar = torch.nn.Parameter(torch.full((k, p, z), float(cfg.init_logvar), device=device))

        # warm start: each prior mean decodes to one random real image of its class (a resumed run has
        # its result in the checkpoint)
        if not resuming:
            targets = torch.stack([real.sample_class(cl, p, gen) for cl in classes]).to(device)  # (K_g, P, C, H, W)
            if cfg.init_iterations > 0:
                with torch.no_grad():
                    prior_mean.copy_(pca_latents(targets.view(k * p, -1), z, gen).view(k, p, z))
                fit_decoder(decoder, prior_mean, targets.view(k * p, c, h, w), cfg, gen,
                            desc=f"D3 warm start {index + 1}/{len(plan.groups)}", progress=progress)
            del targets

        terms: list[MatchingTerm] = [PerClassFeatureTerm(mmd_rbf, cfg.mmd_weight),
                                     PerClassFeatureTerm(mean_embedding_loss, cfg.mean_weight)]
        opt = torch.optim.Adam([{"params": decoder.parameters(), "lr": cfg.lr_decoder},
                                {"params": [prior_mean, prior_logvar], "lr": cfg.lr_priors}])
        dsa = DSA() if cfg.dsa else None
        # the real images cached for datasets on disk come from their own generator, so that a resumed
        # run (which skips the warm start's draws) caches the same ones
        cache_rng = torch.Generator().manual_seed(group_seed + 7919)
        sampler = ClassSampler(real, classes, cfg.real_cache_per_class, cache_rng)
        m, loss_value, first = cfg.synthetic_per_class, float("nan"), 0
        learned = {"prior_mean": prior_mean, "prior_logvar": prior_logvar}
        modules = {"decoder": decoder, **({"teacher": teacher.net} if own_teacher else {})}
        if resuming:
            first, saved = ckpt.resume({"adam": opt}, gen, device, learned, modules)
            if own_teacher:
                teacher.net.eval().requires_grad_(False)
            loss_value = float(saved.get("loss", torch.tensor(float("nan"))))
            if "teacher_accuracy" in saved:
                teacher_acc = float(saved["teacher_accuracy"])
            start -= float(saved.get("seconds", torch.tensor(0.0)))  # the seconds spent before the kill count

        def save(iteration: int) -> None:
            state = {**learned, "loss": torch.tensor(loss_value), "seconds": torch.tensor(time.time() - start)}
            if teacher_acc is not None:
                state["teacher_accuracy"] = torch.tensor(teacher_acc)
            ckpt.save(iteration, state, {"adam": opt}, gen, modules)

        if ckpt is not None and not resuming:  # the warm start and the teacher are saved before matching
            save(0)
        for it in progress_bar(range(first, cfg.iterations), desc=f"D3 group {index + 1}/{len(plan.groups)}",
                       enabled=progress, unit="it", initial=first, total=cfg.iterations):
            net = ConvNet(c, k, h, width=cfg.embed_width).to(device).requires_grad_(False)
            extractors = [net.embed] + ([teacher.net.embed] if cfg.teacher_features else [])
            opt.zero_grad(set_to_none=True)
            loss_value = 0.0
            for lo in range(0, k, cfg.class_chunk):  # the loss is a sum over classes: accumulate in chunks
                chunk = range(lo, min(k, lo + cfg.class_chunk))
                n = len(chunk)
                which = torch.randint(p, (n, m), generator=gen).to(device)  # (n, m) prior of each sample
                eps = torch.randn(n, m, z, generator=gen).to(device)
                index_z = which.unsqueeze(-1).expand(n, m, z)
                mu = prior_mean[lo:lo + n].gather(1, index_z)
                logvar = prior_logvar[lo:lo + n].gather(1, index_z)
                latents = mu + (0.5 * logvar).exp() * eps  # (n, m, Z), reparameterised
                synthetic = normalise(decoder(latents.view(n * m, z))).view(n, m, c, h, w)
                x_real = normalise(torch.stack([sampler.sample(i, cfg.real_per_class, gen) for i in chunk]).to(device))
                if dsa is not None:  # one draw per class, applied to both: siamese augmentation
                    params = [dsa.sample(gen) for _ in chunk]
                    synthetic = torch.stack([dsa.apply(synthetic[j], params[j]) for j in range(n)])
                    x_real = torch.stack([dsa.apply(x_real[j], params[j]) for j in range(n)])
                batches = [MatchingBatch(synthetic, x_real, extractor) for extractor in extractors]
                loss = sum(term(batch) for batch in batches for term in terms)
                loss.backward()
                loss_value += loss.detach().item()
            opt.step()
            if ckpt is not None and ckpt.due(it + 1, cfg.iterations):
                save(it + 1)

        # what the archive will hold: the priors and the decoder as stored, so soft labels see them
        stored = quantise_state(decoder.state_dict(), "", cfg.decoder_dtype)
        shapes = decoder_shapes(z, real.image_shape, g.decoder_width)
        decoder.load_state_dict(dequantise_state(stored, "", shapes, cfg.decoder_dtype, "decoder"))
        priors = dequantise_priors(quantise_priors(prior_mean, prior_logvar, "", cfg.prior_dtype), "", (k, p, z),
                                   cfg.prior_dtype)  # (K_g, P, Z) each
        labels = None
        if cfg.soft_labels:
            with torch.no_grad():
                means = decoder(priors[0].to(device).view(k * p, z))  # (K_g·P, C, H, W)
                labels = teacher.probabilities(normalise(means), cfg.label_temperature).view(k, p, k).cpu()
        stats = {"distill_seconds": round(time.time() - start, 3)}
        if cfg.iterations > 0:  # no matching iterations (warm start only): no loss to report
            stats["final_loss"] = round(loss_value, 6)
        if first:
            stats["resumed_at_iteration"] = first
        if teacher_acc is not None:
            stats["teacher_accuracy"] = round(teacher_acc, 4)
        tensors = group_tensors(g, index, real.image_shape, cfg, priors,
                                {n: v.cpu() for n, v in decoder.state_dict().items()}, labels)
        return tensors, group_entry(g, cfg, stats)


# ---- decoding -----------------------------------------------------------------------------------------------------

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
    from ..archive import meta_bool, meta_int, meta_str

    groups = (meta.get("params") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise D3FormatError("meta: 'params.groups' must be a non-empty list")
    out, expected = [], 0
    for i, e in enumerate(groups):
        where = f"params.groups[{i}]."
        if not isinstance(e, dict):
            raise D3FormatError(f"meta: 'params.groups[{i}]' must be an object")
        bounds = e.get("classes")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(type(v) is int for v in bounds)
                and bounds[0] == expected and expected < bounds[1] <= num_classes):
            raise D3FormatError(f"meta: '{where}classes' must be [{expected}, stop] with {expected} < stop ≤ "
                                f"{num_classes} (groups follow one another from class 0)")
        g = GroupPlan(bounds[0], bounds[1], meta_int(e, "latent_dim", 1, 4096, where),
                      meta_int(e, "priors_per_class", 1, 1_000_000, where), meta_int(e, "decoder_width", 1, 4096, where))
        out.append(StoredGroup(g, meta_str(e, "decoder_dtype", DECODER_DTYPES, where),
                               meta_str(e, "prior_dtype", PRIOR_DTYPES, where, default="float16"),
                               meta_bool(e, "soft_labels", where)))
        expected = bounds[1]
    if expected != num_classes:
        raise D3FormatError(f"meta: 'params.groups' cover {expected} classes, the dataset has {num_classes}")
    return out


class D3Sampler(Sampler):
    """A D3 archive's priors and decoders, loaded (see :func:`load_sampler`)."""

    def __init__(self, reader, meta: dict, device: torch.device | str = "cpu", limits=None):
        from ..limits import DEFAULT_LIMITS, batch_size, check, network_cost
        from ..weights import check_names, stored_names

        ds = meta["dataset"]
        self.num_classes, self.image_shape = len(ds["classes"]), tuple(ds["image_shape"])
        self.limits, self.version, self.device = limits or DEFAULT_LIMITS, tuple(reader.version), device
        self.groups = read_groups(meta, self.num_classes)
        self.soft = all(sg.soft_labels for sg in self.groups)
        labelled = [i for i, sg in enumerate(self.groups) if sg.soft_labels]
        # what the archive costs, from its declared shapes alone (networks on the meta device)
        costs, values = [], 0
        for i, sg in enumerate(self.groups):
            g = sg.plan
            cost = network_cost(lambda: Decoder(g.latent_dim, self.image_shape, g.decoder_width),
                                lambda: (torch.zeros(1, g.latent_dim),), f"the decoder of group {i}")
            costs.append(cost)
            k, p = g.num_classes, g.priors_per_class
            values += cost.parameters + 2 * k * p * g.latent_dim + (k * p * k if sg.soft_labels else 0)
        check("values", values, self.limits, "max_parameters", "the decoders, priors and soft labels")
        check("multiply-adds", max(c.macs for c in costs), self.limits, "max_macs_per_image", "decoding one image")
        self.batch = [batch_size(c, self.limits) for c in costs]
        self.image_macs = [c.macs for c in costs]
        if labelled and "prior_labels" not in reader:
            raise D3FormatError("meta says groups have soft labels but there is no 'prior_labels' section")
        if not labelled and "prior_labels" in reader:
            raise D3FormatError("section 'prior_labels' is present but no group has soft labels")

        priors_t, decoder_t = reader.read_tensors("priors"), reader.read_tensors("decoder")
        labels_t = reader.read_tensors("prior_labels") if labelled else {}
        shapes = [decoder_shapes(sg.plan.latent_dim, self.image_shape, sg.plan.decoder_width) for sg in self.groups]
        check_names(priors_t, set().union(*(stored_names({"mean": (1, 1), "logvar": (1, 1)}, f"g{i}.", sg.prior_dtype)
                                            for i, sg in enumerate(self.groups))), "priors")
        check_names(decoder_t, set().union(*(stored_names(shapes[i], f"g{i}.", sg.decoder_dtype)
                                             for i, sg in enumerate(self.groups))), "decoder")
        check_names(labels_t, {f"g{i}" for i in labelled}, "prior_labels")
        self.loaded = []  # per group: (mu, logvar (K_g, P, Z), decoder, soft labels (K_g, P, K_g) or None)
        for index, sg in enumerate(self.groups):
            g = sg.plan
            k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
            mu, logvar = dequantise_priors(priors_t, f"g{index}.", (k, p, z), sg.prior_dtype)
            decoder = load_stored_module(lambda: Decoder(z, self.image_shape, g.decoder_width), decoder_t,
                                         f"g{index}.", sg.decoder_dtype, "decoder", device)
            lab = None
            if sg.soft_labels:
                lab = read_stored(labels_t, "prior_labels", f"g{index}", (k, p, k), None)
                check_probabilities(lab, "prior_labels", f"g{index}")
            self.loaded.append((mu, logvar, decoder, lab))

    def counts(self, samples_per_class: int | None) -> tuple[int, int]:
        sizes = [(sg.plan.num_classes, samples_per_class or sg.plan.priors_per_class, sg.plan.latent_dim)
                 for sg in self.groups]
        return sum(k * n for k, n, _ in sizes), max(k * n * z for k, n, z in sizes)

    def macs(self, samples_per_class: int | None) -> int:
        from ..limits import draw_macs

        return sum(draw_macs(sg.plan.num_classes * (samples_per_class or sg.plan.priors_per_class), m)
                   for sg, m in zip(self.groups, self.image_macs))

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

    @torch.no_grad()
    def _draw(self, samples_per_class: int | None, seed: int):
        images, hard, soft = [], [], []
        for index, (sg, (mu, logvar, decoder, lab)) in enumerate(zip(self.groups, self.loaded)):
            g = sg.plan
            k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
            n = samples_per_class or p
            which, eps = self.group_noise(index, n, seed)
            pick = which.unsqueeze(-1).expand(k, n, z)
            latents = mu.gather(1, pick) + (0.5 * logvar.gather(1, pick)).exp() * eps  # (K_g, N, Z)
            flat, step = latents.view(k * n, z), self.batch[index]
            images.append(torch.cat([decoder(flat[i:i + step].to(self.device)).cpu()
                                     for i in range(0, k * n, step)]))  # (K_g·N, C, H, W)
            hard.append(torch.arange(g.start, g.stop).repeat_interleave(n))
            if self.soft:
                rows = lab.gather(1, which.unsqueeze(-1).expand(k, n, k)).reshape(k * n, k)  # (K_g·N, K_g)
                full = torch.zeros(k * n, self.num_classes)
                full[:, g.start:g.stop] = rows
                soft.append(full)
        return torch.cat(images), torch.cat(hard), (torch.cat(soft) if self.soft else None)


def load_sampler(reader, meta: dict, device: torch.device | str = "cpu", limits=None) -> D3Sampler:
    """The archive's priors and decoders, ready to draw: ``sampler(samples_per_class, seed)`` →
    (images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K) float32 or None).

    Images come group by group, within a group class by class, within a class sample j = 0, 1, …;
    sample j of local class i uses prior order_i[j mod P] of a random order of its P priors, and its
    latent is μ + exp(logvar / 2)·ε. The noise depends on the seed, the local class and the sample
    only (not on the group's position), so a group expands identically alone or merged.
    ``samples_per_class`` N defaults to each group's priors per class. Soft labels come only when
    every group has them (a sample's probability is zero outside its group).

    ``limits`` (d3codec.limits.DecodeLimits, default its defaults): the decoders' multiply-adds per
    image and every stored value are checked at load, before any tensor is allocated; each draw's
    output before it is made.
    Raises: D3FormatError when a section does not match the metadata, D3LimitError past the limits.
    """
    return D3Sampler(reader, meta, device, limits)


def decode(reader, meta: dict, samples_per_class: int | None = None, seed: int = 0,
           device: torch.device | str = "cpu", limits=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw ``samples_per_class`` samples per class from a D3 archive's priors and decode them; see
    :func:`load_sampler`. Raises: D3FormatError when a section does not match the metadata."""
    return load_sampler(reader, meta, device, limits)(samples_per_class, seed)


def build(method: Method, preset: str, options: dict, context: BuildContext) -> D3Encoder:
    """The D3 encoder of ``preset`` with ``options``; ``options["teacher"]``, a file, is loaded on the context's device."""
    from ..teacher import load_teacher

    teacher_file = options.pop("teacher", None)
    teacher = load_teacher(teacher_file, context.image_shape, context.num_classes, context.device) \
        if teacher_file is not None else None
    return D3Encoder.from_options(preset, teacher, context.checkpoint_or(".ckpt.safetensors"), **options)


def describe_params(params: dict) -> str:
    """A D3 archive's ``meta.params`` in a few words (d3 info, and the line d3 compress ends with)."""
    groups = params["groups"]
    g = groups[0]
    labels = ", soft labels" if any(entry.get("soft_labels") for entry in groups) else ""
    return (f"{len(groups)} subtask(s), {int(g['priors_per_class'])} priors per class, latent {int(g['latent_dim'])}, "
            f"decoder width {int(g['decoder_width'])} ({g['decoder_dtype']}), {g['prior_dtype']} priors{labels}")


register_archive_kind(ArchiveKind("d3", {"meta": True, "priors": True, "decoder": True, "prior_labels": True},
                                  load_sampler=load_sampler, describe=describe_params))
register_method(Method(
    "d3", "Distributional distillation (Qin et al. 2024): per-class Gaussian priors, a small decoder and a soft "
    "label per prior, in federated subtasks.", "d3", D3Encoder,
    (Option("--subtasks", "subtasks", "Split the classes into K groups, each with its own decoder."),
     Option("--latent-dim", "latent_dim", "Latent size (default by the budget rule: 32 up to 32 pixels a side, "
            "else 64).", high=4096),
     Option("--priors-per-class", "priors_per_class", "Priors per class (default: as many as the budget holds).",
            high=1_000_000),
     Option("--decoder-width", "decoder_width", "Decoder channels (default: the widest that takes at most "
            "decoder_share of the budget).", high=4096),
     Option("--decoder-dtype", "decoder_dtype", "How decoder weights are stored.", kind="choice",
            choices=("int8", "float16")),
     Option("--prior-dtype", "prior_dtype", "How prior means and log-variances are stored (int8: about twice the "
            "priors).", kind="choice", choices=("int8", "float16")),
     Option("--soft-labels", "soft_labels", "Store a teacher's soft label per prior.", kind="flag"),
     TEACHER_OPTION),
    build=build, subtasks=True,
    hints={"--images-per-class": "use --priors-per-class"},
    checkpoint_help="each subtask i checkpoints to this name with .g{i} before its suffix (default: "
    "OUTPUT.ckpt.g{i}.safetensors, written every 5 minutes, deleted once the archive is written); a killed encode "
    "resumes by running the same command again"))
