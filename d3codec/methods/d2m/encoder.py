"""Method ``d2m``: data-to-model distillation into a class-conditional generator, sampled at any IPC.

After Sajedi, Khaki, Liu, Amjadian, Lawryshyn & Plataniotis, "Data-to-Model Distillation: Data-Efficient Learning
Framework" (ECCV 2024; no official code). The archive is a generator's parameters and class embeddings, nothing else;
images are generated at expansion time, any number per class. As the paper does, distillation fine-tunes a
pre-trained generator by embedding matching (mean features through re-drawn random networks, DM's Eq. 4, Zhao &
Bilen 2023, with siamese DSA; ``mmd_weight`` adds D3's MMD, Qin et al. 2024, Eq. 6) and prediction matching (KL
between each class's mean teacher prediction on real and generated images at τ ≈ 4, τ²-scaled as in Hinton et al.
2015, weighted by ``task_balance``). Our choices: :class:`ConditionalGenerator` (``upconv-v2``, DCGAN's shape with
GroupNorm, so a sample does not depend on its batch); ``pretraining`` by a conditional GAN (the paper's; hinge loss,
spectral norm, projection or ACGAN discriminator) or a conditional VAE whose decoder is the generator; int8 weights
with a float16 scale per output channel, width filling the budget; resumable safetensors checkpoints. Sections
``generator`` and ``embedding.weight`` (K, E); ``params`` names the architecture. ``soft_labels`` (ours, off by
default) also stores a ConvNet-3 teacher (section ``teacher``) that labels every draw (Chen et al. 2019, DAFL).
measurements: benchmarks/method-notes.md
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from d3codec.data.real import ClassSampler, Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.checkpoint import weights_digest
from d3codec.encode.federated import rank
from d3codec.encode.interface import DatasetSpec, Encoded, Encoder, MetaFor, preset_config
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.format.container import Section
from d3codec.format.limits import network_cost
from d3codec.format.weights import quantise_state
from d3codec.methods.d2m.config import PRESETS, D2MConfig, D2MPlan
from d3codec.methods.d2m.finetuning import finetune, share_networks
from d3codec.methods.d2m.networks import (
    ConditionalGenerator,
    Discriminator,
    PosteriorEncoder,
    PretrainedGenerator,
)
from d3codec.methods.d2m.pretraining import pretrain, pretrain_run
from d3codec.methods.d2m.sizing import generator_meta, plan_generator, stored_teacher_width
from d3codec.nn.models import ConvNet
from d3codec.nn.teacher import Teacher, save_teacher, train_teacher, untrained_teacher
from d3codec.util.progress import Stage, Stages


def run_stats(
    pretrain_seconds: float, finetune_seconds: float, loss: float | None, teacher_accuracy: float | None
) -> dict:
    """The ``stats`` of a D2M run: seconds of each phase and in all, the last loss, the teacher's accuracy."""
    stats = {
        "pretrain_seconds": round(pretrain_seconds, 3),
        "finetune_seconds": round(finetune_seconds, 3),
        "distill_seconds": round(pretrain_seconds + finetune_seconds, 3),
    }
    if loss is not None and math.isfinite(loss):
        stats["final_loss"] = round(loss, 6)
    if teacher_accuracy is not None:
        stats["teacher_accuracy"] = round(teacher_accuracy, 4)
    return stats


def build_generator(plan: D2MPlan, num_classes: int, image_shape: tuple[int, int, int]) -> ConditionalGenerator:
    return ConditionalGenerator(
        num_classes, plan.noise_dim, plan.embed_dim, plan.generator_width, image_shape, plan.architecture
    )


# ---- the encoder ------------------------------------------------------------------------------------------------


