"""D2M's distillation: fine-tuning the pre-trained generator by embedding and prediction matching.

After Sajedi et al., "Data-to-Model Distillation" (ECCV 2024): embedding matching through randomly
re-drawn networks as DM (Zhao & Bilen 2023, Eq. 4), optionally D3's MMD term (Qin et al. 2024, Eq. 6), and
prediction matching against a teacher at temperature τ; the loop is d3codec.methods.matching's, class by class.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from d3codec.data.real import ClassSampler, Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.federated import broadcast_parameters, rank, sum_gradients, sum_over_ranks, world_size
from d3codec.encode.loop import ResumableLoop
from d3codec.methods.d2m.config import D2MConfig
from d3codec.methods.d2m.networks import ConditionalGenerator
from d3codec.methods.matching import (
    DistributionMatcher,
    FeatureTerm,
    MatchingTerm,
    PredictionTerm,
    matching_experts,
    matching_terms,
    memory_sized_chunk,
)
from d3codec.nn.augment import DSA
from d3codec.nn.losses import mean_embedding_loss, mmd_rbf
from d3codec.nn.models import activation_memory, saved_activation_bytes, worth_compiling
from d3codec.nn.teacher import Teacher
from d3codec.util.progress import progress_bar


def share_networks(
    generator: torch.nn.Module, teacher: torch.nn.Module | None, seed: int, rng: torch.Generator
) -> torch.Generator:
    """Under several ranks (d3codec.encode.federated), give every rank rank 0's generator and teacher (trained
    there), seed fine-tuning's random networks alike on every rank, and return this rank's generator of
    real batches, augmentations and noise: ``rng`` on rank 0, its own stream elsewhere. In one process:
    ``rng``, nothing changed."""
    if world_size() == 1:
        return rng
    broadcast_parameters(generator)
    if teacher is not None:
        broadcast_parameters(teacher)
        teacher.eval().requires_grad_(False)
    torch.manual_seed(seeds.stream_seed(seed, "d2m", 1))
    return rng if rank() == 0 else seeds.generator(seed, "d2m-finetune", rank())


def matcher_and_terms(
    config: D2MConfig,
    generator: ConditionalGenerator,
    teacher: Teacher | None,
    real: RealData,
    sampler: ClassSampler,
    normalise: Normalisation,
    device: torch.device,
) -> tuple[DistributionMatcher, list[MatchingTerm]]:
    """Fine-tuning's matching loop (its classes per forward pass sized to the device's memory unless
    ``class_chunk`` is set, its expert pool for DANCE) and its terms: embedding matching, DANCE's
    calibration, the MMD term where ``mmd_weight`` > 0, prediction matching where there is a teacher and
    ``task_balance`` > 0."""
    cfg, k = config, real.num_classes
    per_sample = saved_activation_bytes(  # what one generated image keeps for the backward pass
        lambda: ConditionalGenerator(
            k,
            generator.noise_dim,
            generator.embedding.embedding_dim,
            generator.width,
            real.image_shape,
            generator.architecture,
        ),
        lambda: (torch.zeros(1, generator.noise_dim), torch.zeros(1, dtype=torch.long)),
    )
    chunk = cfg.class_chunk or memory_sized_chunk(
        k,
        cfg.synthetic_per_class,
        cfg.real_per_class,
        real.image_shape,
        cfg.embed_width,
        activation_memory(device),
        per_sample,
    )
    pool = matching_experts(cfg.matching, real, cfg.expert_count, cfg.expert_epochs, cfg.embed_width, device)
    embedded = cfg.iterations * k * (cfg.synthetic_per_class + cfg.real_per_class)
    matcher = DistributionMatcher(
        real.image_shape,
        k,
        sampler.sample,
        cfg.real_per_class,
        normalise,
        DSA() if cfg.dsa else None,
        cfg.embed_width,
        chunk,
        device,
        pool,
        compile=worth_compiling(embedded),
    )
    terms = [FeatureTerm(mean_embedding_loss, cfg.embedding_weight)] + matching_terms(pool, cfg.calibration_weight)
    if cfg.mmd_weight > 0:
        terms.append(FeatureTerm(mmd_rbf, cfg.mmd_weight))
    if teacher is not None and cfg.task_balance > 0:
        terms.append(PredictionTerm(teacher, cfg.temperature, cfg.task_balance))
    return matcher, terms


def synthesizer(
    generator: ConditionalGenerator,
    normalise: Normalisation,
    m: int,
    image_shape: tuple[int, int, int],
    gen: torch.Generator,
    device: torch.device,
) -> Callable[[Sequence[int]], torch.Tensor]:
    """What draws the synthetic side of a matching step: for n classes, ``m`` images each from noise
    z ~ N(0, I) drawn with ``gen``, normalised, as (n, m, C, H, W)."""

    def synthesize(classes: Sequence[int]) -> torch.Tensor:
        noise = torch.randn(len(classes) * m, generator.noise_dim, generator=gen).to(device)
        labels = torch.tensor(list(classes)).repeat_interleave(m).to(device)
        return normalise(generator(noise, labels)).view(len(classes), m, *image_shape)

    return synthesize


def iteration_classes(k: int, subset: int | None, seed: int, it: int, me: int, world: int) -> list[int] | None:
    """This rank's (``me`` of ``world``) classes at iteration ``it``, None for all ``k``. At ImageNet scale
    (``subset`` below ``k``) a random subset of ``subset`` classes per iteration, the same on every rank (its
    own stream per iteration, so a resumed run draws the same); sorted, so that chunks keep class order."""
    every = (
        list(range(k))
        if subset is None or subset >= k
        else torch.randperm(k, generator=seeds.generator(seed, "d2m-classes", it))[:subset].sort().values.tolist()
    )
    mine = every[me::world]  # this rank's share (all of them in one process)
    return None if mine == list(range(k)) else mine


def finetune(
    config: D2MConfig,
    generator: ConditionalGenerator,
    teacher: Teacher | None,
    real: RealData,
    normalise: Normalisation,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
    optimiser: torch.optim.Optimizer | None = None,
    rng: torch.Generator | None = None,
    sampler: ClassSampler | None = None,
    loop: ResumableLoop | None = None,
) -> float:
    """Distil: fine-tune all generator parameters (class embeddings included) with Adam on

        L = Σ_c embedding_weight · ‖mean φ(A(x_c)) − mean φ(A(G(z, c)))‖²
            + mmd_weight · MMD²_k(φ(A(G(z, c))), φ(A(x_c)))
            + task_balance · τ² · KL(mean_i p_T(A(x_c,i)) ‖ mean_j p_T(A(G(z_j, c))))

    with φ a ConvNet re-drawn at random every iteration (DM), A one DSA draw per class shared by
    both sides, p_T the teacher's softmax at temperature τ (the loop of d3codec.methods.matching,
    class by class). Returns the last iteration's loss (NaN when none ran).

    ``optimiser``, ``rng`` and ``sampler`` (made here when None) and ``loop`` (d3codec.encode.loop, resumed
    from the run's checkpoint; by default one without a file) let a resumed run go on where it stopped.
    """
    cfg, k = config, real.num_classes
    loop = loop if loop is not None else ResumableLoop(None, "d2m-finetune", (), cfg.iterations)
    if cfg.iterations <= loop.first:
        return loop.loss
    gen = rng if rng is not None else seeds.generator(seed, "d2m-finetune")
    opt = optimiser if optimiser is not None else torch.optim.Adam(generator.parameters(), lr=cfg.lr_finetune)
    sampler = sampler if sampler is not None else ClassSampler(real, list(range(k)), cfg.real_cache_per_class, gen)
    matcher, terms = matcher_and_terms(cfg, generator, teacher, real, sampler, normalise, device)
    synthesize = synthesizer(generator, normalise, cfg.synthetic_per_class, real.image_shape, gen, device)
    subset, me, world = cfg.classes_per_iteration, rank(), world_size()

    def step(it: int) -> float:
        opt.zero_grad(set_to_none=True)
        loss = matcher.step(synthesize, terms, gen, iteration_classes(k, subset, seed, it, me, world))
        if world > 1:  # every rank steps on the gradient summed over all the classes
            sum_gradients(list(generator.parameters()))
            loss = sum_over_ranks(loss)
        opt.step()
        return loss

    return loop.run(
        step,
        progress_bar(
            range(loop.first, cfg.iterations),
            desc="D2M distillation",
            enabled=progress,
            unit="it",
            initial=loop.first,
            total=cfg.iterations,
        ),
    )
