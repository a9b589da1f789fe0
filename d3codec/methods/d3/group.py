"""One group of method ``d3`` distilled: a subtask of its classes (Qin, Deng & Alvarez-Melis 2024, Sec. 3.3).

:class:`GroupDistiller` runs a group's stages in order, in a checkpointed loop that D3Encoder.distill_group
(encoder.py) seeds and sets up: its teacher (trained here, or the given one restricted to the group's
classes), the warm start (generative latent optimisation, glo.py), matching (d3codec.methods.matching), the soft
labels (one per prior, Sec. 3.4: labels.py) and the fill (fill.py: priors added to every class with the
bytes the priors' compression left). :class:`LearnedGroup` holds what a group learns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from d3codec.data.real import ClassSampler, Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.format.weights import dequantise_state, quantise_state
from d3codec.methods.d3 import fill, planning
from d3codec.methods.d3.config import D3Config
from d3codec.methods.d3.glo import DUPLICATE_JITTER, FILL_STEPS, fit_decoder, fit_latents, pca_latents
from d3codec.methods.d3.labels import LABEL_MEMORY_BYTES, decoder_activation_bytes, decoder_map_bytes, label_means
from d3codec.methods.d3.layout import (
    GroupPlan,
    dequantise_priors,
    group_entry,
    group_tensors,
    quantise_priors,
)
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
from d3codec.nn.models import Decoder, activation_memory, worth_compiling
from d3codec.nn.teacher import Teacher, save_teacher, train_teacher, untrained_teacher
from d3codec.util.progress import Stages

# The fill's work is at most this share of the decoder passes the group made before it (its warm start's and
# matching's); fitting a mean takes FILL_STEPS passes forward and back. A count, not a time, so that a seed
# gives the same archive on any machine. The ImageNet rehearsal's 20 images a class gave priors that zstd
# stores in a tenth of the plan's bytes: filling them would have taken hours a subtask on a CPU (10 minutes
# fitted 5 000 of 161 400; benchmarks/imagenet-rehearsal.md), for a run of 2 matching iterations.
FILL_WORK_SHARE = 0.5


def fill_allowance(cfg: D3Config, g: GroupPlan) -> int:
    """The most priors a class the fill may add to group ``g`` (FILL_WORK_SHARE of its decoder passes)."""
    passes = cfg.iterations * g.num_classes * cfg.synthetic_per_class + cfg.init_iterations * cfg.init_batch
    return int(FILL_WORK_SHARE * passes / (FILL_STEPS * g.num_classes))


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


@dataclass
class LearnedGroup:
    """What one group learns: its decoder and its priors' means and log-variances, (K_g, P, Z) each."""

    decoder: Decoder
    prior_mean: nn.Parameter
    prior_logvar: nn.Parameter

    @classmethod
    def start(
        cls,
        g: GroupPlan,
        image_shape: tuple[int, int, int],
        init_logvar: float,
        gen: torch.Generator,
        device: torch.device,
    ) -> LearnedGroup:
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        return cls(
            g.decoder(image_shape).to(device),
            nn.Parameter(0.1 * torch.randn(k, p, z, generator=gen).to(device)),
            nn.Parameter(torch.full((k, p, z), float(init_logvar), device=device)),
        )

    def priors(self) -> dict[str, torch.Tensor]:
        return {"prior_mean": self.prior_mean, "prior_logvar": self.prior_logvar}

    def samples(self, classes: range, m: int, gen: torch.Generator, normalise: Normalisation) -> torch.Tensor:
        """``m`` decoded samples of each of ``classes`` (local), reparameterised so that gradients reach the
        priors and the decoder: (n, m, C, H, W) normalised."""
        n, z = len(classes), self.prior_mean.shape[-1]
        device = self.prior_mean.device
        which = torch.randint(self.prior_mean.shape[1], (n, m), generator=gen).to(device)  # (n, m) prior of each
        eps = torch.randn(n, m, z, generator=gen).to(device)
        pick = which.unsqueeze(-1).expand(n, m, z)
        mu = self.prior_mean[classes.start : classes.stop].gather(1, pick)
        logvar = self.prior_logvar[classes.start : classes.stop].gather(1, pick)
        images = self.decoder((mu + (0.5 * logvar).exp() * eps).view(n * m, z))  # (n·m, C, H, W)
        return normalise(images).view(n, m, *images.shape[1:])