class D2MEncoder(Encoder[D2MPlan]):
    """D2M distillation. ``D2MEncoder(PRESETS["fast"], checkpoint="run.ckpt")`` or any :class:`D2MConfig`.

    Args:
        teacher: gives the predictions matched in fine-tuning (trained on the real data if None).
        generator: a pre-trained generator to fine-tune instead of pre-training one.
        save_teacher: where to write the teacher trained here, for ``--teacher`` in later runs.
        checkpoint: file where pre-training checkpoints itself and resumes from (None: no checkpoint).
            It is kept after the archive is written, so that another fine-tuning can start from it.
        finetune_checkpoint: file where fine-tuning saves its state (generator, teacher, optimiser, random
            states; d3codec.encode.checkpoint) at least ``checkpoint_seconds`` apart and after the last
            iteration, and resumes from (None: no checkpoint). Deleted once the archive is written.
    """

    method = "d2m"
    data_parallel = True  # under torch.distributed the ranks share each fine-tuning iteration's classes
    presets = PRESETS

    def __init__(
        self,
        config: D2MConfig = PRESETS["fast"],
        teacher: Teacher | None = None,
        generator: PretrainedGenerator | None = None,
        checkpoint: str | os.PathLike | None = None,
        finetune_checkpoint: str | os.PathLike | None = None,
        checkpoint_seconds: float = 300.0,
        save_teacher: str | os.PathLike | None = None,
    ):
        if save_teacher is not None and (
            teacher is not None or not (config.soft_labels or (config.task_balance > 0 and config.iterations > 0))
        ):
            raise ValueError(
                "`save_teacher` saves the teacher a run trains: it needs no `teacher`, and a teacher to "
                "train (`soft_labels`, or prediction matching: `task_balance` above 0)"
            )
        self.config, self.teacher, self.generator = config, teacher, generator
        self.save_teacher = Path(save_teacher) if save_teacher is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.finetune_checkpoint = Path(finetune_checkpoint) if finetune_checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds

    @classmethod
    def from_options(
        cls,
        preset: str = "fast",
        teacher: Teacher | None = None,
        generator: PretrainedGenerator | None = None,
        checkpoint=None,
        finetune_checkpoint=None,
        checkpoint_seconds: float = 300.0,
        save_teacher=None,
        **overrides,
    ) -> "D2MEncoder":
        return cls(
            preset_config(PRESETS, preset, overrides),
            teacher,
            generator,
            checkpoint,
            finetune_checkpoint,
            checkpoint_seconds,
            save_teacher,
        )

    @property
    def kept_state(self) -> Path | None:
        """The file that holds the distilled state once fine-tuning has ended (see compress)."""
        return self.finetune_checkpoint

    def checkpoint_files(self) -> list[Path]:
        return [p for p in (self.finetune_checkpoint, self.checkpoint) if p is not None and p.is_file()]

    def method_meta(
        self, architecture: str, z: int, e: int, width: int, samples: int, stats: dict, teacher_width: int | None = None
    ) -> dict:
        """The method metadata (sizing.generator_meta) under this encoder's options."""
        return generator_meta(self.config, architecture, z, e, width, samples, stats, teacher_width)

    def stored_teacher_width(self, spec: DatasetSpec) -> int | None:
        """The width of the ConvNet-3 teacher the archive will store (None without soft labels).

        Raises: D3Error when a given teacher cannot be stored (sizing.stored_teacher_width).
        """
        return stored_teacher_width(self.config, self.teacher, spec)

    def plan(self, spec: DatasetSpec, budget: int, meta_for: MetaFor, real: RealData | None = None) -> D2MPlan:
        """Sizes that fill ``budget`` bytes (sizing.plan_generator: the widest generator that fits, with
        the stored teacher where ``soft_labels`` is on; fixed by a given ``generator``).

        Raises: D3Error when a given teacher cannot be stored for soft labels; D3BudgetError, with
        the smallest workable budget, when the narrowest generator does not fit.
        """
        return plan_generator(self.config, spec, budget, meta_for, generator=self.generator, teacher=self.teacher)

    def pretrain_run(self, real: RealData, plan: D2MPlan, seed: int, device: torch.device) -> tuple:
        """What pre-training depends on (its checkpoint's fingerprint; pretraining.pretrain_run)."""
        return pretrain_run(self.config, real, plan, seed, device)

    def distill(
        self, real: RealData, plan: D2MPlan, *, device: torch.device, seed: int, progress: bool = True
    ) -> Encoded:
        """Pre-train (or take the given generator), fine-tune, and return the ``generator`` section
        (and the ``teacher`` section when the plan stores one).

        With a fine-tuning checkpoint on disk from the same run, pre-training and the teacher are
        skipped (their results are in it) and fine-tuning goes on from the iteration it reached.
        Raises: D3Error when a checkpoint belongs to another run or is damaged.
        """
        cfg, k = self.config, real.num_classes
        torch.manual_seed(seeds.stream_seed(seed, "d2m"))  # the random networks draw from the global generator
        normalise = Normalisation.of(real, device)
        generator = build_generator(plan, k, real.image_shape).to(device)
        # fine-tuning's state exists before pre-training, so that a checkpoint can be restored into it
        optimiser = torch.optim.Adam(generator.parameters(), lr=cfg.lr_finetune)
        rng = seeds.generator(seed, "d2m-finetune")
        # a dataset on disk is read once, in parallel, into an in-memory subset that pre-training, the
        # teacher and fine-tuning all use (data.ClassSampler; in memory already: the dataset itself)
        sampler = ClassSampler(real, list(range(k)), cfg.real_cache_per_class, rng)
        data = sampler.real
        # a teacher is needed to match predictions, and to be stored for soft labels
        own_teacher = self.teacher is None and (cfg.soft_labels or (cfg.task_balance > 0 and cfg.iterations > 0))
        teacher = (
            untrained_teacher(real.image_shape, list(range(k)), cfg.teacher_width, device)
            if own_teacher
            else self.teacher
        )  # a trained one replaces it, or the checkpoint's weights fill it
        modules = {"generator": generator, **({"teacher": teacher.net} if own_teacher and teacher else {})}
        # under several ranks (torchrun, --workers) each fine-tunes its share of every iteration's classes; rank 0
        # alone pre-trains, trains the teacher and writes checkpoints (all read one: the same Adam state)
        lead = rank() == 0
        loop = self._finetune_loop(real, plan, seed, device, lead)
        state = LoopState(rng, optimisers={"adam": optimiser}, modules=modules)
        loop.resume(state, device)
        stages = self.stages(real, plan, own_teacher, progress)
        teacher = self._before_finetuning(
            loop, generator, teacher, own_teacher, data, plan, normalise, stages, seed, device, progress
        )
        modules.update({"teacher": teacher.net} if own_teacher and teacher else {})
        state.generator = rng = share_networks(generator, teacher.net if own_teacher and teacher else None, seed, rng)
        if own_teacher and teacher and self.save_teacher is not None and lead:
            save_teacher(teacher, self.save_teacher, real.image_shape)
        with stages.stage("fine-tuning"):
            loss = self.finetune(
                generator,
                teacher,
                data,
                normalise,
                device=device,
                seed=seed,
                progress=progress,
                optimiser=optimiser,
                rng=rng,
                sampler=sampler,
                loop=loop,
            )
        return self._result(loop, generator, teacher, plan, loss, lead)

    def _finetune_loop(
        self, real: RealData, plan: D2MPlan, seed: int, device: torch.device, lead: bool
    ) -> ResumableLoop:
        """Fine-tuning's loop over ``iterations``, checkpointed to ``finetune_checkpoint`` at least
        ``checkpoint_seconds`` apart (written by the ``lead`` rank alone) under this run's fingerprint."""
        return ResumableLoop(
            self.finetune_checkpoint,
            "d2m-finetune",
            self.finetune_run(real, plan, seed, device),
            self.config.iterations,
            self.checkpoint_seconds,
            saves=lead,
        )

    def _result(
        self,
        loop: ResumableLoop,
        generator: ConditionalGenerator,
        teacher: Teacher | None,
        plan: D2MPlan,
        loss: float,
        lead: bool,
    ) -> Encoded:
        """The encoded sections with the run's stats (seconds of each phase from ``loop``, the last ``loss``,
        the iteration a resumed run went on from), and the checkpoint's removal (the ``lead`` rank's)."""
        pretrain_s = loop.carry["pretrain_seconds"]
        encoded = self._encoded(
            generator,
            teacher,
            plan,
            run_stats(pretrain_s, loop.seconds - pretrain_s, loss, loop.carry.get("teacher_accuracy")),
        )
        if loop.first:
            encoded.stats["resumed_at_iteration"] = loop.first
        encoded.cleanup = loop.remove if lead else None
        return encoded

    def _before_finetuning(
        self,
        loop: ResumableLoop,
        generator: ConditionalGenerator,
        teacher: Teacher | None,
        own_teacher: bool,
        data: RealData,
        plan: D2MPlan,
        normalise: Normalisation,
        stages: Stages,
        seed: int,
        device: torch.device,
        progress: bool,
    ) -> Teacher | None:
        """Pre-training (or the given generator's weights) and the teacher's training, skipped where ``loop``
        resumed (its checkpoint holds both); their seconds and the teacher's accuracy are carried by ``loop``.
        Returns: the teacher fine-tuning uses."""
        cfg, lead, began = self.config, rank() == 0, time.time()
        if loop.resumed:  # pre-training and the teacher are in the checkpoint
            for name in ("pre-training", "teacher"):
                if name in [s.name for s in stages.stages]:
                    stages.skip(name)
            if own_teacher and teacher:
                teacher.net.eval().requires_grad_(False)
            loop.carry.setdefault("pretrain_seconds", 0.0)
            return teacher
        if self.generator is not None:
            generator.load_state_dict(self.generator.state)
        elif lead:
            with stages.stage("pre-training"):
                self.pretrain(generator, data, plan, normalise, device=device, seed=seed, progress=progress)
        loop.carry["pretrain_seconds"] = time.time() - began
        if own_teacher and lead:
            with stages.stage("teacher"):
                teacher, loop.carry["teacher_accuracy"] = train_teacher(
                    data,
                    list(range(data.num_classes)),
                    epochs=cfg.teacher_epochs,
                    width=cfg.teacher_width,
                    device=device,
                    seed=seeds.stream_seed(seed, "d2m"),
                    progress=progress,
                )
        return teacher

    def stages(self, real: RealData, plan: D2MPlan, trains_teacher: bool, progress: bool = True) -> Stages:
        """The stages of a distillation: pre-training (unless a generator is given), the teacher (where
        one is trained here) and fine-tuning, each weighed by its multiply-adds (forward and backward taken
        as three forwards; d3codec.format.limits.network_cost), for the run's time left
        (d3codec.util.progress.Stages)."""
        cfg, k, (c, h, w) = self.config, real.num_classes, real.image_shape
        image, label = (lambda: torch.zeros(1, c, h, w)), (lambda: torch.zeros(1, dtype=torch.long))

        def macs(build, example) -> int:
            return network_cost(build, example, "a network of this run").macs

        generator = macs(
            lambda: build_generator(plan, k, real.image_shape), lambda: (torch.zeros(1, plan.noise_dim), label())
        )
        embed = macs(lambda: ConvNet(c, k, h, width=cfg.embed_width), lambda: (image(),))
        teacher = macs(lambda: ConvNet(c, k, h, width=cfg.teacher_width), lambda: (image(),))
        out = []
        if self.generator is None:
            partner = (
                macs(lambda: Discriminator(c, k, cfg.disc_width, cfg.conditioning), lambda: (image(), label()))
                if cfg.pretraining == "gan"
                else macs(lambda: PosteriorEncoder(c, k, cfg.disc_width, plan.noise_dim), lambda: (image(), label()))
            )
            passes = 2 if cfg.pretraining == "gan" else 1  # the GAN's discriminator sees real and generated images
            out.append(
                Stage("pre-training", 3 * cfg.pretrain_iterations * cfg.pretrain_batch * (generator + passes * partner))
            )
        if trains_teacher:
            out.append(Stage("teacher", 3 * cfg.teacher_epochs * len(real.train_targets) * teacher))
        m, r = cfg.synthetic_per_class, cfg.real_per_class
        predictions = (3 * m + r) * teacher if cfg.task_balance > 0 else 0
        matched = min(k, cfg.classes_per_iteration or k)
        per_class = 3 * m * (generator + embed) + r * embed + predictions
        out.append(Stage("fine-tuning", cfg.iterations * matched * per_class))
        return Stages("D2M", out, enabled=progress)

    def _encoded(self, generator: ConditionalGenerator, teacher: Teacher | None, plan: D2MPlan, stats: dict) -> Encoded:
        """The ``generator`` section, and the ancillary ``teacher`` where the plan stores one (a reader that
        does not know it still draws, hard-labelled)."""
        dtype = self.config.weight_dtype
        sections = [
            Section.tensors(
                "generator", quantise_state({n: v.cpu() for n, v in generator.state_dict().items()}, "", dtype)
            )
        ]
        if plan.teacher_width is not None:
            assert teacher is not None  # soft labels: a teacher was given, or trained here
            stored = quantise_state({n: v.cpu() for n, v in teacher.net.state_dict().items()}, "", dtype)
            sections.append(Section.tensors("teacher", stored, critical=False))
        meta = self.method_meta(
            plan.architecture,
            plan.noise_dim,
            plan.embed_dim,
            plan.generator_width,
            plan.samples_per_class,
            {k: v for k, v in stats.items() if k != "distill_seconds"},
            plan.teacher_width,
        )
        return Encoded(sections, meta, dict(stats))

    def finetune_run(self, real: RealData, plan: D2MPlan, seed: int, device: torch.device) -> tuple:
        """What fine-tuning's result depends on (its checkpoint's fingerprint): every option, the plan, the
        seed, the data, the device type, and the given generator's and teacher's weights."""
        given_generator = weights_digest(self.generator.state) if self.generator is not None else None
        given_teacher = weights_digest(self.teacher.net.state_dict()) if self.teacher is not None else None
        return (
            asdict(self.config),
            asdict(plan),
            seed,
            real.name,
            list(real.classes),
            len(real.train_targets),
            device.type,
            given_generator,
            given_teacher,
        )

    def pretrain(
        self,
        generator: ConditionalGenerator,
        real: RealData,
        plan: D2MPlan,
        normalise: Normalisation,
        *,
        device: torch.device,
        seed: int,
        progress: bool = True,
    ) -> None:
        """Train ``generator`` in place as a conditional GAN or VAE (pretraining.pretrain), resuming from
        ``self.checkpoint``. Raises: D3Error when the checkpoint belongs to another run or is damaged."""
        pretrain(
            self.config, self.checkpoint, generator, real, plan, normalise, device=device, seed=seed, progress=progress
        )

    def finetune(
        self,
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
        """Distil: fine-tune ``generator`` by embedding and prediction matching (finetuning.finetune, which
        gives the loss). Returns the last iteration's loss (NaN when none ran); ``optimiser``, ``rng``,
        ``sampler`` and ``loop`` let a resumed run go on where it stopped."""
        return finetune(
            self.config,
            generator,
            teacher,
            real,
            normalise,
            device=device,
            seed=seed,
            progress=progress,
            optimiser=optimiser,
            rng=rng,
            sampler=sampler,
            loop=loop,
        )
