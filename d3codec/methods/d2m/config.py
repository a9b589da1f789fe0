"""D2M's options (:class:`D2MConfig`, its presets) and its plan (:class:`D2MPlan`), the sizes an archive stores.

Sajedi et al., "Data-to-Model Distillation" (ECCV 2024); the options' meaning is in
d3codec.methods.d2m.encoder's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

from d3codec.format.weights import WEIGHT_DTYPES
from d3codec.methods.d2m.networks import ARCHITECTURE, CONDITIONINGS, GENERATORS

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

    def __post_init__(self) -> None:
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES}, not {self.weight_dtype!r}")
        for name in (
            "pretrain_batch",
            "disc_width",
            "checkpoint_every",
            "synthetic_per_class",
            "real_per_class",
            "real_cache_per_class",
            "embed_width",
            "teacher_width",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.architecture not in GENERATORS:
            raise ValueError(f"architecture must be one of {tuple(GENERATORS)}, not {self.architecture!r}")
        if self.pretraining not in PRETRAININGS:
            raise ValueError(f"pretraining must be one of {PRETRAININGS}, not {self.pretraining!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, not {self.conditioning!r}")
        for name in ("temperature", "label_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")


PRESETS = {
    "paper": D2MConfig(),
    # a CPU affords a few thousand pre-training iterations: the VAE, not the GAN, gives useful samples
    # in that time; the MMD term and a rate of 5e-4 lift fine-tuning (benchmarks/d2m-exploration.md)
    "fast": D2MConfig(
        pretraining="vae",
        pretrain_iterations=3000,
        lr_pretrain=1e-3,
        disc_width=32,
        checkpoint_every=200,
        iterations=600,
        lr_finetune=5e-4,
        mmd_weight=1.0,
        synthetic_per_class=32,
        real_per_class=64,
        embed_width=64,
        teacher_epochs=2.0,
        teacher_width=32,
    ),
    # a first picture and number in minutes (README: the first five minutes), not a result to report
    "smoke": D2MConfig(
        pretraining="vae",
        pretrain_iterations=300,
        lr_pretrain=1e-3,
        disc_width=16,
        checkpoint_every=100,
        iterations=30,
        lr_finetune=5e-4,
        mmd_weight=1.0,
        synthetic_per_class=16,
        real_per_class=32,
        embed_width=32,
        teacher_epochs=0.5,
        teacher_width=16,
    ),
    # every stage at full class count with a few iterations, to find what breaks before a long run
    # (benchmarks/imagenet_rehearsal.sh); not a result
    "rehearsal": D2MConfig(
        pretraining="vae",
        pretrain_iterations=3,
        pretrain_batch=8,
        lr_pretrain=1e-3,
        disc_width=16,
        checkpoint_every=10,
        iterations=2,
        classes_per_iteration=20,
        lr_finetune=5e-4,
        mmd_weight=1.0,
        synthetic_per_class=2,
        real_per_class=8,
        embed_width=16,
        teacher_epochs=0.5,
        teacher_width=16,
    ),
}

# the fields that decide pre-training: a checkpoint is resumed only by a run that agrees on them
PRETRAIN_FIELDS = (
    "pretraining",
    "pretrain_iterations",
    "pretrain_batch",
    "lr_pretrain",
    "disc_width",
    "conditioning",
    "aux_weight",
    "kl_weight",
)


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
