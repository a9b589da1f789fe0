"""Method ``d3``: distributional dataset distillation with per-class priors, a decoder, soft labels and subtasks.

After Qin, Deng & Alvarez-Melis, "Distributional Dataset Distillation with Subtask Decomposition"
(2024). The classes are split into ``subtasks`` contiguous groups (Sec. 3.3, federated
distillation); each group is distilled on its own, with its own decoder, seed and teacher, into:

- **priors**: ``priors_per_class`` diagonal Gaussians N(μ, diag exp(logvar)) per class in a
  latent space of ``latent_dim`` (Sec. 3.1);
- a **decoder** G: latent (N, Z) → image (N, C, H, W) in [0, 1] (a small upsampling ConvNet,
  :class:`d3codec.nn.models.Decoder`), trained from scratch jointly with the priors;
- **soft labels**: one vector per prior, a teacher's softmax on the decoded prior mean over the
  group's classes (Sec. 3.4).

Objective (per iteration, per class c of the group; x̃ = G(μ + σ·ε) decoded samples of c's priors,
x real images of c, A a DSA draw shared by both, φ a ConvNet re-drawn at random each iteration as
in DM):

    L = w_mmd · MMD²_k(φ(A(x̃)), φ(A(x)))  +  w_mean · ‖mean φ(A(x)) − mean φ(A(x̃))‖²

MMD² with the RBF mixture k over bandwidths 1, 2, 4, 8, 16 is the paper's distribution term
(Eq. 6's MMD part, on penultimate features); the mean term is DM's (Zhao & Bilen 2023, Eq. 4).
Departure: the authors' matching term is trajectory matching on expert networks; on a CPU that is
too costly, so their place is taken by random-network matching (d3codec.methods.matching, the loop DM
and D2M share). The objective is a list of matching terms summed, so a trajectory-matching term
(which needs expert trajectories, a different kind of input) can be added as one more term. ``teacher_features`` adds
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
shapes, so groups of different sizes and settings can be merged (merge.py); layout.py defines them.
"""


from __future__ import annotations

import copy
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from d3codec.data.real import ClassSampler, Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.checkpoint import weights_digest
from d3codec.encode.interface import DatasetSpec, Encoded, Overrun, Subtask, SubtaskEncoder, preset_config
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.errors import D3BudgetError
from d3codec.format.accounting import META_RESERVE_BYTES, archive_bound, largest_fitting
from d3codec.format.container import Section
from d3codec.format.limits import network_cost
from d3codec.format.weights import dequantise_state, quantise_state
from d3codec.methods.d3 import fill
from d3codec.methods.d3.layout import (
    DECODER_DTYPES,
    DECODER_WIDTHS,
    MAX_TOP_K_CLASSES,
    PRIOR_DTYPES,
    D3Plan,
    GroupPlan,
    decoder_shapes,
    dequantise_priors,
    first_priors,
    group_entry,
    group_tensors,
    quantise_priors,
    sections_of,
    split_classes,
    trimmed_priors,
)
from d3codec.methods.d3.merge import Part, combine_groups, rename_group
from d3codec.methods.matching import (
    DistributionMatcher,
    FeatureTerm,
    matching_experts,
    matching_terms,
    memory_sized_chunk,
)
from d3codec.nn.augment import DSA
from d3codec.nn.experts import ExpertPool
from d3codec.nn.losses import mean_embedding_loss, mmd_rbf
from d3codec.nn.models import (
    DECODER_ARCHITECTURES,
    ConvNet,
    Decoder,
    activation_memory,
    decoder_stage_widths,
    upsampling_geometry,
    worth_compiling,
)
from d3codec.nn.teacher import Teacher, save_teacher, train_teacher, untrained_teacher
from d3codec.util.progress import Stage, Stages, progress_bar


@dataclass(frozen=True)
class D3Config:
    """Options of D3. Units: iterations; images per class; Adam learning rates; epochs.

    Storage (``None`` = chosen by the budget rule of :meth:`D3Encoder.plan`): ``latent_dim``,
    ``priors_per_class``, ``decoder_width``. ``decoder_share`` is the fraction of the budget the
    rule gives the decoders; ``max_decoder_width`` caps it. ``prior_dtype`` int8 stores about
    twice the priors of float16 in the same bytes (a storage choice of ours, not the paper's).
    """

    iterations: int = 2000  # matching iterations, each with a fresh random network
    init_iterations: int = 2000  # warm-start steps fitting decoder and prior means to real images (0: none)
    init_batch: int = 128  # images per warm-start step
    init_lr_decoder: float = 3e-3  # peak Adam learning rate of the decoder in the warm start (one-cycle)
    init_lr_priors: float = 3e-2  # peak Adam learning rate of the prior means in the warm start
    real_per_class: int = 128  # real images per class and matching iteration
    real_cache_per_class: int = 512  # real images per class kept in memory for datasets on disk
    class_chunk: int = 50  # classes per forward pass at most (memory, not the objective; fewer where memory is short)
    synthetic_per_class: int = 64  # decoded samples per class and iteration
    lr_decoder: float = 1e-3  # Adam learning rate of the decoder in matching
    lr_priors: float = 1e-2  # Adam learning rate of the priors in matching
    init_logvar: float = -2.0  # the priors' log-variance at the start
    embed_width: int = 128  # channels of the random ConvNet-3 that embeds both sides
    dsa: bool = True  # siamese DSA augmentation of both sides
    mmd_weight: float = 1.0  # weight of the MMD term (Qin et al. 2024, Eq. 6)
    mean_weight: float = 1.0  # weight of DM's mean-embedding term
    teacher_features: bool = False  # also match on the teacher's features
    soft_labels: bool = True  # store a teacher's soft label per prior
    label_top_k: int | None = None  # keep each soft label's k largest probabilities (None: the rule; 0: whole rows)
    label_temperature: float = 1.0  # softmax temperature of the stored soft labels
    teacher_epochs: float = 10.0  # epochs of a teacher trained here
    teacher_width: int = 128  # channels of a teacher trained here (ConvNet-3)
    subtasks: int = 1  # contiguous class groups, each distilled alone (Sec. 3.3)
    latent_dim: int | None = None  # latent size (None: the budget rule)
    priors_per_class: int | None = None  # priors per class (None: as many as the budget holds)
    decoder_width: int | None = None  # decoder channels (None: the budget rule)
    decoder_architecture: str | None = None  # uniform or tapered (models.Decoder; None: uniform up to 32 pixels)
    decoder_share: float = 0.5  # the budget share the rule gives the decoders
    max_decoder_width: int | None = None  # the rule's widest decoder (None: 64 up to 32 pixels a side, else 256)
    decoder_dtype: str = "int8"  # how decoder weights are stored: int8 or float16
    prior_dtype: str = "int8"  # how priors are stored: int8 or float16
    fill: str = "compressed"  # "compressed": plan priors on their estimated zstd size (trimmed to fit); "raw": raw size
    matching: str = "dm"  # embed with random networks (dm) or DANCE's middle encoders of an expert pool (dance)
    expert_count: int = 3  # dance: experts in the pool (ConvNet-3s of embed_width; d3codec.nn.experts)
    expert_epochs: int = 2  # dance: each expert's epochs over the real training set
    calibration_weight: float = 1.0  # dance: weight of the trained expert's cross-entropy on decoded samples


