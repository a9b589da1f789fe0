"""Method ``d2m``: data-to-model distillation into a class-conditional generator, sampled at any IPC.

After Sajedi, Khaki, Liu, Amjadian, Lawryshyn & Plataniotis, "Data-to-Model Distillation:
Data-Efficient Learning Framework" (ECCV 2024). No official code is public; what follows the paper
and what is our choice:

- **Follows the paper.** The archive is a generator's parameters and its class embeddings, nothing
  else; images are generated at expansion time, any number per class. Distillation fine-tunes a
  pre-trained generator with (i) *embedding matching*: the mean features of generated and real
  images of each class through randomly re-drawn networks, as DM (Zhao & Bilen 2023, Eq. 4), and
  (ii) *prediction matching*: the KL divergence between a teacher's predictions on real and on
  generated images at temperature τ ≈ 4, weighted by ``task_balance``.
- **Our choices.** The generator, :class:`ConditionalGenerator` (registry name ``upconv-v2``):
  noise z ~ N(0, I) concatenated with a learned class embedding, a linear layer to a 7×7 map, a
  convolution that widens it fourfold, and nearest-neighbour upsampling convolutions that halve the
  channels at each step (DCGAN's shape, Radford et al. 2016), GroupNorm rather than batch norm so
  that a sample does not depend on the batch it is drawn in. Pre-training (``pretraining``) is one
  of two generative models: a conditional GAN (the paper's choice) with the hinge loss and a spectrally normalised
  discriminator (Miyato et al. 2018) for stability on short CPU runs, conditioned by a projection
  discriminator (Miyato & Koyama 2018) or, as an option, an auxiliary classifier (ACGAN, Odena et
  al. 2017, which DiM, Wang et al. 2023, also uses); or a conditional VAE (Kingma & Welling 2014,
  Sohn et al. 2015) whose decoder is the generator and whose encoder is thrown away. On
  Fashion-MNIST the auxiliary-classifier generator collapsed to about one image per class, a known
  weakness of ACGAN; with projection the samples vary within a class, but after the 2000 iterations
  a CPU affords they are crude and some rows show the wrong garment. The VAE, in about the same
  time, gives blurred but varied samples of the right class in every row, and students learn far
  more from them (benchmarks/d2m-exploration.md). Prediction matching
  compares each class's *mean* prediction on real and on generated images (the two batches are not
  paired), with τ² scaling as in knowledge distillation (Hinton et al. 2015). Embedding matching
  uses siamese DSA, as DM does; ``mmd_weight`` adds D3's MMD term (Qin et al. 2024, Eq. 6) on the
  same features, which matches the spread of each class and not only its mean. The generator is
  stored as int8 with a float16 scale per output channel (d3codec.format.weights), its width chosen to
  fill the budget.

Pre-training checkpoints every ``checkpoint_every`` iterations (generator, discriminator or
encoder, both optimisers and every random state, in safetensors with JSON metadata, never a pickle), so a killed
run resumes and ends with the same generator as an uninterrupted run of the same seed on CPU.

Archive sections: ``generator`` {<parameter name>: int8 (ndim ≥ 2) with <name>.scale (out,)
float16, or float16}; ``embedding.weight`` (K, E) holds the class embeddings. The metadata's
``params`` gives the architecture by registry name and its sizes (never code).

**Our extension: soft labels** (``soft_labels``, off in both presets). The paper's students
train on hard labels. With this option the archive also stores the teacher, a ConvNet-3, in the
ancillary section ``teacher`` (same storage as the generator, counted in the budget, the generator
narrowing to make room), and expansion labels every sample with the teacher's softmax: knowledge
distillation (Hinton et al. 2015) on generated images, as in data-free distillation (Chen et al.
2019, DAFL), with labels recomputed for every fresh draw. Soft labels from a teacher also lift
other methods' students (the evaluation tool DD-Ranking compares against random real images under
the same soft labels for this reason), so benchmarks report hard-label rows too. On
Fashion-MNIST a stored 10-epoch teacher lifted D2M's samples by about a point, about as much as it lifted
random real images in the same bytes. That is why it is off by default (benchmarks/d2m-exploration.md).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from d3codec.data.real import ClassSampler, Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.checkpoint import weights_digest
from d3codec.encode.federated import broadcast_parameters, rank, sum_gradients, sum_over_ranks, world_size
from d3codec.encode.interface import DatasetSpec, Encoded, Encoder, preset_config
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.errors import D3BudgetError, D3Error
from d3codec.format.accounting import META_RESERVE_BYTES, archive_bound
from d3codec.format.container import Section
from d3codec.format.limits import network_cost
from d3codec.format.weights import WEIGHT_DTYPES, quantise_state, stored_zeros
from d3codec.methods.d2m.networks import (
    ARCHITECTURE,
    CONDITIONINGS,
    GENERATOR_WIDTHS,
    GENERATORS,
    ConditionalGenerator,
    Discriminator,
    PosteriorEncoder,
    PretrainedGenerator,
    generator_shapes,
    teacher_shapes,
)
from d3codec.methods.matching import (
    DistributionMatcher,
    FeatureTerm,
    PredictionTerm,
    matching_experts,
    matching_terms,
    memory_sized_chunk,
)
from d3codec.nn.augment import DSA
from d3codec.nn.losses import mean_embedding_loss, mmd_rbf
from d3codec.nn.models import ConvNet, activation_memory, saved_activation_bytes, worth_compiling
from d3codec.nn.teacher import Teacher, save_teacher, train_teacher, untrained_teacher
from d3codec.util.progress import Stage, Stages, progress_bar

PRETRAININGS = ("gan", "vae")


@dataclass(frozen=True)
class D2MConfig:
    """Options of D2M. Units: iterations; images per class (``*_per_class``) or per batch; Adam rates.

    Storage (``None`` = chosen by the budget rule of :meth:`D2MEncoder.plan`): ``noise_dim``,
    ``embed_dim``, ``generator_width``. ``samples_per_class`` is the archive's default draw
    (None: the IPC of the budget, at least 10). ``soft_labels`` stores the teacher in the archive
    (its weights as the generator's, counted in the budget) so that expansion labels every sample
    with the teacher's softmax at ``label_temperature``; the generator narrows to make room.
    """

    pretraining: str = "gan"  # "gan" (the paper) or "vae": how the generator is pre-trained
    pretrain_iterations: int = 20000  # pre-training iterations
    pretrain_batch: int = 64  # real (and generated) images per pre-training iteration
    lr_pretrain: float = 2e-4  # Adam learning rate in pre-training
    disc_width: int = 64  # channels of the discriminator or VAE encoder (thrown away)
    conditioning: str = "projection"  # the GAN's discriminator: "projection" or "auxiliary" (ACGAN)
    aux_weight: float = 1.0  # weight of the auxiliary classifier's loss (ACGAN)
    kl_weight: float = 1.0  # weight of the VAE's KL term
    checkpoint_every: int = 500  # pre-training iterations between checkpoints
    iterations: int = 1000  # fine-tuning (distillation) iterations
    lr_finetune: float = 1e-4  # Adam learning rate in fine-tuning
    synthetic_per_class: int = 64  # generated images per class and iteration
    real_per_class: int = 128  # real images per class and iteration
    real_cache_per_class: int = 512  # real images per class kept in memory for datasets on disk
    classes_per_iteration: int | None = None  # classes matched per fine-tuning iteration, drawn afresh (None: all)
    class_chunk: int | None = None  # classes per forward pass (memory, not the objective; None: memory-sized)
    embed_width: int = 128  # channels of the random ConvNet-3 that embeds both sides
    dsa: bool = True  # siamese DSA augmentation of both sides
    embedding_weight: float = 1.0  # weight of embedding matching (DM's mean term)
    mmd_weight: float = 0.0  # weight of D3's MMD term on the same features
    task_balance: float = 1.0  # weight of prediction matching (the teacher's KL)
    temperature: float = 4.0  # temperature τ of prediction matching
    teacher_epochs: float = 10.0  # epochs of a teacher trained here
    teacher_width: int = 128  # channels of a teacher trained here (ConvNet-3)
    noise_dim: int | None = None  # noise size (None: 32 up to 32 pixels a side, else 64)
    embed_dim: int | None = None  # class-embedding size (None: as noise_dim)
    generator_width: int | None = None  # generator channels (None: the widest that fits the budget)
    max_generator_width: int | None = None  # the rule's widest generator (None: no cap)
    weight_dtype: str = "int8"  # how the generator (and a stored teacher) are stored: int8 or float16
    samples_per_class: int | None = None  # the archive's default draw (None: the budget's IPC, at least 10)
    soft_labels: bool = False  # store the teacher, so that every sample drawn gets its soft label
    label_temperature: float = 1.0  # softmax temperature of those soft labels
    architecture: str = ARCHITECTURE  # the generator's registered architecture (networks.GENERATORS)
    matching: str = "dm"  # embed with random networks (dm) or DANCE's middle encoders of an expert pool (dance)
    expert_count: int = 3  # dance: experts in the pool (ConvNet-3s of embed_width; d3codec.nn.experts)
    expert_epochs: int = 2  # dance: each expert's epochs over the real training set
    calibration_weight: float = 1.0  # dance: weight of the trained expert's cross-entropy on generated images


PRESETS = {
    "paper": D2MConfig(),
    # a CPU affords a few thousand pre-training iterations: the VAE, not the GAN, gives useful samples
    # in that time; the MMD term and a rate of 5e-4 lift fine-tuning (benchmarks/d2m-exploration.md)
    "fast": D2MConfig(pretraining="vae", pretrain_iterations=3000, lr_pretrain=1e-3, disc_width=32,
                      checkpoint_every=200, iterations=600, lr_finetune=5e-4, mmd_weight=1.0, synthetic_per_class=32,
                      real_per_class=64, embed_width=64, teacher_epochs=2.0, teacher_width=32),
    # a first picture and number in minutes (README: the first five minutes), not a result to report
    "smoke": D2MConfig(pretraining="vae", pretrain_iterations=300, lr_pretrain=1e-3, disc_width=16,
                       checkpoint_every=100, iterations=30, lr_finetune=5e-4, mmd_weight=1.0, synthetic_per_class=16,
                       real_per_class=32, embed_width=32, teacher_epochs=0.5, teacher_width=16),
    # every stage at full class count with a few iterations, to find what breaks before a long run
    # (benchmarks/imagenet_rehearsal.sh); not a result
    "rehearsal": D2MConfig(pretraining="vae", pretrain_iterations=3, pretrain_batch=8, lr_pretrain=1e-3, disc_width=16,
                           checkpoint_every=10, iterations=2, classes_per_iteration=20, lr_finetune=5e-4,
                           mmd_weight=1.0, synthetic_per_class=2, real_per_class=8, embed_width=16, teacher_epochs=0.5,
                           teacher_width=16),
}

# the fields that decide pre-training: a checkpoint is resumed only by a run that agrees on them
PRETRAIN_FIELDS = ("pretraining", "pretrain_iterations", "pretrain_batch", "lr_pretrain", "disc_width", "conditioning",
                   "aux_weight", "kl_weight")


@dataclass(frozen=True)
class D2MPlan:
    """What a D2M archive stores; ``max_bytes`` is its exact upper bound (compression off)."""

    architecture: str
    noise_dim: int
    embed_dim: int
    generator_width: int
    weight_dtype: str
    samples_per_class: int
    max_bytes: int
    budget: int
    teacher_width: int | None = None  # the stored teacher's ConvNet-3 width; None: no teacher stored



def share_networks(generator: torch.nn.Module, teacher: torch.nn.Module | None, seed: int,
                   rng: torch.Generator) -> torch.Generator:
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


def run_stats(pretrain_seconds: float, finetune_seconds: float, loss: float | None,
              teacher_accuracy: float | None) -> dict:
    """The ``stats`` of a D2M run: seconds of each phase and in all, the last loss, the teacher's accuracy."""
    stats = {"pretrain_seconds": round(pretrain_seconds, 3), "finetune_seconds": round(finetune_seconds, 3),
             "distill_seconds": round(pretrain_seconds + finetune_seconds, 3)}
    if loss is not None and math.isfinite(loss):
        stats["final_loss"] = round(loss, 6)
    if teacher_accuracy is not None:
        stats["teacher_accuracy"] = round(teacher_accuracy, 4)
    return stats


def build_generator(plan: D2MPlan, num_classes: int, image_shape: tuple[int, int, int]) -> ConditionalGenerator:
    return ConditionalGenerator(num_classes, plan.noise_dim, plan.embed_dim, plan.generator_width, image_shape,
                                plan.architecture)



# ---- the encoder ------------------------------------------------------------------------------------------------

class D2MEncoder(Encoder):
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

    def __init__(self, config: D2MConfig = PRESETS["fast"], teacher: Teacher | None = None,
                 generator: PretrainedGenerator | None = None, checkpoint: str | os.PathLike | None = None,
                 finetune_checkpoint: str | os.PathLike | None = None, checkpoint_seconds: float = 300.0,
                 save_teacher: str | os.PathLike | None = None):
        if config.weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES}, not {config.weight_dtype!r}")
        for name in ("pretrain_batch", "disc_width", "checkpoint_every", "synthetic_per_class", "real_per_class",
                     "real_cache_per_class", "embed_width", "teacher_width"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")
        if config.architecture not in GENERATORS:
            raise ValueError(f"architecture must be one of {tuple(GENERATORS)}, not {config.architecture!r}")
        if config.pretraining not in PRETRAININGS:
            raise ValueError(f"pretraining must be one of {PRETRAININGS}, not {config.pretraining!r}")
        if config.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, not {config.conditioning!r}")
        for name in ("temperature", "label_temperature"):
            if getattr(config, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(config, name)}")
        if save_teacher is not None and (teacher is not None or not (
                config.soft_labels or (config.task_balance > 0 and config.iterations > 0))):
            raise ValueError("--save-teacher saves the teacher a run trains: it needs no --teacher, and a teacher to "
                             "train (--soft-labels, or prediction matching: --task-balance above 0)")
        self.config, self.teacher, self.generator = config, teacher, generator
        self.save_teacher = Path(save_teacher) if save_teacher is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.finetune_checkpoint = Path(finetune_checkpoint) if finetune_checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds

    @classmethod
    def from_options(cls, preset: str = "fast", teacher: Teacher | None = None,
                     generator: PretrainedGenerator | None = None, checkpoint=None, finetune_checkpoint=None,
                     checkpoint_seconds: float = 300.0, save_teacher=None, **overrides) -> "D2MEncoder":
        return cls(preset_config(PRESETS, preset, overrides), teacher, generator, checkpoint, finetune_checkpoint,
                   checkpoint_seconds, save_teacher)

    @property
    def kept_state(self) -> Path | None:
        """The file that holds the distilled state once fine-tuning has ended (see compress)."""
        return self.finetune_checkpoint

    def checkpoint_files(self) -> list[Path]:
        return [p for p in (self.finetune_checkpoint, self.checkpoint) if p is not None and p.is_file()]

    def method_meta(self, architecture: str, z: int, e: int, width: int, samples: int, stats: dict,
                    teacher_width: int | None = None) -> dict:
        labels = {} if teacher_width is None else {"teacher_width": teacher_width,
                                                   "label_temperature": self.config.label_temperature}
        return {"architecture": architecture, "noise_dim": z, "embed_dim": e,
                "generator_width": width, "weight_dtype": self.config.weight_dtype, "samples_per_class": samples,
                **labels, "stats": stats, "config": asdict(self.config)}

    def stored_teacher_width(self, spec: DatasetSpec) -> int | None:
        """The width of the ConvNet-3 teacher the archive will store (None without soft labels).

        Raises: D3Error when a given teacher cannot be stored: it must be a ConvNet-3 of this
        dataset's image shape with one logit per class, in class order.
        """
        if not self.config.soft_labels:
            return None
        if spec.image_shape[1] != spec.image_shape[2]:
            raise D3Error(f"soft labels need a ConvNet-3 teacher, which takes square images, not "
                          f"{spec.image_shape[1]}×{spec.image_shape[2]}: use --no-soft-labels or square images")
        if self.teacher is None:
            return self.config.teacher_width
        k, (c, h, _) = spec.num_classes, spec.image_shape
        net = self.teacher.net
        width = net.features[0].out_channels if isinstance(net, ConvNet) else None
        ordered = self.teacher.classes == list(range(k)) and self.teacher.out_index == list(range(k))
        if width is None or not ordered or teacher_shapes(c, k, h, width) != {
                n: tuple(v.shape) for n, v in net.state_dict().items()}:
            raise D3Error("the given teacher cannot be stored for soft labels: it must be a ConvNet-3 of depth 3 "
                          f"for {c}×{h}×{h} images with {k} logits in class order; give another --teacher or "
                          "--no-soft-labels")
        return width

    def plan(self, spec: DatasetSpec, budget: int, meta_for, real: RealData | None = None) -> D2MPlan:
        """Sizes that fill ``budget`` bytes, by this rule (each step overridable by a config field or
        fixed by a ``--generator``):

        1. noise and embedding dimensions 32 for images up to 32 pixels a side, else 64;
        2. generator width: the largest of GENERATOR_WIDTHS (up to ``max_generator_width``) whose
           exact archive bound (compression off, metadata reserve included, and with ``soft_labels``
           the stored teacher) fits the budget.

        Raises: D3Error when a given teacher cannot be stored for soft labels; D3BudgetError, with
        the smallest workable budget, when the narrowest generator does not fit.
        """
        cfg, k, shape = self.config, spec.num_classes, spec.image_shape
        side = max(shape[1:])
        given = self.generator
        architecture = given.architecture if given else cfg.architecture
        z = given.noise_dim if given else cfg.noise_dim or (32 if side <= 32 else 64)
        e = given.embed_dim if given else cfg.embed_dim or (32 if side <= 32 else 64)
        ipc = (meta_for({}).get("budget") or {}).get("ipc")
        samples = cfg.samples_per_class or max(10, round(ipc or 0))
        stats = {"pretrain_seconds": 0.0, "finetune_seconds": 0.0, "teacher_accuracy": 0.0, "final_loss": 0.0}
        teacher_width = self.stored_teacher_width(spec)
        teacher = [] if teacher_width is None else [Section.tensors("teacher", stored_zeros(
            teacher_shapes(shape[0], k, shape[1], teacher_width), "", cfg.weight_dtype), critical=False)]
        too_big = " or --no-soft-labels (the stored teacher takes part of the budget)" if teacher else ""

        def bound(width: int) -> int:
            state = stored_zeros(generator_shapes(architecture, k, z, e, width, shape), "", cfg.weight_dtype)
            meta = self.method_meta(architecture, z, e, width, samples, stats, teacher_width)
            sections = [Section.json("meta", meta_for(meta)), Section.tensors("generator", state), *teacher]
            return archive_bound(sections, META_RESERVE_BYTES)

        if given is not None or cfg.generator_width is not None:
            width = given.width if given else cfg.generator_width
            needed = bound(width)
            if needed > budget:
                what = "the --generator" if given else f"--generator-width {width}"
                raise D3BudgetError(f"{what} needs {needed} bytes, over the budget of {budget}: raise --budget to "
                                    f"{needed}" + ("" if given else " or lower --generator-width") + too_big,
                                    min_budget=needed)
        else:
            cap = cfg.max_generator_width or GENERATOR_WIDTHS[-1]
            per_weight = 1 if cfg.weight_dtype == "int8" else 2

            def weight_bytes(width: int) -> int:  # a lower bound of the archive, from the shapes alone
                return per_weight * sum(math.prod(s) for s in generator_shapes(architecture, k, z, e, width,
                                                                               shape).values())
            # widths whose weights alone pass the budget are never built (at ImageNet's budget, width 2 048
            # would be 0.6 G weights: gigabytes of placeholders to count)
            widths = [w for w in GENERATOR_WIDTHS if w <= cap and (w == GENERATOR_WIDTHS[0] or
                                                                   weight_bytes(w) <= budget)] or [GENERATOR_WIDTHS[0]]
            bounds = {widths[0]: bound(widths[0])}
            lo, hi = 0, len(widths) - 1  # the bound grows with the width: bisect for the widest that fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                bounds[widths[mid]] = bound(widths[mid])
                lo, hi = (mid, hi) if bounds[widths[mid]] <= budget else (lo, mid - 1)
            fitting = [widths[lo]] if bounds[widths[lo]] <= budget else []
            if not fitting:
                smallest = bounds[widths[0]]
                raise D3BudgetError(f"a budget of {budget} bytes cannot hold the narrowest generator (width "
                                    f"{widths[0]}); the smallest budget that works is {smallest} bytes "
                                    f"(--budget {smallest}){too_big}", min_budget=smallest)
            width, needed = fitting[-1], bounds[fitting[-1]]
        return D2MPlan(architecture, z, e, width, cfg.weight_dtype, samples, needed, budget, teacher_width)

    def pretrain_run(self, real: RealData, plan: D2MPlan, seed: int, device: torch.device) -> tuple:
        """What pre-training depends on (its checkpoint's fingerprint): the data's name, classes and shape, the
        generator's sizes, the pre-training options, the seed and the device type (a CPU checkpoint does not
        go on on a GPU: the random streams and the arithmetic differ)."""
        return ({"dataset": [real.name, list(real.classes), list(real.image_shape), len(real.train_targets)],
                            "generator": [plan.architecture, plan.noise_dim, plan.embed_dim, plan.generator_width],
                 "pretrain": {f: getattr(self.config, f) for f in PRETRAIN_FIELDS}, "seed": seed,
                 "device": device.type},)

    def distill(self, real: RealData, plan: D2MPlan, *, device: torch.device, seed: int,
                progress: bool = True) -> Encoded:
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
        teacher = untrained_teacher(real.image_shape, list(range(k)), cfg.teacher_width, device) \
            if own_teacher else self.teacher  # a trained one replaces it, or the checkpoint's weights fill it
        modules = {"generator": generator, **({"teacher": teacher.net} if own_teacher else {})}
        # under several ranks (torchrun, --workers) each fine-tunes its share of every iteration's classes; rank 0
        # alone pre-trains, trains the teacher and writes checkpoints (all read one: the same Adam state)
        lead = rank() == 0
        loop = ResumableLoop(self.finetune_checkpoint, "d2m-finetune", self.finetune_run(real, plan, seed, device),
                             cfg.iterations, self.checkpoint_seconds, saves=lead)
        loop.resume(LoopState(rng, optimisers={"adam": optimiser}, modules=modules), device)
        stages = self.stages(real, plan, own_teacher, progress)
        teacher = self._before_finetuning(loop, generator, teacher, own_teacher, data, plan, normalise, stages, seed,
                                          device, progress)
        modules.update({"teacher": teacher.net} if own_teacher else {})
        loop.state.generator = rng = share_networks(generator, teacher.net if own_teacher else None, seed, rng)
        if own_teacher and self.save_teacher is not None and lead:
            save_teacher(teacher, self.save_teacher, real.image_shape)
        with stages.stage("fine-tuning"):
            loss = self.finetune(generator, teacher, data, normalise, device=device, seed=seed, progress=progress,
                                 optimiser=optimiser, rng=rng, sampler=sampler, loop=loop)
        pretrain_s = loop.carry["pretrain_seconds"]
        encoded = self._encoded(generator, teacher, plan, run_stats(pretrain_s, loop.seconds - pretrain_s, loss,
                                                                    loop.carry.get("teacher_accuracy")))
        if loop.first:
            encoded.stats["resumed_at_iteration"] = loop.first
        encoded.cleanup = loop.remove if lead else None
        return encoded

    def _before_finetuning(self, loop: ResumableLoop, generator: ConditionalGenerator, teacher: Teacher | None,
                           own_teacher: bool, data: RealData, plan: D2MPlan, normalise: Callable, stages: Stages,
                           seed: int, device: torch.device, progress: bool) -> Teacher | None:
        """Pre-training (or the given generator's weights) and the teacher's training, skipped where ``loop``
        resumed (its checkpoint holds both); their seconds and the teacher's accuracy are carried by ``loop``.
        Returns: the teacher fine-tuning uses."""
        cfg, lead, began = self.config, rank() == 0, time.time()
        if loop.resumed:  # pre-training and the teacher are in the checkpoint
            for name in ("pre-training", "teacher"):
                if name in [s.name for s in stages.stages]:
                    stages.skip(name)
            if own_teacher:
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
                    data, list(range(data.num_classes)), epochs=cfg.teacher_epochs, width=cfg.teacher_width,
                    device=device, seed=seeds.stream_seed(seed, "d2m"), progress=progress)
        return teacher

    def stages(self, real: RealData, plan: D2MPlan, trains_teacher: bool, progress: bool = True) -> Stages:
        """The stages of a distillation: pre-training (unless a generator is given), the teacher (where
        one is trained here) and fine-tuning, each weighed by its multiply-adds (forward and backward taken
        as three forwards; d3codec.format.limits.network_cost), for the run's time left (d3codec.util.progress.Stages)."""
        cfg, k, (c, h, w) = self.config, real.num_classes, real.image_shape
        image, label = (lambda: torch.zeros(1, c, h, w)), (lambda: torch.zeros(1, dtype=torch.long))

        def macs(build, example) -> int:
            return network_cost(build, example, "a network of this run").macs

        generator = macs(lambda: build_generator(plan, k, real.image_shape),
                         lambda: (torch.zeros(1, plan.noise_dim), label()))
        embed = macs(lambda: ConvNet(c, k, h, width=cfg.embed_width), lambda: (image(),))
        teacher = macs(lambda: ConvNet(c, k, h, width=cfg.teacher_width), lambda: (image(),))
        out = []
        if self.generator is None:
            partner = macs(lambda: Discriminator(c, k, cfg.disc_width, cfg.conditioning), lambda: (image(), label())) \
                if cfg.pretraining == "gan" else \
                macs(lambda: PosteriorEncoder(c, k, cfg.disc_width, plan.noise_dim), lambda: (image(), label()))
            passes = 2 if cfg.pretraining == "gan" else 1  # the GAN's discriminator sees real and generated images
            out.append(Stage("pre-training", 3 * cfg.pretrain_iterations * cfg.pretrain_batch
                             * (generator + passes * partner)))
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
        sections = [Section.tensors("generator", quantise_state({n: v.cpu() for n, v in
                                                                 generator.state_dict().items()}, "", dtype))]
        if plan.teacher_width is not None:
            stored = quantise_state({n: v.cpu() for n, v in teacher.net.state_dict().items()}, "", dtype)
            sections.append(Section.tensors("teacher", stored, critical=False))
        meta = self.method_meta(plan.architecture, plan.noise_dim, plan.embed_dim, plan.generator_width,
                                plan.samples_per_class, {k: v for k, v in stats.items() if k != "distill_seconds"},
                                plan.teacher_width)
        return Encoded(sections, meta, dict(stats))

    def finetune_run(self, real: RealData, plan: D2MPlan, seed: int, device: torch.device) -> tuple:
        """What fine-tuning's result depends on (its checkpoint's fingerprint): every option, the plan, the
        seed, the data, the device type, and the given generator's and teacher's weights."""
        given_generator = weights_digest(self.generator.state) if self.generator is not None else None
        given_teacher = weights_digest(self.teacher.net.state_dict()) if self.teacher is not None else None
        return (asdict(self.config), asdict(plan), seed, real.name, list(real.classes), len(real.train_targets),
                device.type, given_generator, given_teacher)

    def pretrain(self, generator: ConditionalGenerator, real: RealData, plan: D2MPlan, normalise: Callable, *,
                 device: torch.device, seed: int, progress: bool = True) -> None:
        """Train ``generator`` in place, resuming from ``self.checkpoint``, as one of:

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
        cfg, k = self.config, real.num_classes
        gen = seeds.generator(seed, "d2m-pretrain")
        if cfg.pretraining == "gan":
            partner_name = "discriminator"
            partner = Discriminator(real.image_shape[0], k, cfg.disc_width, cfg.conditioning).to(device)
            betas = (0.0, 0.9)
        else:
            partner_name = "encoder"
            partner = PosteriorEncoder(real.image_shape[0], k, cfg.disc_width, plan.noise_dim).to(device)
            betas = (0.9, 0.999)
        networks = {"generator": generator, partner_name: partner}
        optimizers = {name: torch.optim.Adam(net.parameters(), lr=cfg.lr_pretrain, betas=betas)
                      for name, net in networks.items()}
        loop = ResumableLoop(self.checkpoint, "d2m-pretrain", self.pretrain_run(real, plan, seed, device),
                             cfg.pretrain_iterations, every_iterations=cfg.checkpoint_every)
        loop.resume(LoopState(gen, optimisers=optimizers, modules=networks), device)
        update = self._gan_step if cfg.pretraining == "gan" else self._vae_step
        opt_g, opt_partner = optimizers.values()

        def step(it: int) -> float:
            pick = torch.randint(len(real.train_targets), (cfg.pretrain_batch,), generator=gen)
            x_real = real.images_at(pick).to(device)  # (B, C, H, W) in [0, 1]
            y_real = real.train_targets[pick].to(device)
            update(generator, partner, opt_g, opt_partner, x_real, y_real, normalise, gen, k)
            return float("nan")

        loop.run(step, progress_bar(range(loop.first, cfg.pretrain_iterations), desc=f"D2M {cfg.pretraining} "
                                    "pre-training", enabled=progress, unit="it", initial=loop.first,
                                    total=cfg.pretrain_iterations))

    def _gan_step(self, generator, discriminator, opt_g, opt_d, x_real, y_real, normalise, gen, k) -> None:
        cfg, b, device = self.config, len(x_real), x_real.device
        y_fake = torch.randint(k, (b,), generator=gen).to(device)
        noise = torch.randn(b, generator.noise_dim, generator=gen).to(device)
        fake = normalise(generator(noise, y_fake))  # (B, C, H, W)
        d_real, c_real = discriminator(normalise(x_real), y_real)
        d_fake, c_fake = discriminator(fake.detach(), y_fake)
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if c_real is not None:  # auxiliary classifier
            loss_d = loss_d + cfg.aux_weight * (F.cross_entropy(c_real, y_real) + F.cross_entropy(c_fake, y_fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        d_fake, c_fake = discriminator(fake, y_fake)
        loss_g = -d_fake.mean()
        if c_fake is not None:
            loss_g = loss_g + cfg.aux_weight * F.cross_entropy(c_fake, y_fake)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    def _vae_step(self, generator, encoder, opt_g, opt_e, x_real, y_real, normalise, gen, k) -> None:
        b = len(x_real)
        mu, logvar = encoder(normalise(x_real), y_real)  # (B, Z) each
        noise = torch.randn(mu.shape, generator=gen).to(mu.device)
        recon = generator(mu + (0.5 * logvar).exp() * noise, y_real)  # (B, C, H, W) in (0, 1)
        reconstruction = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x_real, reduction="sum") / b
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / b
        loss = reconstruction + self.config.kl_weight * kl
        opt_g.zero_grad(set_to_none=True)
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        opt_e.step()

    def finetune(self, generator: ConditionalGenerator, teacher: Teacher | None, real: RealData, normalise: Callable,
                 *, device: torch.device, seed: int, progress: bool = True,
                 optimiser: torch.optim.Optimizer | None = None, rng: torch.Generator | None = None,
                 sampler: ClassSampler | None = None, loop: ResumableLoop | None = None) -> float:
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
        cfg, k = self.config, real.num_classes
        loop = loop if loop is not None else ResumableLoop(None, "d2m-finetune", (), cfg.iterations)
        if cfg.iterations <= loop.first:
            return loop.loss
        gen = rng if rng is not None else seeds.generator(seed, "d2m-finetune")
        opt = optimiser if optimiser is not None else torch.optim.Adam(generator.parameters(), lr=cfg.lr_finetune)
        sampler = sampler if sampler is not None else ClassSampler(real, list(range(k)), cfg.real_cache_per_class, gen)
        per_sample = saved_activation_bytes(  # what one generated image keeps for the backward pass
            lambda: ConditionalGenerator(k, generator.noise_dim, generator.embedding.embedding_dim, generator.width,
                                         real.image_shape, generator.architecture),
            lambda: (torch.zeros(1, generator.noise_dim), torch.zeros(1, dtype=torch.long)))
        chunk = cfg.class_chunk or memory_sized_chunk(k, cfg.synthetic_per_class, cfg.real_per_class, real.image_shape,
                                                      cfg.embed_width, activation_memory(device), per_sample)
        pool = matching_experts(cfg.matching, real, cfg.expert_count, cfg.expert_epochs, cfg.embed_width, device)
        embedded = cfg.iterations * k * (cfg.synthetic_per_class + cfg.real_per_class)
        matcher = DistributionMatcher(real.image_shape, k, sampler.sample, cfg.real_per_class, normalise,
                                      DSA() if cfg.dsa else None, cfg.embed_width, chunk, device, pool,
                                      compile=worth_compiling(embedded))
        terms = [FeatureTerm(mean_embedding_loss, cfg.embedding_weight)] + matching_terms(pool, cfg.calibration_weight)
        if cfg.mmd_weight > 0:
            terms.append(FeatureTerm(mmd_rbf, cfg.mmd_weight))
        if teacher is not None and cfg.task_balance > 0:
            terms.append(PredictionTerm(teacher, cfg.temperature, cfg.task_balance))
        m = cfg.synthetic_per_class

        def synthesize(classes) -> torch.Tensor:  # (n, m, C, H, W) normalised, for n classes
            noise = torch.randn(len(classes) * m, generator.noise_dim, generator=gen).to(device)
            labels = torch.tensor(list(classes)).repeat_interleave(m).to(device)
            return normalise(generator(noise, labels)).view(len(classes), m, *real.image_shape)

        subset, me, world = cfg.classes_per_iteration, rank(), world_size()

        def step(it: int) -> float:
            opt.zero_grad(set_to_none=True)
            # at ImageNet scale a random subset of the classes per iteration, the same on every rank (its own
            # stream per iteration, so a resumed run draws the same); sorted, so that chunks keep class order
            every = list(range(k)) if subset is None or subset >= k else \
                torch.randperm(k, generator=seeds.generator(seed, "d2m-classes", it))[:subset].sort().values.tolist()
            mine = every[me::world]  # this rank's share (all of them in one process)
            loss = matcher.step(synthesize, terms, gen, None if mine == list(range(k)) else mine)
            if world > 1:  # every rank steps on the gradient summed over all the classes
                sum_gradients(list(generator.parameters()))
                loss = sum_over_ranks(loss)
            opt.step()
            return loss

        return loop.run(step, progress_bar(range(loop.first, cfg.iterations), desc="D2M distillation",
                                           enabled=progress, unit="it", initial=loop.first, total=cfg.iterations))
