"""D2M: data-to-model distillation into a class-conditional generator, sampled at any IPC.

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
  stored as int8 with a float16 scale per output channel (d3codec.weights), its width chosen to
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

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import noise
from ..augment import DSA
from ..budget import META_RESERVE_BYTES, archive_bound
from ..checkpoint import (Checkpoint, fingerprint, flatten_optimizer, load_prefixed, restore_optimizer, restore_rng,
                          rng_tensors, weights_digest)
from ..container import Section, write_atomic
from ..data import ClassSampler, RealData
from ..errors import D3BudgetError, D3Error, D3FormatError
from ..losses import mean_embedding_loss, mmd_rbf, prediction_matching_loss
from ..models import ConvNet, parameter_shapes, upsampling_geometry
from ..teacher import Teacher, train_teacher, untrained_teacher
from ..weights import WEIGHT_DTYPES, load_stored_module, quantise_state, read_safetensors_file
from ..progress import progress_bar
from .base import DatasetSpec, Encoded, Encoder, Sampler, preset_config
from .registry import (TEACHER_OPTION, ArchiveKind, BuildContext, Method, Option, register_archive_kind,
                       register_method)

GENERATOR_WIDTHS = (4, 6, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512)
# the registry of generator architectures an archive may name: name → options of ConditionalGenerator
GENERATORS: dict[str, dict[str, int]] = {"upconv-v1": {"stem": 0}, "upconv-v2": {"stem": 4}}
ARCHITECTURE = "upconv-v2"  # what new archives use; every name in GENERATORS stays readable


class ConditionalGenerator(nn.Module):
    """(noise (N, Z) float32, labels (N,) int64) → images (N, C, H, W) float32 in [0, 1].

    h = [z ; embedding[labels]] (N, Z + E) → Linear → LeakyReLU(0.2) → (N, width, h0, w0) →
    [``stem`` > 0: Conv 3×3 to stem·width channels → GroupNorm → LeakyReLU(0.2)] →
    ``upsamples`` × [nearest ×2 → Conv 3×3 (channels halve, at least 4) → GroupNorm → LeakyReLU(0.2)]
    → Conv 3×3 → sigmoid, cropped to H×W; h0 = ⌈H / 2^upsamples⌉ (4 to 7); the GroupNorms have
    gcd(4, channels) groups. ``architecture`` is a name in GENERATORS: ``upconv-v1`` has no stem
    (DCGAN's shape, Radford et al. 2016); ``upconv-v2`` has stem 4, which moves parameters from the
    linear layer into convolutions (benchmarks/d2m-exploration.md).
    """

    def __init__(self, num_classes: int, noise_dim: int, embed_dim: int, width: int,
                 image_shape: tuple[int, int, int], architecture: str = ARCHITECTURE):
        super().__init__()
        c, stem = image_shape[0], GENERATORS[architecture]["stem"]
        self.architecture, self.image_shape = architecture, tuple(image_shape)
        self.noise_dim, self.width = noise_dim, width
        self.upsamples, self.h0, self.w0 = upsampling_geometry(image_shape)
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(noise_dim + embed_dim, width * self.h0 * self.w0)
        blocks, channels = [], width
        if stem > 0:
            channels = stem * width
            blocks += [nn.Conv2d(width, channels, 3, padding=1), nn.GroupNorm(math.gcd(4, channels), channels),
                       nn.LeakyReLU(0.2)]
        for _ in range(self.upsamples):
            out = max(4, channels // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1),
                       nn.GroupNorm(math.gcd(4, out), out), nn.LeakyReLU(0.2)]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels, c, 3, padding=1)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        x = torch.cat([noise, self.embedding(labels)], 1)  # (N, Z + E)
        x = F.leaky_relu(self.fc(x), 0.2).view(-1, self.width, self.h0, self.w0)  # (N, width, h0, w0)
        x = self.blocks(x)  # (N, max(4, stem·width / 2^u), h0·2^u, w0·2^u)
        return torch.sigmoid(self.out(x))[:, :, :h, :w]  # (N, C, H, W)


class Discriminator(nn.Module):
    """Discriminator for pre-training (never stored): (N, C, H, W) normalised images and (N,) classes →
    (realness (N,), class logits (N, K) or None).

    Three spectrally normalised convolutions (3×3 stride 1, then 4×4 stride 2 twice) of widths w,
    2w, 4w with LeakyReLU(0.2), global sum pooling to features f, a linear realness head, and the
    class condition either as a projection, realness + ⟨embed(y), f⟩ (Miyato & Koyama 2018), or as
    an auxiliary classifier head (ACGAN, Odena et al. 2017).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, conditioning: str = "projection"):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.features = nn.Sequential(
            sn(nn.Conv2d(in_channels, width, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), nn.LeakyReLU(0.2))
        self.adversarial = sn(nn.Linear(4 * width, 1))
        self.conditioning = conditioning
        if conditioning == "projection":
            self.projection = sn(nn.Embedding(num_classes, 4 * width))
        else:
            self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.features(x).sum((2, 3))  # (N, 4w)
        realness = self.adversarial(f).squeeze(1)  # (N,)
        if self.conditioning == "projection":
            return realness + (self.projection(y) * f).sum(1), None
        return realness, self.classifier(f)


CONDITIONINGS = ("projection", "auxiliary")


class PosteriorEncoder(nn.Module):
    """Encoder q(z | x, y) of VAE pre-training (never stored): (N, C, H, W) normalised images and (N,)
    classes → (mean (N, Z), log-variance (N, Z)).

    Three convolutions (3×3 stride 1, then 4×4 stride 2 twice) of widths w, 2w, 4w with
    LeakyReLU(0.2), global average pooling, the class embedding concatenated, and a linear layer to
    2Z.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, noise_dim: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(0.2))
        self.embedding = nn.Embedding(num_classes, 4 * width)
        self.head = nn.Linear(8 * width, 2 * noise_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.cat([self.features(x).mean((2, 3)), self.embedding(y)], 1)  # (N, 8w)
        mean, logvar = self.head(f).chunk(2, 1)  # (N, Z) each
        return mean, logvar.clamp(-10, 10)


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

    pretraining: str = "gan"
    pretrain_iterations: int = 20000
    pretrain_batch: int = 64
    lr_pretrain: float = 2e-4
    disc_width: int = 64
    conditioning: str = "projection"
    aux_weight: float = 1.0
    kl_weight: float = 1.0
    checkpoint_every: int = 500
    iterations: int = 1000
    lr_finetune: float = 1e-4
    synthetic_per_class: int = 64
    real_per_class: int = 128
    real_cache_per_class: int = 512
    embed_width: int = 128
    dsa: bool = True
    embedding_weight: float = 1.0
    mmd_weight: float = 0.0
    task_balance: float = 1.0
    temperature: float = 4.0
    teacher_epochs: float = 10.0
    teacher_width: int = 128
    noise_dim: int | None = None
    embed_dim: int | None = None
    generator_width: int | None = None
    max_generator_width: int | None = None
    weight_dtype: str = "int8"
    samples_per_class: int | None = None
    soft_labels: bool = False
    label_temperature: float = 1.0
    architecture: str = ARCHITECTURE


PRESETS = {
    "paper": D2MConfig(),
    # a CPU affords a few thousand pre-training iterations: the VAE, not the GAN, gives useful samples
    # in that time; the MMD term and a rate of 5e-4 lift fine-tuning (benchmarks/d2m-exploration.md)
    "fast": D2MConfig(pretraining="vae", pretrain_iterations=3000, lr_pretrain=1e-3, disc_width=32,
                      checkpoint_every=200, iterations=600, lr_finetune=5e-4, mmd_weight=1.0, synthetic_per_class=32,
                      real_per_class=64, embed_width=64, teacher_epochs=2.0, teacher_width=32),
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


def generator_shapes(architecture: str, num_classes: int, noise_dim: int, embed_dim: int, width: int,
                     image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """The generator's parameter shapes, computed without allocating them (meta device)."""
    return parameter_shapes(ConditionalGenerator, num_classes, noise_dim, embed_dim, width, image_shape, architecture)


def teacher_shapes(in_channels: int, num_classes: int, image_size: int, width: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of a ConvNet-3 teacher (d3codec.models.ConvNet), without allocating them."""
    return parameter_shapes(ConvNet, in_channels, num_classes, image_size, width=width)


def build_generator(plan: D2MPlan, num_classes: int, image_shape: tuple[int, int, int]) -> ConditionalGenerator:
    return ConditionalGenerator(num_classes, plan.noise_dim, plan.embed_dim, plan.generator_width, image_shape,
                                plan.architecture)


# ---- pre-training checkpoints: safetensors tensors + JSON metadata, written atomically ------------------------------

def save_checkpoint(path: Path, fingerprint: str, iteration: int, networks: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], gen: torch.Generator) -> None:
    """Everything pre-training needs to go on from ``iteration`` (atomically replacing ``path``):
    each network's state under ``<name>.``, each optimiser's under ``<name>.``, the random states."""
    from safetensors.torch import save

    tensors = {f"{name}.{k}": v for name, net in networks.items() for k, v in net.state_dict().items()}
    groups = {}
    for name, opt in optimizers.items():
        state, groups[name] = flatten_optimizer(opt, name)
        tensors.update(state)
    tensors.update(rng_tensors(gen))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": "d3codec-d2m-pretrain", "fingerprint": fingerprint, "iteration": str(iteration),
            "opt_groups": json.dumps(groups)}
    write_atomic(path, save(tensors, metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a pre-training checkpoint. Raises D3Error when it is not one."""
    tensors, meta = read_safetensors_file(path, "checkpoint", "; delete it to pre-train from scratch")
    if meta.get("format") != "d3codec-d2m-pretrain":
        raise D3Error(f"{path} is not a d2m pre-training checkpoint; delete it or choose another --checkpoint")
    return tensors, meta


def save_generator(path: str | os.PathLike, generator: ConditionalGenerator) -> None:
    """Write a generator's float32 weights as safetensors (for ``--generator``), its architecture and
    sizes in the header."""
    from safetensors.torch import save

    meta = {"architecture": generator.architecture, "noise_dim": str(generator.noise_dim),
            "embed_dim": str(generator.embedding.embedding_dim), "width": str(generator.width),
            "num_classes": str(generator.embedding.num_embeddings),
            "image_shape": ",".join(map(str, generator.image_shape))}
    state = {k: v.detach().float().cpu().contiguous() for k, v in generator.state_dict().items()}
    write_atomic(path, save(state, metadata=meta))


@dataclass
class PretrainedGenerator:
    """A generator given by the user (``--generator FILE``): its sizes and float32 state dict."""

    architecture: str
    noise_dim: int
    embed_dim: int
    width: int
    state: dict[str, torch.Tensor]


def load_generator(path: str | os.PathLike, num_classes: int, image_shape: tuple[int, int, int]) -> PretrainedGenerator:
    """A generator written by :func:`save_generator` (or a pre-training checkpoint's generator).

    Raises: D3Error naming the mismatch when the file is not a generator for these classes and shape.
    """
    state, meta = read_safetensors_file(path, "--generator")
    if meta.get("format") == "d3codec-d2m-pretrain":  # a checkpoint: its generator's tensors
        state = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    emb, fc = state.get("embedding.weight"), state.get("fc.weight")
    if emb is None or fc is None or emb.dim() != 2 or fc.dim() != 2:
        raise D3Error(f"--generator {path}: expected a d2m generator (embedding.weight, fc.weight, ...)")
    stated = meta.get("architecture")
    if stated is not None and stated not in GENERATORS:
        raise D3Error(f"--generator {path}: unknown architecture {stated!r}; known: {', '.join(GENERATORS)}")
    k, e = emb.shape
    z = fc.shape[1] - e
    _, h0, w0 = upsampling_geometry(image_shape)
    width = fc.shape[0] // (h0 * w0)
    if k != num_classes:
        raise D3Error(f"--generator {path}: it has {k} class embeddings, the dataset has {num_classes} classes")
    shapes = {n: tuple(v.shape) for n, v in state.items()}
    # a file that does not name its architecture (a pre-training checkpoint) is matched by its shapes
    candidates = ([stated] if stated else list(GENERATORS)) if z > 0 and width > 0 else []
    fits = [a for a in candidates if generator_shapes(a, num_classes, z, e, width, image_shape) == shapes]
    if not fits:
        raise D3Error(f"--generator {path}: its tensors do not fit {'an ' + stated if stated else 'any'} generator "
                      f"for images {tuple(image_shape)}")
    architecture = fits[0]
    return PretrainedGenerator(architecture, z, e, width, {n: v.float() for n, v in state.items()})


# ---- the encoder ------------------------------------------------------------------------------------------------

class D2MEncoder(Encoder):
    """D2M distillation. ``D2MEncoder(PRESETS["fast"], checkpoint="run.ckpt")`` or any :class:`D2MConfig`.

    Args:
        teacher: gives the predictions matched in fine-tuning (trained on the real data if None).
        generator: a pre-trained generator to fine-tune instead of pre-training one.
        checkpoint: file where pre-training checkpoints itself and resumes from (None: no checkpoint).
            It is kept after the archive is written, so that another fine-tuning can start from it.
        finetune_checkpoint: file where fine-tuning saves its state (generator, teacher, optimiser, random
            states; d3codec.checkpoint) at least ``checkpoint_seconds`` apart and after the last
            iteration, and resumes from (None: no checkpoint). Deleted once the archive is written.
    """

    method = "d2m"
    presets = PRESETS

    def __init__(self, config: D2MConfig = PRESETS["fast"], teacher: Teacher | None = None,
                 generator: PretrainedGenerator | None = None, checkpoint: str | os.PathLike | None = None,
                 finetune_checkpoint: str | os.PathLike | None = None, checkpoint_seconds: float = 300.0):
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
        self.config, self.teacher, self.generator = config, teacher, generator
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.finetune_checkpoint = Path(finetune_checkpoint) if finetune_checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds

    @classmethod
    def from_options(cls, preset: str = "fast", teacher: Teacher | None = None,
                     generator: PretrainedGenerator | None = None, checkpoint=None, finetune_checkpoint=None,
                     checkpoint_seconds: float = 300.0, **overrides) -> "D2MEncoder":
        return cls(preset_config(PRESETS, preset, overrides), teacher, generator, checkpoint, finetune_checkpoint,
                   checkpoint_seconds)

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
        teacher = [] if teacher_width is None else [Section.tensors("teacher", quantise_state(
            {n: torch.zeros(s) for n, s in teacher_shapes(shape[0], k, shape[1], teacher_width).items()}, "",
            cfg.weight_dtype), critical=False)]
        too_big = " or --no-soft-labels (the stored teacher takes part of the budget)" if teacher else ""

        def bound(width: int) -> int:
            shapes = generator_shapes(architecture, k, z, e, width, shape)
            state = quantise_state({n: torch.zeros(s) for n, s in shapes.items()}, "", cfg.weight_dtype)
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
            bounds = {w: bound(w) for w in GENERATOR_WIDTHS if w <= cap}
            fitting = [w for w, b in bounds.items() if b <= budget]
            if not fitting:
                smallest = bounds[GENERATOR_WIDTHS[0]]
                raise D3BudgetError(f"a budget of {budget} bytes cannot hold the narrowest generator (width "
                                    f"{GENERATOR_WIDTHS[0]}); the smallest budget that works is {smallest} bytes "
                                    f"(--budget {smallest}){too_big}", min_budget=smallest)
            width, needed = fitting[-1], bounds[fitting[-1]]
        return D2MPlan(architecture, z, e, width, cfg.weight_dtype, samples, needed, budget, teacher_width)

    def fingerprint(self, real: RealData, plan: D2MPlan, seed: int) -> str:
        """What pre-training depends on, hashed: the data's name, classes and shape, the generator's
        sizes, the pre-training options and the seed."""
        key = {"dataset": [real.name, list(real.classes), list(real.image_shape), len(real.train_targets)],
               "generator": [plan.architecture, plan.noise_dim, plan.embed_dim, plan.generator_width],
               "pretrain": {f: getattr(self.config, f) for f in PRETRAIN_FIELDS}, "seed": seed}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def distill(self, real: RealData, plan: D2MPlan, *, device: torch.device, seed: int,
                progress: bool = True) -> Encoded:
        """Pre-train (or take the given generator), fine-tune, and return the ``generator`` section
        (and the ``teacher`` section when the plan stores one).

        With a fine-tuning checkpoint on disk from the same run, pre-training and the teacher are
        skipped (their results are in it) and fine-tuning goes on from the iteration it reached.
        Raises: D3Error when a checkpoint belongs to another run or is damaged.
        """
        cfg, k = self.config, real.num_classes
        c, h, _ = real.image_shape
        torch.manual_seed(seed)
        mean = torch.tensor(real.mean, device=device).view(1, c, 1, 1)
        std = torch.tensor(real.std, device=device).view(1, c, 1, 1)
        normalise = lambda x: (x - mean) / std  # noqa: E731  pixel space → the networks' input

        generator = build_generator(plan, k, real.image_shape).to(device)
        # fine-tuning's state exists before pre-training, so that a checkpoint can be restored into it
        optimiser = torch.optim.Adam(generator.parameters(), lr=cfg.lr_finetune)
        rng = torch.Generator().manual_seed(seed * 1_000_003 + 29)
        sampler = ClassSampler(real, list(range(k)), cfg.real_cache_per_class, rng)
        # a teacher is needed to match predictions, and to be stored for soft labels
        own_teacher = self.teacher is None and (cfg.soft_labels or (cfg.task_balance > 0 and cfg.iterations > 0))
        teacher, ckpt, resumed = self.teacher, None, None
        if self.finetune_checkpoint is not None:
            run = self.finetune_fingerprint(real, plan, seed, device)
            ckpt = Checkpoint(self.finetune_checkpoint, "d2m-finetune", run, self.checkpoint_seconds)
            if ckpt.path.is_file():
                if own_teacher:  # a network of the teacher's shape, its weights loaded from the checkpoint
                    teacher = untrained_teacher(real.image_shape, list(range(k)), cfg.teacher_width, device)
                modules = {"generator": generator, **({"teacher": teacher.net} if own_teacher else {})}
                resumed = ckpt.resume({"adam": optimiser}, rng, device, modules=modules)

        start, first, saved = time.time(), 0, {}
        if resumed is not None:
            first, saved = resumed
            if own_teacher:
                teacher.net.eval().requires_grad_(False)
        elif self.generator is not None:
            generator.load_state_dict(self.generator.state)
        else:
            self.pretrain(generator, real, plan, normalise, device=device, seed=seed, progress=progress)
        carried = {name: float(saved[name]) for name in ("pretrain_seconds", "teacher_accuracy") if name in saved}
        pretrain_s = carried.get("pretrain_seconds", time.time() - start)

        # seconds spent fine-tuning before a kill count too
        start, teacher_acc = time.time() - float(saved.get("finetune_seconds", 0.0)), carried.get("teacher_accuracy")
        if own_teacher and resumed is None:
            teacher, teacher_acc = train_teacher(real, list(range(k)), epochs=cfg.teacher_epochs,
                                                 width=cfg.teacher_width, device=device, seed=seed, progress=progress)

        def save(iteration: int, loss: float) -> None:
            if not ckpt.due(iteration, cfg.iterations):
                return
            state = {"loss": torch.tensor(loss), "pretrain_seconds": torch.tensor(pretrain_s),
                     "finetune_seconds": torch.tensor(time.time() - start)}
            if teacher_acc is not None:
                state["teacher_accuracy"] = torch.tensor(teacher_acc)
            modules = {"generator": generator, **({"teacher": teacher.net} if own_teacher else {})}
            ckpt.save(iteration, state, {"adam": optimiser}, rng, modules)

        loss = self.finetune(generator, teacher, real, normalise, device=device, seed=seed, progress=progress,
                             optimiser=optimiser, rng=rng, sampler=sampler, first=first,
                             save=save if ckpt is not None else None)
        if loss is None and "loss" in saved:
            loss = float(saved["loss"])
        stats = {"pretrain_seconds": round(pretrain_s, 3), "finetune_seconds": round(time.time() - start, 3),
                 "distill_seconds": round(pretrain_s + time.time() - start, 3)}
        if loss is not None and math.isfinite(loss):
            stats["final_loss"] = round(loss, 6)
        if teacher_acc is not None:
            stats["teacher_accuracy"] = round(teacher_acc, 4)
        state = quantise_state({n: v.cpu() for n, v in generator.state_dict().items()}, "", cfg.weight_dtype)
        sections = [Section.tensors("generator", state)]
        if plan.teacher_width is not None:  # ancillary: a reader that does not know it still draws, hard-labelled
            stored = quantise_state({n: v.cpu() for n, v in teacher.net.state_dict().items()}, "", cfg.weight_dtype)
            sections.append(Section.tensors("teacher", stored, critical=False))
        meta = self.method_meta(plan.architecture, plan.noise_dim, plan.embed_dim, plan.generator_width,
                                plan.samples_per_class, {k_: v for k_, v in stats.items() if k_ != "distill_seconds"},
                                plan.teacher_width)
        if first:
            stats["resumed_at_iteration"] = first
        return Encoded(sections, meta, stats, cleanup=ckpt.remove if ckpt is not None else None)

    def finetune_fingerprint(self, real: RealData, plan: D2MPlan, seed: int, device: torch.device) -> str:
        """What fine-tuning's result depends on, hashed: every option, the plan, the seed, the data, the
        device type, and the given generator's and teacher's weights."""
        given_generator = weights_digest(self.generator.state) if self.generator is not None else None
        given_teacher = weights_digest(self.teacher.net.state_dict()) if self.teacher is not None else None
        return fingerprint(asdict(self.config), asdict(plan), seed, real.name, list(real.classes),
                           len(real.train_targets), device.type, given_generator, given_teacher)

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

        Raises: D3Error when the checkpoint belongs to another run or is damaged.
        """
        cfg, k = self.config, real.num_classes
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        if cfg.pretraining == "gan":
            partner_name = "discriminator"
            partner = Discriminator(real.image_shape[0], k, cfg.disc_width, cfg.conditioning).to(device)
            betas = (0.0, 0.9)
        else:
            partner_name = "encoder"
            partner = PosteriorEncoder(real.image_shape[0], k, cfg.disc_width, plan.noise_dim).to(device)
            betas = (0.9, 0.999)
        networks = {"generator": generator, partner_name: partner}
        optimizers = {f"opt.{name}": torch.optim.Adam(net.parameters(), lr=cfg.lr_pretrain, betas=betas)
                      for name, net in networks.items()}
        fingerprint, first = self.fingerprint(real, plan, seed), 0
        if self.checkpoint is not None and self.checkpoint.is_file():
            tensors, meta = load_checkpoint(self.checkpoint)
            if meta.get("fingerprint") != fingerprint:
                raise D3Error(f"checkpoint {self.checkpoint} was written by a run with other data, sizes, pre-training "
                              "options or seed; delete it, or pass another --checkpoint")
            try:
                for name, net in networks.items():
                    load_prefixed(net, tensors, name + ".")
                groups = json.loads(meta["opt_groups"])
                for name, opt in optimizers.items():
                    restore_optimizer(opt, tensors, name, groups[name])
                restore_rng(tensors, gen, device)
                first = int(meta["iteration"])
            except (KeyError, ValueError, RuntimeError) as e:
                raise D3Error(f"checkpoint {self.checkpoint} is damaged ({e}); delete it to pre-train from "
                              "scratch") from None
        step = self._gan_step if cfg.pretraining == "gan" else self._vae_step
        opt_g, opt_partner = optimizers.values()
        bar = progress_bar(range(first, cfg.pretrain_iterations), desc=f"D2M {cfg.pretraining} pre-training",
                   enabled=progress, unit="it", initial=first, total=cfg.pretrain_iterations)
        for it in bar:
            pick = torch.randint(len(real.train_targets), (cfg.pretrain_batch,), generator=gen)
            x_real = real.images_at(pick).to(device)  # (B, C, H, W) in [0, 1]
            y_real = real.train_targets[pick].to(device)
            step(generator, partner, opt_g, opt_partner, x_real, y_real, normalise, gen, k)
            done = it + 1
            if self.checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == cfg.pretrain_iterations):
                save_checkpoint(self.checkpoint, fingerprint, done, networks, optimizers, gen)

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
                 sampler: ClassSampler | None = None, first: int = 0,
                 save: Callable[[int, float], None] | None = None) -> float | None:
        """Distil: fine-tune all generator parameters (class embeddings included) with Adam on

            L = Σ_c embedding_weight · ‖mean φ(A(x_c)) − mean φ(A(G(z, c)))‖²
                + mmd_weight · MMD²_k(φ(A(G(z, c))), φ(A(x_c)))
                + task_balance · τ² · KL(mean_i p_T(A(x_c,i)) ‖ mean_j p_T(A(G(z_j, c))))

        with φ a ConvNet re-drawn at random every iteration (DM), A one DSA draw per class shared by
        both sides, p_T the teacher's softmax at temperature τ. Returns the last iteration's loss
        (None when no iteration ran).

        ``optimiser``, ``rng`` and ``sampler`` (made here when None) and ``first`` let a resumed run
        go on where it stopped; ``save(iteration, loss)``, when given, is called after every iteration
        (it decides whether a checkpoint is due).
        """
        cfg, k = self.config, real.num_classes
        if cfg.iterations <= first:
            return None
        c, h, w = real.image_shape
        gen = rng if rng is not None else torch.Generator().manual_seed(seed * 1_000_003 + 29)
        opt = optimiser if optimiser is not None else torch.optim.Adam(generator.parameters(), lr=cfg.lr_finetune)
        dsa = DSA() if cfg.dsa else None
        sampler = sampler if sampler is not None else ClassSampler(real, list(range(k)), cfg.real_cache_per_class, gen)
        m, loss_value = cfg.synthetic_per_class, float("nan")
        use_teacher = teacher is not None and cfg.task_balance > 0
        for it in progress_bar(range(first, cfg.iterations), desc="D2M distillation", enabled=progress, unit="it",
                       initial=first, total=cfg.iterations):
            net = ConvNet(c, k, h, width=cfg.embed_width).to(device).requires_grad_(False)
            opt.zero_grad(set_to_none=True)
            loss_value = 0.0
            for cl in range(k):  # the loss is a sum over classes: accumulate class by class
                noise = torch.randn(m, generator.noise_dim, generator=gen).to(device)
                synthetic = normalise(generator(noise, torch.full((m,), cl, device=device)))  # (m, C, H, W)
                x_real = normalise(sampler.sample(cl, cfg.real_per_class, gen).to(device))  # (r, C, H, W)
                if dsa is not None:  # siamese augmentation: one draw for both sides
                    params = dsa.sample(gen)
                    synthetic, x_real = dsa.apply(synthetic, params), dsa.apply(x_real, params)
                with torch.no_grad():
                    f_real = net.embed(x_real)
                f_syn = net.embed(synthetic)  # (m, D)
                loss = cfg.embedding_weight * mean_embedding_loss(f_syn, f_real)
                if cfg.mmd_weight > 0:
                    loss = loss + cfg.mmd_weight * mmd_rbf(f_syn, f_real)
                if use_teacher:
                    with torch.no_grad():
                        t_real = teacher.net(x_real)[:, teacher.out_index]  # (r, K)
                    t_syn = teacher.net(synthetic)[:, teacher.out_index]  # (m, K)
                    loss = loss + cfg.task_balance * prediction_matching_loss(t_real, t_syn, cfg.temperature)
                loss.backward()
                loss_value += loss.detach().item()
            opt.step()
            if save is not None:
                save(it + 1, loss_value)
        return loss_value


# ---- decoding -----------------------------------------------------------------------------------------------------

MAX_SAMPLES = 10_000_000  # the largest default draw an archive may declare (the decode limits apply too)


def read_params(meta: dict) -> tuple[str, int, int, int, str, int]:
    """(architecture, noise_dim, embed_dim, width, weight_dtype, default samples per class) from the
    metadata, each checked for its JSON type and range. Raises: D3FormatError naming the field."""
    from ..archive import meta_int, meta_str

    p = meta.get("params")
    if not isinstance(p, dict):
        raise D3FormatError("meta: 'params' of a d2m archive must be an object")
    return (meta_str(p, "architecture", tuple(GENERATORS), "params."), meta_int(p, "noise_dim", 1, 4096, "params."),
            meta_int(p, "embed_dim", 1, 4096, "params."), meta_int(p, "generator_width", 4, 4096, "params."),
            meta_str(p, "weight_dtype", WEIGHT_DTYPES, "params."),
            meta_int(p, "samples_per_class", 1, MAX_SAMPLES, "params."))


def read_label_params(meta: dict, has_section: bool) -> tuple[int, float] | None:
    """(teacher width, label temperature) of a d2m archive that stores a teacher, else None.

    Raises: D3FormatError when the metadata and the ``teacher`` section disagree or the values are not sane.
    """
    from ..archive import meta_int, meta_number

    p = meta["params"]
    declared = "teacher_width" in p or "label_temperature" in p
    if declared != has_section:
        raise D3FormatError("a d2m archive with a 'teacher' section needs 'params.teacher_width' and "
                            "'params.label_temperature', and one without it must not declare them")
    if not declared:
        return None
    return meta_int(p, "teacher_width", 1, 4096, "params."), meta_number(p, "label_temperature", 1e-3, 1e3, "params.")


class D2MSampler(Sampler):
    """A D2M archive's generator (and teacher, where stored), loaded (see :func:`load_sampler`)."""

    def __init__(self, reader, meta: dict, device: torch.device | str = "cpu", limits=None):
        from ..limits import DEFAULT_LIMITS, batch_size, check, network_cost

        ds = meta["dataset"]
        k, shape = len(ds["classes"]), tuple(ds["image_shape"])
        self.num_classes, self.image_shape, self.device = k, shape, device
        self.limits, self.version = limits or DEFAULT_LIMITS, tuple(reader.version)
        architecture, z, e, width, dtype, self.default = read_params(meta)
        self.noise_dim = z
        def build() -> ConditionalGenerator:  # costed on the meta device first, then loaded
            return ConditionalGenerator(k, z, e, width, shape, architecture)

        cost = network_cost(build, lambda: (torch.zeros(1, z), torch.zeros(1, dtype=torch.long)), "the generator")
        labelling = labeller_cost(meta, "teacher" in reader)
        total = cost + labelling if labelling is not None else cost
        check("values", total.parameters, self.limits, "max_parameters", "the generator and teacher")
        check("multiply-adds", total.macs, self.limits, "max_macs_per_image", "generating (and labelling) one image")
        self.batch = batch_size(total, self.limits)
        self.image_macs = total.macs
        self.generator = load_stored_module(build, reader.read_tensors("generator"), "", dtype, "generator", device,
                                            exact=True)
        self.label = load_labeller(reader, meta, device, self.limits)
        self.soft = self.label is not None

    def counts(self, samples_per_class: int | None) -> tuple[int, int]:
        n = samples_per_class or self.default
        return self.num_classes * n, self.num_classes * n * self.noise_dim

    def macs(self, samples_per_class: int | None) -> int:
        from ..limits import draw_macs

        return draw_macs(self.num_classes * (samples_per_class or self.default), self.image_macs)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """The noise of a draw of ``n`` per class, (K·N, Z) float32, row c·N + j for sample j of class c.
        Format 1.1: the counter-based noise of spec/FORMAT.md §5.4 keyed by (class, sample), so the first
        N samples of a larger draw are those of a draw of N; 1.0: one (K, N, Z) standard normal draw
        from a torch CPU generator seeded with ``seed``, as d3codec 0.1 drew it."""
        k, z = self.num_classes, self.noise_dim
        if self.version >= (1, 1):
            return torch.from_numpy(noise.normal(seed, noise.D2M_NOISE, (k, n, z))).view(k * n, z)
        return torch.randn(k, n, z, generator=torch.Generator().manual_seed(seed % (1 << 64))).view(k * n, z)

    @torch.no_grad()
    def _draw(self, samples_per_class: int | None, seed: int):
        k, n = self.num_classes, samples_per_class or self.default
        z = self.noise(n, seed)
        labels = torch.arange(k).repeat_interleave(n)  # (K·N,) class-major
        images, soft = [], []
        for i in range(0, k * n, self.batch):
            batch = self.generator(z[i:i + self.batch].to(self.device), labels[i:i + self.batch].to(self.device))
            images.append(batch.cpu())  # (B, C, H, W) in [0, 1]
            if self.label is not None:
                soft.append(self.label(batch).cpu())  # (B, K)
        return torch.cat(images), labels, torch.cat(soft) if self.label is not None else None


def load_sampler(reader, meta: dict, device: torch.device | str = "cpu", limits=None) -> D2MSampler:
    """The archive's generator, ready to draw: ``sampler(samples_per_class, seed)`` →
    (images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K) float32
    or None). ``samples_per_class`` N defaults to ``meta.params.samples_per_class``.

    Images come class by class; sample j of class c is the generator's image of noise row (c, j)
    (see :meth:`D2MSampler.noise`) and class c. Where the archive stores a teacher, each image's soft
    label is the teacher's softmax, at the stored temperature, on the image normalised with the
    dataset's mean and std.

    ``limits`` (d3codec.limits.DecodeLimits): the generator's and teacher's multiply-adds per image and
    parameters are checked at load, before any tensor is allocated; each draw's output before it is made.
    Raises: D3FormatError when the generator or teacher section does not match the metadata, or a
    network cannot run on the declared image size; D3LimitError past the limits.
    """
    return D2MSampler(reader, meta, device, limits)


def labeller_cost(meta: dict, has_section: bool):
    """The cost (d3codec.limits.NetworkCost) of the stored teacher on one image, or None without one.
    Raises: D3FormatError for a teacher that cannot run on the images (ConvNet-3 needs H = W ≥ 8)."""
    from ..limits import network_cost

    labelling = read_label_params(meta, has_section)
    if labelling is None:
        return None
    ds = meta["dataset"]
    k, (c, h, w) = len(ds["classes"]), tuple(ds["image_shape"])
    if h != w:
        raise D3FormatError(f"a d2m archive's teacher is a ConvNet-3 for square images, not {h}×{w}")
    return network_cost(lambda: ConvNet(c, k, h, width=labelling[0]), lambda: (torch.zeros(1, c, h, w),),
                        "the stored teacher (a ConvNet-3)")


def load_labeller(reader, meta: dict, device: torch.device | str = "cpu", limits=None
                  ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The archive's stored teacher as a labeller, or None when it stores none: ``label(images)``
    takes (B, C, H, W) float32 images in [0, 1] (on ``device``) and returns (B, K) float32 soft labels
    on ``device``, the teacher's softmax at the stored temperature on the normalised images. It labels
    any images of the dataset's shape, generated or real (a same-labels baseline, as DD-Ranking's).
    Raises: D3FormatError when the teacher section does not match the metadata or cannot run on the
    images; D3LimitError when it passes ``limits`` (d3codec.limits.DecodeLimits).
    """
    from ..limits import DEFAULT_LIMITS, check

    ds = meta["dataset"]
    k, (c, h, _) = len(ds["classes"]), tuple(ds["image_shape"])  # ConvNet-3 takes square images: w = h
    dtype = read_params(meta)[4]
    cost = labeller_cost(meta, "teacher" in reader)
    if cost is None:
        return None
    limits = limits or DEFAULT_LIMITS
    check("values", cost.parameters, limits, "max_parameters", "the stored teacher")
    check("multiply-adds", cost.macs, limits, "max_macs_per_image", "labelling one image")
    width, temperature = read_label_params(meta, True)
    teacher = load_stored_module(lambda: ConvNet(c, k, h, width=width), reader.read_tensors("teacher"), "", dtype,
                                 "teacher", device, exact=True)
    mean = torch.tensor(ds["mean"], dtype=torch.float32, device=device).view(1, c, 1, 1)
    std = torch.tensor(ds["std"], dtype=torch.float32, device=device).view(1, c, 1, 1)

    @torch.no_grad()
    def label(images: torch.Tensor) -> torch.Tensor:
        return F.softmax(teacher((images - mean) / std) / temperature, dim=1)  # (B, K)

    return label


def decode(reader, meta: dict, samples_per_class: int | None = None, seed: int = 0,
           device: torch.device | str = "cpu", limits=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Generate ``samples_per_class`` images per class (default: the archive's) from a D2M archive;
    see :func:`load_sampler`."""
    return load_sampler(reader, meta, device, limits)(samples_per_class, seed)


__all__ = ["D2MConfig", "D2MEncoder", "D2MPlan", "ConditionalGenerator", "GENERATORS", "PRESETS", "decode",
           "load_generator", "load_labeller", "load_sampler", "save_generator"]


def build(method: Method, preset: str, options: dict, context: BuildContext) -> "D2MEncoder":
    """The D2M encoder of ``preset`` with ``options``; ``options["teacher"]`` and ``options["generator"]``,
    files, are loaded. Pre-training checkpoints to the context's checkpoint (default
    OUTPUT.pretrain.safetensors), fine-tuning to OUTPUT.ckpt.safetensors."""
    from ..teacher import load_teacher

    teacher_file, generator_file = options.pop("teacher", None), options.pop("generator", None)
    teacher = load_teacher(teacher_file, context.image_shape, context.num_classes, context.device) \
        if teacher_file is not None else None
    generator = load_generator(generator_file, context.num_classes, context.image_shape) \
        if generator_file is not None else None
    return D2MEncoder.from_options(preset, teacher, generator, context.checkpoint_or(".pretrain.safetensors"),
                                   f"{context.output}.ckpt.safetensors", **options)


def describe_params(params: dict) -> str:
    """A D2M archive's ``meta.params`` in a few words (d3 info, and the line d3 compress ends with)."""
    teacher = (f", a ConvNet-3 teacher of width {int(params['teacher_width'])} for soft labels"
               if params.get("teacher_width") else "")
    return (f"generator {params['architecture']} of width {int(params['generator_width'])} ({params['weight_dtype']}), "
            f"noise {int(params['noise_dim'])}, class embeddings {int(params['embed_dim'])}{teacher}; draws "
            f"{int(params['samples_per_class'])} per class by default")


register_archive_kind(ArchiveKind("d2m", {"meta": True, "generator": True, "teacher": False},
                                  load_sampler=load_sampler, describe=describe_params))
register_method(Method(
    "d2m", "Data-to-model distillation (Sajedi et al. 2024): a class-conditional generator, sampled at any IPC.",
    "d2m", D2MEncoder,
    (Option("--pretraining", "pretraining", "Pre-train the generator as a conditional GAN or as the decoder of a "
            "conditional VAE.", kind="choice", choices=("gan", "vae")),
     Option("--pretrain-iterations", "pretrain_iterations", "Pre-training iterations."),
     Option("--task-balance", "task_balance", "Weight of prediction matching against embedding matching.",
            kind="float", low=0.0, high=1e6),
     Option("--generator-width", "generator_width", "Generator channels (default: fill the budget).", low=4,
            high=4096),
     Option("--soft-labels", "soft_labels", "Store the teacher itself (int8, in the budget), so that every sample "
            "drawn gets the teacher's soft label.", kind="flag"),
     Option("--generator", "generator", "Fine-tune this pre-trained generator (safetensors) instead of "
            "pre-training one.", kind="file"),
     TEACHER_OPTION),
    build=build,
    hints={"--images-per-class": "d2m archives draw any count at expansion (--samples-per-class)"},
    checkpoint_help="the pre-training checkpoint (default: OUTPUT.pretrain.safetensors, every 200 iterations in the "
    "fast preset, kept for another fine-tuning); fine-tuning checkpoints to OUTPUT.ckpt.safetensors"))
