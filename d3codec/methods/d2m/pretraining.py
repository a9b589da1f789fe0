"""D2M's pre-training of the generator: a conditional GAN (the paper's choice) or a conditional VAE.

Sajedi et al., "Data-to-Model Distillation" (ECCV 2024) pre-train a conditional GAN before distilling;
the hinge loss with a spectrally normalised projection discriminator (Miyato et al. 2018; Miyato &
Koyama 2018) or an auxiliary classifier (ACGAN, Odena et al. 2017), and the VAE (Kingma & Welling 2014;
Sohn et al. 2015), are our choices (d3codec.methods.d2m.encoder's docstring says why).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from d3codec.data.real import Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.methods.d2m.config import PRETRAIN_FIELDS, D2MConfig, D2MPlan
from d3codec.methods.d2m.networks import ConditionalGenerator, Discriminator, PosteriorEncoder
from d3codec.util.progress import progress_bar


def pretrain_run(config: D2MConfig, real: RealData, plan: D2MPlan, seed: int, device: torch.device) -> tuple:
    """What pre-training depends on (its checkpoint's fingerprint): the data's name, classes and shape, the
    generator's sizes, the pre-training options, the seed and the device type (a CPU checkpoint does not
    go on on a GPU: the random streams and the arithmetic differ)."""
    return (
        {
            "dataset": [real.name, list(real.classes), list(real.image_shape), len(real.train_targets)],
            "generator": [plan.architecture, plan.noise_dim, plan.embed_dim, plan.generator_width],
            "pretrain": {f: getattr(config, f) for f in PRETRAIN_FIELDS},
            "seed": seed,
            "device": device.type,
        },
    )


def pretrain(
    config: D2MConfig,
    checkpoint: Path | None,
    generator: ConditionalGenerator,
    real: RealData,
    plan: D2MPlan,
    normalise: Normalisation,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
) -> None:
    """Train ``generator`` in place, resuming from ``checkpoint`` (None: no checkpoint), as one of:

    - ``pretraining="gan"``: a conditional GAN with the hinge loss. Per iteration, a batch of
      ``pretrain_batch`` real images (uniform over the training set) and as many generated ones
      with random classes: the discriminator minimises relu(1 − D(x, y)) + relu(1 + D(G(z, y'), y'))
      and the generator −D(G(z, y'), y'); with ``conditioning="auxiliary"`` (ACGAN) D ignores y
      and both add aux_weight · cross-entropy of the auxiliary classifier (on real and generated
      images for D, on generated ones for G).
    - ``pretraining="vae"``: a conditional VAE (Kingma & Welling 2014; Sohn et al. 2015) with the
      generator as its decoder and a :class:`PosteriorEncoder` (width ``disc_width``) that is
      thrown away: per batch of real (x, y), z = μ + σ·ε with (μ, log σ²) = q(x, y), minimise
      Σ_pixels BCE(G(z, y), x) + kl_weight · KL(N(μ, σ²) ‖ N(0, I)), per image.

    The checkpoint (d3codec.encode.checkpoint, kind ``d2m-pretrain``) is written every ``checkpoint_every``
    iterations and at the end. Raises: D3Error when it belongs to another run or is damaged.
    """
    cfg = config
    gen = seeds.generator(seed, "d2m-pretrain")
    partner_name, partner, betas = pretrain_partner(cfg, real, plan, device)
    networks: dict[str, torch.nn.Module] = {"generator": generator, partner_name: partner}
    optimizers: dict[str, torch.optim.Optimizer] = {
        name: torch.optim.Adam(net.parameters(), lr=cfg.lr_pretrain, betas=betas) for name, net in networks.items()
    }
    loop = ResumableLoop(
        checkpoint,
        "d2m-pretrain",
        pretrain_run(cfg, real, plan, seed, device),
        cfg.pretrain_iterations,
        every_iterations=cfg.checkpoint_every,
    )
    loop.resume(LoopState(gen, optimisers=optimizers, modules=networks), device)
    opt_g, opt_partner = optimizers.values()

    def step(it: int) -> float:
        pretrain_step(cfg, generator, partner, opt_g, opt_partner, real, normalise, gen, device)
        return float("nan")

    loop.run(
        step,
        progress_bar(
            range(loop.first, cfg.pretrain_iterations),
            desc=f"D2M {cfg.pretraining} pre-training",
            enabled=progress,
            unit="it",
            initial=loop.first,
            total=cfg.pretrain_iterations,
        ),
    )


def pretrain_partner(
    config: D2MConfig, real: RealData, plan: D2MPlan, device: torch.device
) -> tuple[str, Discriminator | PosteriorEncoder, tuple[float, float]]:
    """The network pre-training trains beside the generator, under its checkpoint name, and both networks'
    Adam betas: the GAN's discriminator with (0, 0.9), or the VAE's posterior encoder with (0.9, 0.999),
    either of width ``disc_width``."""
    c, k = real.image_shape[0], real.num_classes
    if config.pretraining == "gan":
        return "discriminator", Discriminator(c, k, config.disc_width, config.conditioning).to(device), (0.0, 0.9)
    return "encoder", PosteriorEncoder(c, k, config.disc_width, plan.noise_dim).to(device), (0.9, 0.999)


def pretrain_step(
    config: D2MConfig,
    generator: ConditionalGenerator,
    partner: Discriminator | PosteriorEncoder,
    opt_g: torch.optim.Optimizer,
    opt_partner: torch.optim.Optimizer,
    real: RealData,
    normalise: Normalisation,
    gen: torch.Generator,
    device: torch.device,
) -> None:
    """One pre-training iteration: ``pretrain_batch`` real images drawn uniformly over the training set
    with ``gen``, then the GAN's step (gan_step) or the VAE's (vae_step), by ``partner``'s kind."""
    k = real.num_classes
    pick = torch.randint(len(real.train_targets), (config.pretrain_batch,), generator=gen)
    x_real = real.images_at(pick).to(device)  # (B, C, H, W) in [0, 1]
    y_real = real.train_targets[pick].to(device)
    if isinstance(partner, Discriminator):
        gan_step(config, generator, partner, opt_g, opt_partner, x_real, y_real, normalise, gen, k)
    else:
        vae_step(config, generator, partner, opt_g, opt_partner, x_real, y_real, normalise, gen, k)


def gan_step(
    config: D2MConfig,
    generator: ConditionalGenerator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
    normalise: Normalisation,
    gen: torch.Generator,
    k: int,
) -> None:
    """One hinge-loss step of the conditional GAN on real images ``x_real`` (B, C, H, W) in [0, 1] of classes
    ``y_real`` (B,): the discriminator's, then the generator's on B images of random classes of ``k``."""
    b, device = len(x_real), x_real.device
    y_fake = torch.randint(k, (b,), generator=gen).to(device)
    noise = torch.randn(b, generator.noise_dim, generator=gen).to(device)
    fake = normalise(generator(noise, y_fake))  # (B, C, H, W)
    d_real, c_real = discriminator(normalise(x_real), y_real)
    d_fake, c_fake = discriminator(fake.detach(), y_fake)
    loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    if c_real is not None:  # auxiliary classifier
        loss_d = loss_d + config.aux_weight * (F.cross_entropy(c_real, y_real) + F.cross_entropy(c_fake, y_fake))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    d_fake, c_fake = discriminator(fake, y_fake)
    loss_g = -d_fake.mean()
    if c_fake is not None:
        loss_g = loss_g + config.aux_weight * F.cross_entropy(c_fake, y_fake)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()


def vae_step(
    config: D2MConfig,
    generator: ConditionalGenerator,
    encoder: PosteriorEncoder,
    opt_g: torch.optim.Optimizer,
    opt_e: torch.optim.Optimizer,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
    normalise: Normalisation,
    gen: torch.Generator,
    k: int,
) -> None:
    """One step of the conditional VAE on real images ``x_real`` (B, C, H, W) in [0, 1] of classes ``y_real``
    (B,): the per-image binary cross-entropy of the reconstruction plus ``kl_weight`` times the KL term."""
    b = len(x_real)
    mu, logvar = encoder(normalise(x_real), y_real)  # (B, Z) each
    noise = torch.randn(mu.shape, generator=gen).to(mu.device)
    recon = generator(mu + (0.5 * logvar).exp() * noise, y_real)  # (B, C, H, W) in (0, 1)
    reconstruction = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x_real, reduction="sum") / b
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / b
    loss = reconstruction + config.kl_weight * kl
    opt_g.zero_grad(set_to_none=True)
    opt_e.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    opt_e.step()
