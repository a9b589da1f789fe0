"""Generative latent optimisation (GLO; Bojanowski, Joulin, Lopez-Paz & Szlam, "Optimizing the Latent Space of
Generative Networks", 2018) for D3's decoder and prior means.

- :func:`pca_latents`: latents to start from, the images' PCA projections (Sec. 3.3);
- :func:`fit_decoder`: the warm start, decoder and latents fitted jointly by Adam on pixel MSE (one-cycle schedule);
- :func:`fit_latents`: GLO's inversion, latents fitted to images through a fixed decoder (the fill, fill.py).

The warm start is an addition of ours to D3 (Qin et al. 2024), in place of DM's initialisation from real images;
benchmarks/d3-exploration.md measures what it buys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from d3codec.methods.d3.config import D3Config
from d3codec.util.progress import progress_bar

PCA_MAX_ROWS = 4096  # images the principal axes are computed from, at most (a random subset beyond)
PCA_MEMORY_BYTES = 256 << 20  # float32 images one PCA batch may hold (1 365 at 128 pixels, 5 461 at 64)


def as_pixels(x: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1] of images stored as uint8 (0 to 255), or float images unchanged."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def pca_latents(
    x: torch.Tensor, z: int, gen: torch.Generator, max_rows: int = PCA_MAX_ROWS, rows: torch.Tensor | None = None
) -> torch.Tensor:
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


def _pca_latents(
    x: torch.Tensor, z: int, gen: torch.Generator, max_rows: int, rows: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
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
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    for i in range(0, n, batch):
        total += as_pixels(x[images[i : i + batch]]).sum(0, dtype=torch.float64)
    mean = (total / n).float().unsqueeze(0)  # (1, D)
    subset = as_pixels(x[images[torch.randperm(n, generator=gen)[:batch].to(images.device)]]) - mean
    # the axes from the subset's Gram matrix (batch²; its eigenvectors give the right singular vectors):
    # a few seconds where an SVD of the (batch, D) subset takes a minute on a CPU
    values, vectors = torch.linalg.eigh(subset @ subset.T)  # ascending
    top, scale = vectors[:, -q:].flip(-1), values[-q:].flip(0).clamp_min(1e-12).sqrt()
    v = (top.T @ subset) / scale.unsqueeze(1)  # (q, D) unit principal axes, by variance
    del subset
    projected = torch.cat([(as_pixels(x[images[i : i + batch]]) - mean) @ v[:q].T for i in range(0, n, batch)])
    out[:, :q] = projected[inverse]  # (N, q)
    return out / out.std().clamp_min(1e-8), inverse


def fit_decoder(
    decoder: nn.Module,
    latents: nn.Parameter,
    targets: torch.Tensor,
    cfg: D3Config,
    gen: torch.Generator,
    progress: bool = True,
    rows: torch.Tensor | None = None,
) -> float:
    """Fit the decoder and the latents so that decoder(latents) ≈ targets (GLO).

    Adam with a one-cycle schedule peaking at ``init_lr_decoder`` / ``init_lr_priors``, batches of
    ``init_batch`` images, ``init_iterations`` steps, mean squared error in pixel space.

    Args: latents (..., Z) float32 Parameter holding N latents; targets (N, C, H, W) float32 in [0, 1], or
        uint8 (0 to 255; each batch is converted); rows (N,) int64, where given: latent i's target is
        targets[rows[i]] (targets then (M, C, H, W), any M).
    Returns: the last batch's loss.
    """
    opt = torch.optim.Adam(
        [{"params": decoder.parameters(), "lr": cfg.init_lr_decoder}, {"params": [latents], "lr": cfg.init_lr_priors}]
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, [cfg.init_lr_decoder, cfg.init_lr_priors], total_steps=cfg.init_iterations
    )
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


@torch.enable_grad()
def fit_latents(
    decoder: nn.Module,
    images: torch.Tensor,
    rows: torch.Tensor,
    start: torch.Tensor,
    lr: float,
    steps: int = FILL_STEPS,
    batch: int = FILL_BATCH,
    progress: bool = False,
) -> torch.Tensor:
    """Latents that ``decoder``, fixed, decodes to images ``images[rows]``: GLO's inversion (Bojanowski et al.
    2018, Sec. 3), ``steps`` Adam steps at ``lr`` on pixel MSE for each batch of ``batch`` latents.

    Args: images (M, C, H, W) uint8 or float32 in [0, 1]; rows (N,) int64 into images; start (N, Z) float32.
    Returns: (N, Z) float32 on ``start``'s device."""
    kept = [q.requires_grad for q in decoder.parameters()]
    decoder.requires_grad_(False)
    out = torch.empty_like(start)
    try:
        for lo in progress_bar(
            range(0, len(rows), batch), desc="D3 fill: fitting added priors", enabled=progress, unit="batch"
        ):
            latents = start[lo : lo + batch].clone().requires_grad_(True)
            target = as_pixels(images[rows[lo : lo + batch].to(images.device)]).to(start.device)
            opt = torch.optim.Adam([latents], lr=lr)
            for _ in range(steps):
                loss = F.mse_loss(decoder(latents), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            out[lo : lo + batch] = latents.detach()
    finally:
        for q, wanted in zip(decoder.parameters(), kept):
            q.requires_grad_(wanted)
    return out