# The stored/raw size the plan expects of priors and soft labels together (zstd, spec §5.6 storage): trained
# int8 priors with whole float16 label rows on Fashion-MNIST stored at 0.68 (smoke preset, 217 priors a class),
# 0.78 (fast preset, 217 a class) and 0.79 (smoke, 14 a class). The plan aims at the prior count whose estimated
# size fits and the writer drops the priors that do not (D3Encoder.prior_trimmed): an estimate on the low side
# costs a few trimmed priors, one on the high side unused bytes. Extra priors cost little: matching draws
# synthetic_per_class samples a class whatever the count, and the warm start a fixed number of batches.
PRIOR_STORED_RATIO = 0.7


def plan_priors(bound: Callable[[int], int], budget: int, fixed: int | None, fill: str,
                least_bytes: int) -> tuple[int, int]:
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
            raise D3BudgetError(f"{fixed} priors per class need about {needed} bytes, over the budget of {budget}: "
                                "lower --priors-per-class", min_budget=needed)
        needed = bound(fixed)
        if needed > budget:
            raise D3BudgetError(f"{fixed} priors per class need {needed} bytes, over the budget of {budget}: "
                                f"raise --budget to {needed} or lower --priors-per-class", min_budget=needed)
        return fixed, fixed
    guaranteed = largest_fitting(lambda n: bound(n) <= budget, budget // least_bytes + 1,
                                 1 + (budget - smallest) // per_prior)  # an affine guess
    if fill != "compressed":
        return guaranteed, guaranteed

    def estimate(n: int) -> float:  # affine: no placeholder archive past the budget is built
        return smallest + (n - 1) * per_prior - (1 - PRIOR_STORED_RATIO) * per_prior * n
    return largest_fitting(lambda n: estimate(n) <= budget, int(budget / (PRIOR_STORED_RATIO * per_prior)) + 1), \
        guaranteed


PRESETS = {
    "paper": D3Config(),
    "fast": D3Config(iterations=300, init_iterations=2000, init_logvar=-4.0, real_per_class=64, synthetic_per_class=32,
                     embed_width=64, teacher_epochs=2.0, teacher_width=32),
    # a first picture and number in minutes (README: the first five minutes), not a result to report
    "smoke": D3Config(iterations=30, init_iterations=300, init_logvar=-4.0, real_per_class=32, synthetic_per_class=16,
                      embed_width=32, teacher_epochs=0.5, teacher_width=16),
    # every stage at full class count with a few iterations, to find what breaks before a long run
    # (benchmarks/imagenet_rehearsal.sh); not a result
    "rehearsal": D3Config(iterations=2, init_iterations=4, init_batch=32, init_logvar=-4.0, real_per_class=8,
                          synthetic_per_class=2, embed_width=16, teacher_epochs=0.5, teacher_width=16),
}



def decoder_map_bytes(g: GroupPlan, image_shape: tuple[int, int, int]) -> list[int]:
    """Bytes of one float32 map of each of the decoder's stages (after each upsampling) for one sample."""
    upsamples, h0, w0 = upsampling_geometry(image_shape)
    widths = decoder_stage_widths(g.decoder_architecture, g.decoder_width, upsamples)
    return [widths[i] * (h0 << i) * (w0 << i) * 4 for i in range(1, upsamples + 1)] or [g.decoder_width * h0 * w0 * 4]


def decoder_activation_bytes(g: GroupPlan, image_shape: tuple[int, int, int]) -> int:
    """Bytes one decoded sample keeps for the backward pass through group ``g``'s decoder: about 4 maps of each
    stage (upsampling, convolution, norm and activation; saved-tensor hooks count 5.1 maps of width·H·W over
    a uniform decoder's stages at 28 and 64 pixels), with what the backward pass adds. An estimate for sizing
    chunks (d3codec.methods.matching.memory_sized_chunk)."""
    return 4 * sum(decoder_map_bytes(g, image_shape)) + 2 * max(decoder_map_bytes(g, image_shape))


LABEL_TOP_K_ABOVE = 20  # groups of more classes store the top LABEL_TOP_K probabilities of each soft label
LABEL_TOP_K = 10
PCA_MAX_ROWS = 4096  # images the principal axes are computed from, at most (a random subset beyond)
PCA_MEMORY_BYTES = 256 << 20  # float32 images one PCA batch may hold (1 365 at 128 pixels, 5 461 at 64)
LABEL_MEMORY_BYTES = 64 << 20  # activations of one batch of decoded means labelled (small batches: faster on CPU)


def as_pixels(x: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1] of images stored as uint8 (0 to 255), or float images unchanged."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def pca_latents(x: torch.Tensor, z: int, gen: torch.Generator, max_rows: int = PCA_MAX_ROWS,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Initial latents of generative latent optimisation (Bojanowski et al. 2018, Sec. 3.3: z from PCA).

    Args: x (M, D) images flattened, float32 in [0, 1] or uint8; z latent size; rows (N,) int64: the
        images to embed, by row of x (default all of them, N = M; a row may repeat, and each image is
        embedded once); max_rows: above this many distinct images, or more than PCA_MEMORY_BYTES of them as
        float32, the principal axes come from a random subset of that size (drawn from ``gen``) and the mean
        and projections are computed in batches of that size, so memory stays bounded (ImageNet's plan:
        hundreds of thousands of rows of 12 288 values per subtask; 49 152 at 128 pixels).
    Returns: (N, Z) float32, the projections on the first principal axes, scaled to unit standard
    deviation overall; axes beyond min(N, D) are filled with small noise (drawn per row), and every repeat
    of an image after its first row moves by DUPLICATE_JITTER · ε, so that repeated images get distinct
    latents (priors that start equal stay equal under GLO, and zstd stores a thousand equal priors in the
    bytes of a few).
    """
    latents, inverse = _pca_latents(x, z, gen, max_rows, rows)
    if len(inverse) and int(inverse.max()) + 1 < len(inverse):  # some image is repeated
        firsts = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
        firsts = firsts.scatter_reduce(0, inverse, torch.arange(len(inverse), device=inverse.device), "amin")
        repeat = torch.ones(len(inverse), dtype=torch.bool, device=inverse.device)
        repeat[firsts] = False
        jitter = torch.randn(int(repeat.sum()), z, generator=gen).to(latents.device)
        latents[repeat] += DUPLICATE_JITTER * jitter
    return latents


# How far a repeated image's latent moves from its first one's (latents have unit standard deviation; a prior's
# starting spread, init_logvar -4, is 0.14): the ImageNet rehearsal's 20 images a class for 807 priors gave 40
# equal priors each, and its D3 archive filled 8.4 % of the budget the plan counted on.
DUPLICATE_JITTER = 0.1


def _pca_latents(x: torch.Tensor, z: int, gen: torch.Generator, max_rows: int,
                 rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pca_latents` before the repeats are moved apart, and each row's image (N,) int64."""
    rows = rows if rows is not None else torch.arange(len(x), device=x.device)
    images, inverse = torch.unique(rows, return_inverse=True)  # (M',) distinct images; rows = images[inverse]
    n, d = len(images), x.shape[1]
    batch = max(1, min(max_rows, PCA_MEMORY_BYTES // (4 * d)))  # images per float32 batch
    out = 0.01 * torch.randn(len(rows), z, generator=gen).to(x.device)
    if n <= batch:
        x = as_pixels(x[images])
        q = min(z, n, d)
        centred = x - x.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v (min(N, D), D), axes by variance
        out[:, :q] = (centred @ v[:q].T)[inverse]  # (N, q)
        return out / out.std().clamp_min(1e-8), inverse
    q = min(z, batch, d)
    mean = sum(as_pixels(x[images[i:i + batch]]).sum(0, dtype=torch.float64) for i in range(0, n, batch)) / n
    mean = mean.float().unsqueeze(0)  # (1, D)
    subset = as_pixels(x[images[torch.randperm(n, generator=gen)[:batch].to(images.device)]]) - mean
    # the axes from the subset's Gram matrix (batch²; its eigenvectors give the right singular vectors):
    # a few seconds where an SVD of the (batch, D) subset takes a minute on a CPU
    values, vectors = torch.linalg.eigh(subset @ subset.T)  # ascending
    top, scale = vectors[:, -q:].flip(-1), values[-q:].flip(0).clamp_min(1e-12).sqrt()
    v = (top.T @ subset) / scale.unsqueeze(1)  # (q, D) unit principal axes, by variance
    del subset
    projected = torch.cat([(as_pixels(x[images[i:i + batch]]) - mean) @ v[:q].T for i in range(0, n, batch)])
    out[:, :q] = projected[inverse]  # (N, q)
    return out / out.std().clamp_min(1e-8), inverse


def fit_decoder(decoder: nn.Module, latents: nn.Parameter, targets: torch.Tensor, cfg: "D3Config",
                gen: torch.Generator, progress: bool = True, rows: torch.Tensor | None = None) -> float:
    """Fit the decoder and the latents so that decoder(latents) ≈ targets (GLO).

    Adam with a one-cycle schedule peaking at ``init_lr_decoder`` / ``init_lr_priors``, batches of
    ``init_batch`` images, ``init_iterations`` steps, mean squared error in pixel space.

    Args: latents (..., Z) float32 Parameter holding N latents; targets (N, C, H, W) float32 in [0, 1], or
        uint8 (0 to 255; each batch is converted); rows (N,) int64, where given: latent i's target is
        targets[rows[i]] (targets then (M, C, H, W), any M).
    Returns: the last batch's loss.
    """
    opt = torch.optim.Adam([{"params": decoder.parameters(), "lr": cfg.init_lr_decoder},
                            {"params": [latents], "lr": cfg.init_lr_priors}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [cfg.init_lr_decoder, cfg.init_lr_priors],
                                                total_steps=cfg.init_iterations)
    flat = latents.view(-1, latents.shape[-1])  # (N, Z)
    n = len(rows) if rows is not None else len(targets)
    batch, loss = min(n, cfg.init_batch), torch.tensor(float("nan"))
    for _ in progress_bar(range(cfg.init_iterations), desc="D3 warm start", enabled=progress, unit="it"):
        pick = torch.randperm(n, generator=gen)[:batch].to(targets.device)
        target = targets[rows[pick]] if rows is not None else targets[pick]
        loss = F.mse_loss(decoder(flat[pick]), as_pixels(target))  # (B, C, H, W) against (B, C, H, W)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())




FILL_STEPS = 20  # Adam steps that fit each added prior's mean to its real image (the decoder fixed)
FILL_BATCH = 256  # means fitted at once
# The fill's work is at most this share of the decoder passes the group made before it (its warm start's and
# matching's); fitting a mean takes FILL_STEPS passes forward and back. A count, not a time, so that a seed
# gives the same archive on any machine. The ImageNet rehearsal's 20 images a class gave priors that zstd
# stores in a tenth of the plan's bytes: filling them would have taken hours a subtask on a CPU (10 minutes
# fitted 5 000 of 161 400; benchmarks/imagenet-rehearsal.md), for a run of 2 matching iterations.
FILL_WORK_SHARE = 0.5


def fill_allowance(cfg: "D3Config", g: GroupPlan) -> int:
    """The most priors a class the fill may add to group ``g`` (FILL_WORK_SHARE of its decoder passes)."""
    passes = cfg.iterations * g.num_classes * cfg.synthetic_per_class + cfg.init_iterations * cfg.init_batch
    return int(FILL_WORK_SHARE * passes / (FILL_STEPS * g.num_classes))


@torch.enable_grad()
def fit_latents(decoder: nn.Module, images: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, lr: float,
                steps: int = FILL_STEPS, batch: int = FILL_BATCH, progress: bool = False) -> torch.Tensor:
    """Latents that ``decoder``, fixed, decodes to images ``images[rows]``: GLO's inversion (Bojanowski et al.
    2018, Sec. 3), ``steps`` Adam steps at ``lr`` on pixel MSE for each batch of ``batch`` latents.

    Args: images (M, C, H, W) uint8 or float32 in [0, 1]; rows (N,) int64 into images; start (N, Z) float32.
    Returns: (N, Z) float32 on ``start``'s device."""
    kept = [q.requires_grad for q in decoder.parameters()]
    decoder.requires_grad_(False)
    out = torch.empty_like(start)
    try:
        for lo in progress_bar(range(0, len(rows), batch), desc="D3 fill: fitting added priors", enabled=progress,
                               unit="batch"):
            latents = start[lo:lo + batch].clone().requires_grad_(True)
            target = as_pixels(images[rows[lo:lo + batch].to(images.device)]).to(start.device)
            opt = torch.optim.Adam([latents], lr=lr)
            for _ in range(steps):
                loss = F.mse_loss(decoder(latents), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            out[lo:lo + batch] = latents.detach()
    finally:
        for q, wanted in zip(decoder.parameters(), kept):
            q.requires_grad_(wanted)
    return out

# ---- the encoder ----------------------------------------------------------------------------------------------------

class D3Encoder(SubtaskEncoder):
    """D3 distillation. ``D3Encoder(PRESETS["fast"])`` or any :class:`D3Config`.

    Args:
        teacher: gives the soft labels and teacher features (trained per subtask if None).
        save_teacher: where to write the teacher trained here (one subtask only), for ``--teacher`` later.
        checkpoint: each subtask (group) ``i`` saves its matching state to ``STEM.g{i}.SUFFIX`` at least
            ``checkpoint_seconds`` apart and at its end (priors, decoder, the teacher it trained, Adam,
            random states; d3codec.encode.checkpoint), and resumes from it; a finished group is not distilled
            again. The files are deleted once the archive is written. None: no checkpoint.
    """

    method = "d3"
    presets = PRESETS

    def __init__(self, config: D3Config = PRESETS["fast"], teacher: Teacher | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_seconds: float = 300.0,
                 save_teacher: str | os.PathLike | None = None):
        if config.decoder_dtype not in DECODER_DTYPES:
            raise ValueError(f"decoder dtype must be one of {DECODER_DTYPES}, not {config.decoder_dtype!r}")
        if config.prior_dtype not in PRIOR_DTYPES:
            raise ValueError(f"prior dtype must be one of {PRIOR_DTYPES}, not {config.prior_dtype!r}")
        for name in ("real_per_class", "synthetic_per_class", "embed_width", "class_chunk", "real_cache_per_class",
                     "subtasks", "teacher_width"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")
        if config.label_top_k is not None and not 0 <= config.label_top_k <= MAX_TOP_K_CLASSES:
            raise ValueError(f"--label-top-k must be from 0 (whole rows) to {MAX_TOP_K_CLASSES}, "
                             f"not {config.label_top_k}")
        if save_teacher is not None and (teacher is not None or config.subtasks > 1
                                         or not (config.soft_labels or config.teacher_features)):
            raise ValueError("--save-teacher saves the one teacher a run trains: it needs --subtasks 1 (each subtask "
                             "trains its own on its classes), no --teacher, and soft labels (or teacher features)")
        self.config = config
        self.teacher = teacher
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds
        self.save_teacher = Path(save_teacher) if save_teacher is not None else None

    @classmethod
    def from_options(cls, preset: str = "fast", teacher: Teacher | None = None, checkpoint=None,
                     checkpoint_seconds: float = 300.0, save_teacher=None, **overrides) -> "D3Encoder":
        return cls(preset_config(PRESETS, preset, overrides), teacher, checkpoint, checkpoint_seconds, save_teacher)

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

    def label_top_k(self, group_classes: int) -> int | None:
        """How many of a soft label's largest probabilities a group of ``group_classes`` stores (None:
        the whole row): ``label_top_k`` where given (0: whole rows), else the rule of :meth:`plan`."""
        given = self.config.label_top_k
        top = (LABEL_TOP_K if group_classes > LABEL_TOP_K_ABOVE else None) if given is None else (given or None)
        return top if top is not None and top < group_classes else None

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
        3. decoder: ``uniform`` for images up to 32 pixels a side, else ``tapered`` (its channels
           halve at every upsampling: at 64 pixels a width-256 uniform decoder spends 96 % of its
           multiply-adds at full resolution); width: the largest of DECODER_WIDTHS (up to
           ``max_decoder_width``: 64 for images up to 32 pixels, else 256) whose decoders take at
           most ``decoder_share`` of the budget; the smallest width where none does;
        4. soft labels: whole rows for groups of up to LABEL_TOP_K_ABOVE classes; above, each
           row's LABEL_TOP_K largest probabilities (ImageNet's groups of 200: a twentieth of the bytes);
        5. priors per class: the most whose exact archive bound (compression off, metadata
           reserve included) fits the budget; with ``fill="compressed"``, the most whose bound,
           with the priors and soft labels at PRIOR_STORED_RATIO of their raw bytes, fits (the
           writer then drops priors until the archive fits, never below the first count).

        Raises: D3BudgetError, with the smallest workable budget, when one prior per class with
        the narrowest decoder does not fit.
        """
        cfg, k, shape = self.config, spec.num_classes, spec.image_shape
        ranges = split_classes(k, cfg.subtasks)
        side = max(shape[1:])
        z = cfg.latent_dim or (32 if side <= 32 else 64)
        cap = cfg.max_decoder_width or (64 if side <= 32 else 256)
        architecture = cfg.decoder_architecture or ("uniform" if side <= 32 else "tapered")
        if cfg.fill not in ("compressed", "raw"):
            raise ValueError(f"fill must be 'compressed' or 'raw', not {cfg.fill!r}")
        if architecture not in DECODER_ARCHITECTURES:
            raise ValueError(f"decoder architecture must be one of {', '.join(DECODER_ARCHITECTURES)}, "
                             f"not {architecture!r}")

        def groups_for(width: int, priors: int) -> list[GroupPlan]:
            return [GroupPlan(a, b, z, priors, width, architecture, self.label_top_k(b - a)) for a, b in ranges]

        bounds: dict[tuple[GroupPlan, ...], int] = {}

        def bound(groups: list[GroupPlan]) -> int:
            if tuple(groups) not in bounds:
                entries = [group_entry(g, cfg, {"distill_seconds": 0.0, "teacher_accuracy": 0.0, "final_loss": 0.0})
                           for g in groups]
                with torch.device("meta"):  # placeholders counted, not made
                    parts = [group_tensors(g, i, shape, cfg) for i, g in enumerate(groups)]
                    sections = [Section.json("meta", meta_for(self.method_meta(entries)))] + sections_of(parts)
                bounds[tuple(groups)] = archive_bound(sections, META_RESERVE_BYTES + 64 * len(groups))
            return bounds[tuple(groups)]

        def decoder_bytes(width: int) -> int:
            n = sum(math.prod(s) for s in decoder_shapes(z, shape, width, architecture).values())
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
        priors, guaranteed = plan_priors(lambda n: bound(groups_for(width, n)), budget, cfg.priors_per_class,
                                         cfg.fill, k * z * 2)
        return D3Plan(tuple(groups_for(width, priors)), cfg.decoder_dtype, cfg.prior_dtype, cfg.soft_labels,
                      bound(groups_for(width, guaranteed)), budget)

    def distill(self, real: RealData, plan: D3Plan, *, device: torch.device, seed: int,
                progress: bool = True) -> Encoded:
        """Distil every group in turn, in this process (d3codec.encode.federated spreads them over ranks)."""
        parts, entries = [], []
        stages = self.stages(real, plan, range(len(plan.groups)), progress)
        for index, group in enumerate(plan.groups):
            tensors, entry = self.distill_group(real, plan, index, device=device, seed=seed, progress=progress,
                                                stages=stages)
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
        encoded = self.prior_trimmed(parts, entries, stats)
        encoded.cleanup = lambda: self.remove_checkpoints(len(entries))
        return encoded

    def prior_trimmed(self, parts: list[dict], entries: list[dict], stats: dict) -> Encoded:
        """The archive of these groups (tensors by section, and metadata entries), whose ``trim`` drops the
        priors an :class:`Overrun` asks for (the last of each class, from the groups with the most first:
        layout.trimmed_priors). Each trimmed group's stats keep the planned count."""
        priors = [e["priors_per_class"] for e in entries]
        classes = [e["classes"][1] - e["classes"][0] for e in entries]

        def trim(overrun: Overrun) -> Encoded | None:
            units = overrun.units_to_drop(sum(p * k for p, k in zip(priors, classes)), ("priors", "prior_labels"))
            keep = trimmed_priors(priors, classes, units)
            if keep == priors:
                return None
            kept_entries = [e if n == p else {**e, "priors_per_class": n, "stats": {
                **e["stats"], "planned_priors_per_class": e["stats"].get("planned_priors_per_class", p)}}
                for e, p, n in zip(entries, priors, keep)]
            return self.prior_trimmed([first_priors(part, n) for part, n in zip(parts, keep)], kept_entries, stats)

        return Encoded(sections_of(parts), self.method_meta(entries), stats, trim)

    # ---- subtasks (d3codec.encode.federated): a group is a subtask ----

    def subtask_count(self, plan: D3Plan) -> int:
        return len(plan.groups)

    def distill_subtask(self, real: RealData, plan: D3Plan, index: int, *, device: torch.device, seed: int,
                        progress: bool = True) -> Subtask:
        """Group ``index`` as an archive of its classes alone (its tensors renamed to group 0)."""
        tensors, entry = self.distill_group(real, plan, index, device=device, seed=seed, progress=progress)
        a, b = entry["classes"]
        local = {section: rename_group(group, index, 0) for section, group in tensors.items()}
        return Subtask((a, b), Encoded(sections_of([local]), self.method_meta([{**entry, "classes": [0, b - a]}]),
                                       entry["stats"]))

    def merge_subtasks(self, paths: list[Path], limits=None) -> Encoded:
        """The groups of the subtask archives at ``paths``, merged (merge.py); seconds summed over subtasks."""
        parts = [Part.read(path, limits) for path in paths]
        fields, groups = combine_groups(parts)
        seconds = sum(part.meta["stats"].get("distill_seconds", 0.0) for part in parts)
        return self.prior_trimmed(groups, fields["groups"], {"distill_seconds": round(seconds, 3)})

    def group_run(self, real: RealData, plan: D3Plan, index: int, seed: int, device: torch.device) -> tuple:
        """What group ``index``'s result depends on (its checkpoint's fingerprint): every option, its plan,
        the seed, the data, the device type and a given teacher's weights."""
        given = None
        if self.teacher is not None:
            given = [weights_digest(self.teacher.net.state_dict()), self.teacher.classes]
        return (asdict(self.config), asdict(plan.groups[index]), index, seed, real.name, list(real.classes),
                len(real.train_targets), device.type, given)

    def distill_group(self, real: RealData, plan: D3Plan, index: int, *, device: torch.device, seed: int,
                      progress: bool = True, stages: Stages | None = None
                      ) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Distil group ``index`` alone. Its result depends only on the data, the plan and (seed, index):
        its draws come from the named stream ``d3-group`` number ``index`` (d3codec.encode.seeds). ``stages``: the
        run's stages (:meth:`stages`) when the group is one of several distilled here, for the time left.

        Returns: (tensors by section, keyed g{index}.*; the group's metadata entry).
        """
        cfg, g = self.config, plan.groups[index]
        group_seed = seeds.stream_seed(seed, "d3-group", index)
        gen = torch.Generator().manual_seed(group_seed)
        torch.manual_seed(group_seed)  # network initialisations draw from the global generator
        stages = stages or self.stages(real, plan, [index], progress)
        named = self.stage_names(plan, index)
        loop = ResumableLoop(self.group_checkpoint(index), "d3-group", self.group_run(real, plan, index, seed, device),
                             cfg.iterations, self.checkpoint_seconds)
        if loop.resuming:  # the teacher and the warm start are in the checkpoint
            for stage in ("teacher", "warm start"):
                if named[stage] in [s.name for s in stages.stages]:
                    stages.skip(named[stage])
        # a dataset on disk is read once, in parallel, into an in-memory subset of the group's classes that the
        # teacher, the warm start and matching all use; from its own stream, so that a resumed run (which
        # skips the warm start's draws) caches the same images
        sampler = ClassSampler(real, list(range(g.start, g.stop)), cfg.real_cache_per_class,
                               seeds.generator(seed, "d3-real-cache", index))
        state, teacher, own_teacher = self._group_start(loop, g, sampler, named, stages, gen, group_seed, device,
                                                        progress)
        normalise = Normalisation.of(real, device)
        opt = torch.optim.Adam([{"params": state.decoder.parameters(), "lr": cfg.lr_decoder},
                                {"params": list(state.priors().values()), "lr": cfg.lr_priors}])
        pool = matching_experts(cfg.matching, real, cfg.expert_count, cfg.expert_epochs, cfg.embed_width, device,
                                progress)
        matcher = self._matcher(g, real.image_shape, sampler, normalise, device, pool)
        terms = self._terms(teacher) + matching_terms(pool, cfg.calibration_weight)
        loop.resume(LoopState(gen, state.priors(), {"adam": opt},
                              {"decoder": state.decoder, **({"teacher": teacher.net} if own_teacher else {})}), device)
        if own_teacher:
            teacher.net.eval().requires_grad_(False)
            if self.save_teacher is not None:
                save_teacher(teacher, self.save_teacher, real.image_shape)
        if not loop.resuming:  # the warm start and the teacher are saved before matching
            loop.save(0)

        def step(it: int) -> float:
            opt.zero_grad(set_to_none=True)
            loss = matcher.step(lambda chunk: state.samples(chunk, cfg.synthetic_per_class, gen, normalise), terms, gen)
            opt.step()
            return loss

        loop.run(step, stages.bar(named["matching"], range(loop.first, cfg.iterations), cfg.iterations, loop.first,
                                  unit="it"))
        labelling = time.time()
        with stages.stage(named["soft labels"]) if cfg.soft_labels else nullcontext():
            g, (priors, decoder_state, labels), added = self._filled(
                g, index, real.image_shape, self._labelled(state, g, real.image_shape, teacher, normalise, progress),
                state.decoder, sampler.real, teacher, normalise, gen, progress)
        stats = group_stats(cfg, loop, labelling, added)
        return group_tensors(g, index, real.image_shape, cfg, priors, decoder_state, labels), group_entry(g, cfg, stats)

    def _group_start(self, loop: ResumableLoop, g: GroupPlan, sampler: ClassSampler, named: dict, stages: Stages,
                     gen: torch.Generator, group_seed: int, device: torch.device, progress: bool):
        """A group's teacher (its test accuracy carried by ``loop``) and learned state, warm-started from real
        images unless ``loop`` resumes (then both come from its checkpoint).
        Returns: (LearnedGroup, Teacher or None, whether the teacher is the group's own)."""
        cfg, classes = self.config, list(range(g.start, g.stop))
        with stages.stage(named["teacher"]):
            teacher, accuracy = self._teacher(sampler.real, classes, group_seed, loop.resuming, device, progress)
        if accuracy is not None:
            loop.carry["teacher_accuracy"] = accuracy
        state = LearnedGroup.start(g, sampler.real.image_shape, cfg.init_logvar, gen, device)
        if not loop.resuming:
            with stages.stage(named["warm start"]):
                self._warm_start(state, sampler.real, classes, gen, progress)
        return state, teacher, teacher is not None and self.teacher is None

    def trains_teacher(self) -> bool:
        """Whether distilling trains a teacher (one per group): one is needed and none was given."""
        return self.teacher is None and (self.config.soft_labels or self.config.teacher_features)

    def stage_names(self, plan: D3Plan, index: int) -> dict[str, str]:
        """Group ``index``'s stages by their plain names: teacher, warm start, matching, soft labels."""
        suffix = f", group {index + 1}/{len(plan.groups)}" if len(plan.groups) > 1 else ""
        return {stage: stage + suffix for stage in ("teacher", "warm start", "matching", "soft labels")}

    def stages(self, real: RealData, plan: D3Plan, groups, progress: bool = True) -> Stages:
        """The stages of distilling ``groups`` (indices): per group its teacher (where one is trained here),
        warm start, matching and soft labels (one decoded prior mean through the teacher per prior: most of
        an ImageNet subtask's time on a CPU), each weighed by its multiply-adds (forward and backward taken as
        three forwards; d3codec.format.limits.network_cost), for the run's time left (d3codec.util.progress.Stages)."""
        cfg, (c, h, w) = self.config, real.image_shape
        teacher_width = cfg.teacher_width if self.teacher is None else self.teacher.net.features[0].out_channels

        def macs(build, *shape) -> int:
            return network_cost(build, lambda: (torch.zeros(1, *shape),), "a network of this run").macs

        out = []
        for index in groups:
            g, named = plan.groups[index], self.stage_names(plan, index)
            k, p = g.num_classes, g.priors_per_class
            decoder = macs(lambda: g.decoder(real.image_shape), g.latent_dim)
            embed = macs(lambda: ConvNet(c, k, h, width=cfg.embed_width), c, h, w)
            if self.trains_teacher():
                images = len(real.train_targets) * k / real.num_classes
                teacher = macs(lambda: ConvNet(c, k, h, width=cfg.teacher_width), c, h, w)
                out.append(Stage(named["teacher"], 3 * cfg.teacher_epochs * images * teacher))
            out.append(Stage(named["warm start"], 3 * cfg.init_iterations * min(cfg.init_batch, k * p) * decoder))
            per_class = 3 * cfg.synthetic_per_class * (decoder + embed) + cfg.real_per_class * embed
            out.append(Stage(named["matching"], cfg.iterations * k * per_class))
            if cfg.soft_labels:
                teacher = macs(lambda: ConvNet(c, k, h, width=teacher_width), c, h, w)
                out.append(Stage(named["soft labels"], k * p * (decoder + teacher)))
        return Stages("D3", out, enabled=progress)

    def _teacher(self, real: RealData, classes: list[int], seed: int, resuming: bool, device: torch.device,
                 progress: bool) -> tuple[Teacher | None, float | None]:
        """The group's teacher (None where neither soft labels nor teacher features need one) and the test
        accuracy of one trained here. Resuming, a network of the teacher's shape whose weights the
        checkpoint holds."""
        cfg = self.config
        if not (cfg.soft_labels or cfg.teacher_features):
            return None, None
        if self.teacher is not None:
            return self.teacher.restricted(classes), None
        if resuming:
            return untrained_teacher(real.image_shape, classes, cfg.teacher_width, device), None
        return train_teacher(real, classes, epochs=cfg.teacher_epochs, width=cfg.teacher_width, device=device,
                             seed=seed, progress=progress)

    def _warm_start(self, state: "LearnedGroup", real: RealData, classes: list[int], gen: torch.Generator,
                    progress: bool) -> None:
        """Each prior mean decodes to one random real image of its class (GLO, :func:`fit_decoder`)."""
        cfg = self.config
        k, p, z = state.prior_mean.shape
        # the targets as indices into the training images (in memory: a dataset on disk comes as its cached
        # subset), not copies: ImageNet's plan has hundreds of priors per class and only so many images
        rows = torch.cat([real.pick_class(cl, p, gen) for cl in classes])  # (K_g·P,): prior i → image rows[i]
        if cfg.init_iterations > 0:
            images = real.train_images.to(state.prior_mean.device)  # (M, C, H, W) uint8
            rows = rows.to(images.device)
            with torch.no_grad():
                state.prior_mean.copy_(pca_latents(images.view(len(images), -1), z, gen, rows=rows).view(k, p, z))
            fit_decoder(state.decoder, state.prior_mean, images, cfg, gen, progress=progress, rows=rows)

    def _matcher(self, g: GroupPlan, image_shape: tuple[int, int, int], sampler: ClassSampler,
                 normalise: Normalisation, device: torch.device, pool: ExpertPool | None = None
                 ) -> DistributionMatcher:
        """The matching loop of group ``g``, its classes chunked to fit memory (at most ``class_chunk``),
        through ``pool``'s middle encoders where there is one (matching dance)."""
        cfg = self.config
        chunk = min(cfg.class_chunk, memory_sized_chunk(g.num_classes, cfg.synthetic_per_class, cfg.real_per_class,
                                                        image_shape, cfg.embed_width, activation_memory(device),
                                                        decoder_activation_bytes(g, image_shape)))
        embedded = cfg.iterations * g.num_classes * (cfg.synthetic_per_class + cfg.real_per_class)
        return DistributionMatcher(image_shape, g.num_classes, sampler.sample, cfg.real_per_class, normalise,
                                   DSA() if cfg.dsa else None, cfg.embed_width, chunk, device, pool,
                                   list(range(g.start, g.stop)), compile=worth_compiling(embedded))

    def _terms(self, teacher: Teacher | None) -> list:
        """The objective: MMD and DM's mean term on the random network's features, and on the teacher's
        where ``teacher_features`` is on."""
        cfg = self.config
        extractors = [None] + ([teacher.net.embed] if cfg.teacher_features else [])
        return [FeatureTerm(loss, weight, extractor) for extractor in extractors
                for loss, weight in ((mmd_rbf, cfg.mmd_weight), (mean_embedding_loss, cfg.mean_weight))]

    def _labelled(self, state: "LearnedGroup", g: GroupPlan, image_shape: tuple[int, int, int],
                  teacher: Teacher | None, normalise: Normalisation, progress: bool = True):
        """The group as the archive holds it: its priors (mean, logvar) (K_g, P, Z) float32 and its decoder's
        weights as stored and read back (the decoder is left holding them), and the soft labels: the teacher's
        on the prior means so decoded, so that they label what a reader draws (with a progress bar: the stage's,
        inside ``Stages.stage``). Returns (priors, decoder state, labels: (K_g, P, K_g), (values, indices)
        (K_g, P, k) each, or None)."""
        cfg, decoder = self.config, state.decoder
        k, p, z = state.prior_mean.shape
        stored = quantise_state(decoder.state_dict(), "", cfg.decoder_dtype)
        shapes = g.decoder_shapes(image_shape)
        decoder.load_state_dict(dequantise_state(stored, "", shapes, cfg.decoder_dtype, "decoder"))
        priors = dequantise_priors(quantise_priors(state.prior_mean, state.prior_logvar, "", cfg.prior_dtype), "",
                                   (k, p, z), cfg.prior_dtype)  # (K_g, P, Z) each
        labels = self._labels(g, image_shape, decoder, teacher, priors[0].to(state.prior_mean.device), normalise,
                              progress)
        return priors, {n: v.cpu() for n, v in decoder.state_dict().items()}, labels

    def _labels(self, g: GroupPlan, image_shape: tuple[int, int, int], decoder: nn.Module, teacher: Teacher | None,
                means: torch.Tensor, normalise: Normalisation, progress: bool = True):
        """Soft labels of prior means (K_g, P', Z) (see :meth:`_labelled`), or None without soft labels."""
        if not self.config.soft_labels:
            return None
        k, p, z = means.shape
        # in batches: at ImageNet's plan, 200 × 161 decoded means would take over 100 GB at once; without
        # gradients a decoded mean holds about 3 of its largest maps at a time
        rows = max(1, LABEL_MEMORY_BYTES // (3 * max(decoder_map_bytes(g, image_shape))))
        labels = tuple(t.view(k, p, -1) for t in label_means(decoder, teacher, means.reshape(k * p, z), normalise,
                                                              self.config.label_temperature, g.label_top_k, rows,
                                                              progress))
        return labels if g.label_top_k else labels[0]  # (values, indices) (K_g, P', k) each, or (K_g, P', K_g)

    def _filled(self, g: GroupPlan, index: int, image_shape: tuple[int, int, int], labelled: tuple,
                decoder: nn.Module, real: RealData, teacher: Teacher | None, normalise: Normalisation,
                gen: torch.Generator, progress: bool = True, allowance: int | None = None
                ) -> tuple[GroupPlan, tuple, int]:
        """The group with the priors its share of the budget still holds added to every class (fill.py): each
        new mean fitted to a random real image of its class through ``decoder`` (:func:`fit_latents`, from the
        class's mean latent moved by DUPLICATE_JITTER, kept within the stored priors' range so that their int8
        values do not move), its log-variance its class's mean one, its soft label the teacher's; at most
        doubling the count a round, and within what a reader's default limits load (fill.most_priors). Only
        where the plan chose the count (``fill="compressed"``, no ``priors_per_class``); at most ``allowance`` a
        class in all (default :func:`fill_allowance`). Returns (the group's plan, ``labelled`` as
        :meth:`_labelled` gives it, priors added per class)."""
        cfg = self.config
        if cfg.fill != "compressed" or cfg.priors_per_class is not None:
            return g, labelled, 0
        planned, first = fill.planned_bytes(g, index, image_shape, cfg, PRIOR_STORED_RATIO), g.priors_per_class
        (mean, logvar), decoder_state, labels = labelled
        device = next(decoder.parameters()).device
        bound = mean.abs().amax((0, 1))  # (Z,) the stored range: int8 scales, and so the old priors, unchanged
        most = fill.most_priors(g, image_shape, real.num_classes)  # what a default reader's limits allow
        most = min(most, first + (fill_allowance(cfg, g) if allowance is None else allowance))
        for _ in range(fill.FILL_ROUNDS):  # added priors may compress otherwise than the first: measure again
            added = fill.priors_to_add(planned, group_tensors(g, index, image_shape, cfg, (mean, logvar),
                                                             decoder_state, labels), g.num_classes, g.priors_per_class)
            added = min(added, g.priors_per_class, most - g.priors_per_class)  # at most double a round
            if added < 1:
                break
            k, _, z = mean.shape
            # prior-major: the first added prior of every class, then the second, ...
            rows = torch.stack([real.pick_class(c, added, gen) for c in range(g.start, g.stop)], 1).reshape(-1)
            start = mean.mean(1).repeat(added, 1)  # (A·K_g, Z): each class's mean latent, and apart
            start = (start + DUPLICATE_JITTER * torch.randn(start.shape, generator=gen)).to(device)  # (repeated images)
            fitted = fit_latents(decoder, real.train_images, rows, start, cfg.init_lr_priors, progress=progress).cpu()
            more = torch.maximum(torch.minimum(fitted, bound), -bound).view(added, k, z).transpose(0, 1)  # (K_g, A, Z)
            labels = fill.appended_labels(labels, self._labels(g, image_shape, decoder, teacher, more.to(device),
                                                               normalise, progress))
            mean, logvar = torch.cat([mean, more], 1), torch.cat([logvar, logvar.mean(1, keepdim=True).expand(
                k, added, z)], 1)
            g = replace(g, priors_per_class=g.priors_per_class + added)
        return g, ((mean, logvar), decoder_state, labels), g.priors_per_class - first

def group_stats(cfg: D3Config, loop: ResumableLoop, labelling: float, added: int = 0) -> dict:
    """A group's stats: its seconds (``loop``'s, those before a kill and the soft labels' included; theirs since
    ``labelling`` (time.time()) apart), final loss and the iteration it resumed at, its own teacher's test
    accuracy, and the priors a class it added to fill its share (fill.py)."""
    stats = {"distill_seconds": round(loop.seconds, 3), **loop.stats()}
    if cfg.soft_labels:
        stats["label_seconds"] = round(time.time() - labelling, 3)
    if "teacher_accuracy" in loop.carry:
        stats["teacher_accuracy"] = round(loop.carry["teacher_accuracy"], 4)
    if added:
        stats["added_priors_per_class"] = added
    return stats


def label_means(decoder: nn.Module, teacher: Teacher, means: torch.Tensor, normalise: Normalisation,
                temperature: float, top_k: int | None, rows: int, progress: bool = True) -> tuple[torch.Tensor, ...]:
    """Soft labels of prior means (Qin et al. 2024, Sec. 3.4: one label per prior): the teacher's
    probabilities, at ``temperature``, on each mean decoded by ``decoder``, ``rows`` means a batch.

    Args: means (N, Z) float32; top_k: keep each row's k largest (spec §5.6), None for whole rows.
    Returns: on the CPU, (values (N, k) float32, indices (N, k) int64), or (rows (N, K),) for whole rows.

    The outputs are allocated once and filled batch by batch: a list of per-batch results, each kept between
    the large decoder buffers freed every batch, fragmented the heap of a process that keeps freed memory
    (d3codec.util.runtime): about 4 MB lost a batch, 15.8 GB on a rank of the ImageNet rehearsal. Both networks
    run on copies in channels-last memory format: 1.85 times the means a second at ImageNet's shapes on a
    CPU thread (benchmarks/label_speed.py; torch.compile gave 2.3 times, at tens of seconds of compiling).
    """
    n = len(means)
    values = torch.empty(n, top_k or len(teacher.classes), device=means.device)
    indices = torch.empty(n, top_k, dtype=torch.int64, device=means.device) if top_k else None
    decoder = copy.deepcopy(decoder).to(memory_format=torch.channels_last)
    teacher = Teacher(copy.deepcopy(teacher.net).to(memory_format=torch.channels_last), teacher.classes,
                      teacher.out_index)
    with torch.no_grad():
        for i in progress_bar(range(0, n, rows), "D3 soft labels", progress, unit="batch"):
            probabilities = teacher.probabilities(normalise(decoder(means[i:i + rows])), temperature)
            if top_k:
                values[i:i + rows], indices[i:i + rows] = probabilities.topk(top_k, dim=-1)
            else:
                values[i:i + rows] = probabilities
    return (values.cpu(), indices.cpu()) if top_k else (values.cpu(),)


@dataclass
class LearnedGroup:
    """What one group learns: its decoder and its priors' means and log-variances, (K_g, P, Z) each."""

    decoder: Decoder
    prior_mean: nn.Parameter
    prior_logvar: nn.Parameter

    @classmethod
    def start(cls, g: GroupPlan, image_shape: tuple[int, int, int], init_logvar: float, gen: torch.Generator,
              device: torch.device) -> "LearnedGroup":
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        return cls(g.decoder(image_shape).to(device),
                   nn.Parameter(0.1 * torch.randn(k, p, z, generator=gen).to(device)),
                   nn.Parameter(torch.full((k, p, z), float(init_logvar), device=device)))

    def priors(self) -> dict[str, nn.Parameter]:
        return {"prior_mean": self.prior_mean, "prior_logvar": self.prior_logvar}

    def samples(self, classes: range, m: int, gen: torch.Generator, normalise: Normalisation) -> torch.Tensor:
        """``m`` decoded samples of each of ``classes`` (local), reparameterised so that gradients reach the
        priors and the decoder: (n, m, C, H, W) normalised."""
        n, z = len(classes), self.prior_mean.shape[-1]
        device = self.prior_mean.device
        which = torch.randint(self.prior_mean.shape[1], (n, m), generator=gen).to(device)  # (n, m) prior of each
        eps = torch.randn(n, m, z, generator=gen).to(device)
        pick = which.unsqueeze(-1).expand(n, m, z)
        mu = self.prior_mean[classes.start:classes.stop].gather(1, pick)
        logvar = self.prior_logvar[classes.start:classes.stop].gather(1, pick)
        images = self.decoder((mu + (0.5 * logvar).exp() * eps).view(n * m, z))  # (n·m, C, H, W)
        return normalise(images).view(n, m, *images.shape[1:])
