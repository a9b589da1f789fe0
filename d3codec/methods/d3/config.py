"""Options of method ``d3`` (:class:`D3Config`) and its presets (``PRESETS``: paper, fast, smoke, rehearsal).

The fields' units and meaning are in their comments; d3codec.methods.d3.encoder documents the method (Qin, Deng &
Alvarez-Melis 2024) and d3codec.methods.d3.planning the budget rule that the storage fields left at None follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from d3codec.methods.d3.layout import DECODER_DTYPES, MAX_TOP_K_CLASSES, PRIOR_DTYPES


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

    def __post_init__(self) -> None:
        if self.decoder_dtype not in DECODER_DTYPES:
            raise ValueError(f"decoder dtype must be one of {DECODER_DTYPES}, not {self.decoder_dtype!r}")
        if self.prior_dtype not in PRIOR_DTYPES:
            raise ValueError(f"prior dtype must be one of {PRIOR_DTYPES}, not {self.prior_dtype!r}")
        for name in (
            "real_per_class",
            "synthetic_per_class",
            "embed_width",
            "class_chunk",
            "real_cache_per_class",
            "subtasks",
            "teacher_width",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.label_top_k is not None and not 0 <= self.label_top_k <= MAX_TOP_K_CLASSES:
            raise ValueError(
                f"`label_top_k` must be from 0 (whole rows) to {MAX_TOP_K_CLASSES}, not {self.label_top_k}"
            )


PRESETS = {
    "paper": D3Config(),
    "fast": D3Config(
        iterations=300,
        init_iterations=2000,
        init_logvar=-4.0,
        real_per_class=64,
        synthetic_per_class=32,
        embed_width=64,
        teacher_epochs=2.0,
        teacher_width=32,
    ),
    # a first picture and number in minutes (README: the first five minutes), not a result to report
    "smoke": D3Config(
        iterations=30,
        init_iterations=300,
        init_logvar=-4.0,
        real_per_class=32,
        synthetic_per_class=16,
        embed_width=32,
        teacher_epochs=0.5,
        teacher_width=16,
    ),
    # every stage at full class count with a few iterations, to find what breaks before a long run
    # (benchmarks/imagenet_rehearsal.sh); not a result
    "rehearsal": D3Config(
        iterations=2,
        init_iterations=4,
        init_batch=32,
        init_logvar=-4.0,
        real_per_class=8,
        synthetic_per_class=2,
        embed_width=16,
        teacher_epochs=0.5,
        teacher_width=16,
    ),
}