@dataclass(frozen=True)
class GroupDistiller:
    """Distils the groups of a D3 plan with ``config``. ``teacher``: the given teacher (None: each group trains
    its own); ``save_teacher``: where to write the teacher trained here (one group only)."""

    config: D3Config
    teacher: Teacher | None = None
    save_teacher: Path | None = None

    def run(
        self,
        real: RealData,
        g: GroupPlan,
        index: int,
        loop: ResumableLoop,
        stages: Stages,
        named: dict[str, str],
        gen: torch.Generator,
        seed: int,
        group_seed: int,
        device: torch.device,
        progress: bool = True,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Distil group ``g`` (number ``index``) in ``loop``, resuming where its checkpoint stopped: the run's
        ``seed``; ``group_seed``, the group's stream seed, which seeded ``gen`` (the group's draws) and the global
        generator (D3Encoder.distill_group); progress in ``stages`` (``named``: the group's stage names,
        D3Encoder.stage_names). Returns: (tensors by section, keyed g{index}.*; the group's metadata entry)."""
        cfg = self.config
        # a dataset on disk is read once, in parallel, into an in-memory subset of the group's classes that the
        # teacher, the warm start and matching all use; from its own stream, so that a resumed run (which
        # skips the warm start's draws) caches the same images
        sampler = ClassSampler(
            real, list(range(g.start, g.stop)), cfg.real_cache_per_class, seeds.generator(seed, "d3-real-cache", index)
        )
        state, teacher, own_teacher = self.start(loop, g, sampler, named, stages, gen, group_seed, device, progress)
        normalise = Normalisation.of(real, device)
        opt = torch.optim.Adam(
            [
                {"params": state.decoder.parameters(), "lr": cfg.lr_decoder},
                {"params": list(state.priors().values()), "lr": cfg.lr_priors},
            ]
        )
        pool = matching_experts(
            cfg.matching, real, cfg.expert_count, cfg.expert_epochs, cfg.embed_width, device, progress
        )
        matcher = self.matcher(g, real.image_shape, sampler, normalise, device, pool)
        terms = self.terms(teacher) + matching_terms(pool, cfg.calibration_weight)
        self.resume(loop, state, opt, teacher if own_teacher else None, real.image_shape, gen, device)

        def step(it: int) -> float:
            opt.zero_grad(set_to_none=True)
            loss = matcher.step(lambda chunk: state.samples(chunk, cfg.synthetic_per_class, gen, normalise), terms, gen)
            opt.step()
            return loss

        loop.run(
            step,
            stages.bar(named["matching"], range(loop.first, cfg.iterations), cfg.iterations, loop.first, unit="it"),
        )
        return self.finish(
            g, index, state, loop, sampler.real, teacher, normalise, gen, stages.stage(named["soft labels"]), progress
        )

    def resume(
        self,
        loop: ResumableLoop,
        state: LearnedGroup,
        opt: torch.optim.Optimizer,
        own_teacher: Teacher | None,
        image_shape: tuple[int, int, int],
        gen: torch.Generator,
        device: torch.device,
    ) -> None:
        """Restore what ``loop``'s checkpoint holds (``gen``'s state, the priors, ``opt``, the decoder and the
        group's ``own_teacher``, None for a given one or none); then freeze that teacher and write it where
        ``save_teacher`` says, and on a fresh start checkpoint the warm start and the teacher before matching."""
        networks = {"decoder": state.decoder, **({"teacher": own_teacher.net} if own_teacher is not None else {})}
        loop.resume(LoopState(gen, state.priors(), {"adam": opt}, networks), device)
        if own_teacher is not None:
            own_teacher.net.eval().requires_grad_(False)
            if self.save_teacher is not None:
                save_teacher(own_teacher, self.save_teacher, image_shape)
        if not loop.resuming:  # the warm start and the teacher are saved before matching
            loop.save(0)

    def finish(
        self,
        g: GroupPlan,
        index: int,
        state: LearnedGroup,
        loop: ResumableLoop,
        real: RealData,
        teacher: Teacher | None,
        normalise: Normalisation,
        gen: torch.Generator,
        stage: AbstractContextManager,
        progress: bool,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Group ``g`` (number ``index``) after matching: stored (:meth:`labelled`), its soft labels (inside
        ``stage``, the soft labels' stage, where ``soft_labels`` is on), filled (:meth:`filled`, from ``real``:
        the group's cached subset) and its stats. Returns as :meth:`run`."""
        cfg, labelling = self.config, time.time()
        with stage if cfg.soft_labels else nullcontext():
            g, (priors, decoder_state, labels), added = self.filled(
                g,
                index,
                real.image_shape,
                self.labelled(state, g, real.image_shape, teacher, normalise, progress),
                state.decoder,
                real,
                teacher,
                normalise,
                gen,
                progress,
            )
        stats = group_stats(cfg, loop, labelling, added)
        return group_tensors(g, index, real.image_shape, cfg, priors, decoder_state, labels), group_entry(g, cfg, stats)

    def teacher_for(
        self, real: RealData, classes: list[int], seed: int, resuming: bool, device: torch.device, progress: bool
    ) -> tuple[Teacher | None, float | None]:
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
        return train_teacher(
            real,
            classes,
            epochs=cfg.teacher_epochs,
            width=cfg.teacher_width,
            device=device,
            seed=seed,
            progress=progress,
        )

    def warm_start(
        self, state: LearnedGroup, real: RealData, classes: list[int], gen: torch.Generator, progress: bool
    ) -> None:
        """Each prior mean decodes to one random real image of its class (GLO, :func:`fit_decoder`)."""
        cfg = self.config
        k, p, z = state.prior_mean.shape
        # the targets as indices into the training images (in memory: a dataset on disk comes as its cached
        # subset), not copies: ImageNet's plan has hundreds of priors per class and only so many images
        rows = torch.cat([real.pick_class(cl, p, gen) for cl in classes])  # (K_g·P,): prior i → image rows[i]
        if cfg.init_iterations > 0:
            assert real.train_images is not None, "D3 distils from images held in memory (a cached subset on disk)"
            images = real.train_images.to(state.prior_mean.device)  # (M, C, H, W) uint8
            rows = rows.to(images.device)
            with torch.no_grad():
                state.prior_mean.copy_(pca_latents(images.view(len(images), -1), z, gen, rows=rows).view(k, p, z))
            fit_decoder(state.decoder, state.prior_mean, images, cfg, gen, progress=progress, rows=rows)

    def matcher(
        self,
        g: GroupPlan,
        image_shape: tuple[int, int, int],
        sampler: ClassSampler,
        normalise: Normalisation,
        device: torch.device,
        pool: ExpertPool | None = None,
    ) -> DistributionMatcher:
        """The matching loop of group ``g``, its classes chunked to fit memory (at most ``class_chunk``),
        through ``pool``'s middle encoders where there is one (matching dance)."""
        cfg = self.config
        chunk = min(
            cfg.class_chunk,
            memory_sized_chunk(
                g.num_classes,
                cfg.synthetic_per_class,
                cfg.real_per_class,
                image_shape,
                cfg.embed_width,
                activation_memory(device),
                decoder_activation_bytes(g, image_shape),
            ),
        )
        embedded = cfg.iterations * g.num_classes * (cfg.synthetic_per_class + cfg.real_per_class)
        return DistributionMatcher(
            image_shape,
            g.num_classes,
            sampler.sample,
            cfg.real_per_class,
            normalise,
            DSA() if cfg.dsa else None,
            cfg.embed_width,
            chunk,
            device,
            pool,
            list(range(g.start, g.stop)),
            compile=worth_compiling(embedded),
        )

    def terms(self, teacher: Teacher | None) -> list:
        """The objective: MMD and DM's mean term on the random network's features, and on the teacher's
        where ``teacher_features`` is on."""
        cfg = self.config
        extractors: list[Callable[[torch.Tensor], torch.Tensor] | None] = [None]
        if cfg.teacher_features:
            assert teacher is not None, "teacher features need a teacher"
            extractors.append(teacher.net.embed)
        return [
            FeatureTerm(loss, weight, extractor)
            for extractor in extractors
            for loss, weight in ((mmd_rbf, cfg.mmd_weight), (mean_embedding_loss, cfg.mean_weight))
        ]

    def labelled(
        self,
        state: LearnedGroup,
        g: GroupPlan,
        image_shape: tuple[int, int, int],
        teacher: Teacher | None,
        normalise: Normalisation,
        progress: bool = True,
    ):
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
        priors = dequantise_priors(
            quantise_priors(state.prior_mean, state.prior_logvar, "", cfg.prior_dtype), "", (k, p, z), cfg.prior_dtype
        )  # (K_g, P, Z) each
        labels = self.labels(
            g, image_shape, decoder, teacher, priors[0].to(state.prior_mean.device), normalise, progress
        )
        return priors, {n: v.cpu() for n, v in decoder.state_dict().items()}, labels

    def labels(
        self,
        g: GroupPlan,
        image_shape: tuple[int, int, int],
        decoder: nn.Module,
        teacher: Teacher | None,
        means: torch.Tensor,
        normalise: Normalisation,
        progress: bool = True,
    ):
        """Soft labels of prior means (K_g, P', Z) (see :meth:`labelled`), or None without soft labels."""
        if not self.config.soft_labels:
            return None
        assert teacher is not None, "soft labels need a teacher"
        k, p, z = means.shape
        # in batches: at ImageNet's plan, 200 × 161 decoded means would take over 100 GB at once; without
        # gradients a decoded mean holds about 3 of its largest maps at a time
        rows = max(1, LABEL_MEMORY_BYTES // (3 * max(decoder_map_bytes(g, image_shape))))
        labels = tuple(
            t.view(k, p, -1)
            for t in label_means(
                decoder,
                teacher,
                means.reshape(k * p, z),
                normalise,
                self.config.label_temperature,
                g.label_top_k,
                rows,
                progress,
            )
        )
        return labels if g.label_top_k else labels[0]  # (values, indices) (K_g, P', k) each, or (K_g, P', K_g)

    def filled(
        self,
        g: GroupPlan,
        index: int,
        image_shape: tuple[int, int, int],
        labelled: tuple,
        decoder: nn.Module,
        real: RealData,
        teacher: Teacher | None,
        normalise: Normalisation,
        gen: torch.Generator,
        progress: bool = True,
        allowance: int | None = None,
    ) -> tuple[GroupPlan, tuple, int]:
        """The group with the priors its share of the budget still holds added to every class (fill.py): each
        new mean fitted to a random real image of its class through ``decoder`` (:func:`fit_latents`, from the
        class's mean latent moved by DUPLICATE_JITTER, kept within the stored priors' range so that their int8
        values do not move), its log-variance its class's mean one, its soft label the teacher's; at most
        doubling the count a round, and within what a reader's default limits load (fill.most_priors). Only
        where the plan chose the count (``fill="compressed"``, no ``priors_per_class``); at most ``allowance`` a
        class in all (default :func:`fill_allowance`). Returns (the group's plan, ``labelled`` as
        :meth:`labelled` gives it, priors added per class)."""
        cfg = self.config
        if cfg.fill != "compressed" or cfg.priors_per_class is not None:
            return g, labelled, 0
        # planning's ratio, read at run time: the plan's estimate and the fill's room stay one number
        planned = fill.planned_bytes(g, index, image_shape, cfg, planning.PRIOR_STORED_RATIO)
        first = g.priors_per_class
        (mean, logvar), decoder_state, labels = labelled
        device = next(decoder.parameters()).device
        bound = mean.abs().amax((0, 1))  # (Z,) the stored range: int8 scales, and so the old priors, unchanged
        most = fill.most_priors(g, image_shape, real.num_classes)  # what a default reader's limits allow
        most = min(most, first + (fill_allowance(cfg, g) if allowance is None else allowance))
        for _ in range(fill.FILL_ROUNDS):  # added priors may compress otherwise than the first: measure again
            added = fill.priors_to_add(
                planned,
                group_tensors(g, index, image_shape, cfg, (mean, logvar), decoder_state, labels),
                g.num_classes,
                g.priors_per_class,
            )
            added = min(added, g.priors_per_class, most - g.priors_per_class)  # at most double a round
            if added < 1:
                break
            k, _, z = mean.shape
            # prior-major: the first added prior of every class, then the second, ...
            rows = torch.stack([real.pick_class(c, added, gen) for c in range(g.start, g.stop)], 1).reshape(-1)
            start = mean.mean(1).repeat(added, 1)  # (A·K_g, Z): each class's mean latent, and apart
            start = (start + DUPLICATE_JITTER * torch.randn(start.shape, generator=gen)).to(device)  # (repeated images)
            assert real.train_images is not None, "D3 distils from images held in memory (a cached subset on disk)"
            fitted = fit_latents(decoder, real.train_images, rows, start, cfg.init_lr_priors, progress=progress).cpu()
            more = torch.maximum(torch.minimum(fitted, bound), -bound).view(added, k, z).transpose(0, 1)  # (K_g, A, Z)
            labels = fill.appended_labels(
                labels, self.labels(g, image_shape, decoder, teacher, more.to(device), normalise, progress)
            )
            mean, logvar = (
                torch.cat([mean, more], 1),
                torch.cat([logvar, logvar.mean(1, keepdim=True).expand(k, added, z)], 1),
            )
            g = replace(g, priors_per_class=g.priors_per_class + added)
        return g, ((mean, logvar), decoder_state, labels), g.priors_per_class - first

    def start(
        self,
        loop: ResumableLoop,
        g: GroupPlan,
        sampler: ClassSampler,
        named: dict,
        stages: Stages,
        gen: torch.Generator,
        group_seed: int,
        device: torch.device,
        progress: bool,
    ):
        """A group's teacher (its test accuracy carried by ``loop``) and learned state, warm-started from real
        images unless ``loop`` resumes (then both come from its checkpoint).
        Returns: (LearnedGroup, Teacher or None, whether the teacher is the group's own)."""
        cfg, classes = self.config, list(range(g.start, g.stop))
        with stages.stage(named["teacher"]):
            teacher, accuracy = self.teacher_for(sampler.real, classes, group_seed, loop.resuming, device, progress)
        if accuracy is not None:
            loop.carry["teacher_accuracy"] = accuracy
        state = LearnedGroup.start(g, sampler.real.image_shape, cfg.init_logvar, gen, device)
        if not loop.resuming:
            with stages.stage(named["warm start"]):
                self.warm_start(state, sampler.real, classes, gen, progress)
        return state, teacher, teacher is not None and self.teacher is None
