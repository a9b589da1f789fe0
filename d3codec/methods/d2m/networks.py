"""The networks of D2M: the class-conditional generator an archive stores, and the pre-training partners
(a projection or auxiliary-classifier discriminator, a VAE's posterior encoder) that are thrown away.

Also the generator files ``--generator`` reads and save_generator writes. See encoder.py for the method.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from d3codec.errors import D3Error
from d3codec.format.container import write_atomic
from d3codec.format.text import safe_text
from d3codec.format.weights import check_state, read_safetensors_file
from d3codec.nn.models import ConvNet, parameter_shapes, upsampling_geometry

# above 512 in steps of 16, so that a large budget (ImageNet's 98 MB at IPC 2) is filled to within about 4 %
GENERATOR_WIDTHS = (
    4,
    6,
    8,
    12,
    16,
    20,
    24,
    28,
    32,
    36,
    40,
    48,
    56,
    64,
    80,
    96,
    128,
    160,
    192,
    256,
    320,
    384,
    448,
    512,
) + tuple(range(528, 2049, 16))
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

    def __init__(
        self,
        num_classes: int,
        noise_dim: int,
        embed_dim: int,
        width: int,
        image_shape: tuple[int, int, int],
        architecture: str = ARCHITECTURE,
    ):
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
            blocks += [
                nn.Conv2d(width, channels, 3, padding=1),
                nn.GroupNorm(math.gcd(4, channels), channels),
                nn.LeakyReLU(0.2),
            ]
        for _ in range(self.upsamples):
            out = max(4, channels // 2)
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, out, 3, padding=1),
                nn.GroupNorm(math.gcd(4, out), out),
                nn.LeakyReLU(0.2),
            ]
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
            sn(nn.Conv2d(in_channels, width, 3, 1, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)),
            nn.LeakyReLU(0.2),
        )
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
            nn.Conv2d(in_channels, width, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
        )
        self.embedding = nn.Embedding(num_classes, 4 * width)
        self.head = nn.Linear(8 * width, 2 * noise_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.cat([self.features(x).mean((2, 3)), self.embedding(y)], 1)  # (N, 8w)
        mean, logvar = self.head(f).chunk(2, 1)  # (N, Z) each
        return mean, logvar.clamp(-10, 10)


def generator_shapes(
    architecture: str, num_classes: int, noise_dim: int, embed_dim: int, width: int, image_shape: tuple[int, int, int]
) -> dict[str, tuple[int, ...]]:
    """The generator's parameter shapes, computed without allocating them (meta device)."""
    return parameter_shapes(ConditionalGenerator, num_classes, noise_dim, embed_dim, width, image_shape, architecture)


def teacher_shapes(in_channels: int, num_classes: int, image_size: int, width: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of a ConvNet-3 teacher (d3codec.nn.models.ConvNet), without allocating them."""
    return parameter_shapes(ConvNet, in_channels, num_classes, image_size, width=width)


PRETRAINED_PREFIX = "state.generator."  # the generator's tensors in a pre-training checkpoint


def save_generator(path: str | os.PathLike, generator: ConditionalGenerator) -> None:
    """Write a generator's float32 weights as safetensors (for ``--generator``), its architecture and
    sizes in the header."""
    meta = {
        "architecture": generator.architecture,
        "noise_dim": str(generator.noise_dim),
        "embed_dim": str(generator.embedding.embedding_dim),
        "width": str(generator.width),
        "num_classes": str(generator.embedding.num_embeddings),
        "image_shape": ",".join(map(str, generator.image_shape)),
    }
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
    state, meta = read_safetensors_file(path, "`generator`")
    path = safe_text(str(path), 300)
    if meta.get("kind") == "d2m-pretrain":  # a pre-training checkpoint (d3codec.encode.checkpoint): its generator
        state = {k[len(PRETRAINED_PREFIX) :]: v for k, v in state.items() if k.startswith(PRETRAINED_PREFIX)}
    emb, fc = state.get("embedding.weight"), state.get("fc.weight")
    if emb is None or fc is None or emb.dim() != 2 or fc.dim() != 2:
        raise D3Error(f"`generator` {path}: expected a d2m generator (embedding.weight, fc.weight, ...)")
    stated = meta.get("architecture")
    if stated is not None and stated not in GENERATORS:
        raise D3Error(
            f"`generator` {path}: unknown architecture {safe_text(repr(stated), 60)}; known: {', '.join(GENERATORS)}"
        )
    k, e = emb.shape
    z = fc.shape[1] - e
    _, h0, w0 = upsampling_geometry(image_shape)
    width = fc.shape[0] // (h0 * w0)
    if k != num_classes:
        raise D3Error(f"`generator` {path}: it has {k} class embeddings, the dataset has {num_classes} classes")
    if not (1 <= z <= 4096 and 1 <= e <= 4096 and 4 <= width <= 4096):  # an archive's ranges (spec §5.7)
        raise D3Error(
            f"`generator` {path}: noise size {z}, embedding size {e} and width {width}; d3codec reads "
            "1 to 4096, 1 to 4096 and 4 to 4096"
        )
    shapes = {n: tuple(v.shape) for n, v in state.items()}
    # a file that does not name its architecture (a pre-training checkpoint) is matched by its shapes
    candidates = [stated] if stated else list(GENERATORS)
    fits = [a for a in candidates if generator_shapes(a, num_classes, z, e, width, image_shape) == shapes]
    if not fits:
        raise D3Error(
            f"`generator` {path}: its tensors do not fit {'an ' + stated if stated else 'any'} generator "
            f"for images {tuple(image_shape)}"
        )
    architecture = fits[0]
    check_state(state, shapes, f"`generator` {path}")  # floating-point and finite
    return PretrainedGenerator(architecture, z, e, width, {n: v.float() for n, v in state.items()})
