"""Networks of the field's evaluation protocol.

ConvNet-3 follows the DatasetCondensation / DM / MTT code: depth × [Conv 3×3 (width) →
instance norm (GroupNorm(width, width, affine)) → ReLU → AvgPool 2×2] → Linear. For 28×28 inputs
the first convolution pads by 3 so the feature map is 32×32, as in that code.

:class:`Decoder` is the small upsampling network that turns latents into images (d3's decoders,
d2m's generators).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("convnet3", "resnet18", "mlp", "lenet")
# a training run of at least this many image-steps (epochs × images) is compiled where it may be ("auto"):
# compiling costs 5 to 30 s once and saves about 30 % of every ConvNet-3 step on a CPU (benchmarks/cpu-time.md),
# so short runs and the tests stay eager
COMPILE_MIN_IMAGE_STEPS = 100_000


class ConvNet(nn.Module):
    """ConvNet-D (D = ``depth``) for (N, C, H, W) float32 inputs, normalised.

    ``embed(x)`` returns the flattened features before the classifier: (N, width · h · w) with
    h = w = (H + extra padding) / 2^depth.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        size = image_size + 4 if image_size == 28 else image_size  # padding 3 on the first conv for 28×28
        for i in range(depth):
            pad = 3 if (i == 0 and image_size == 28) else 1
            layers += [
                nn.Conv2d(channels, width, 3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)  # (N, width·h·w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (N, num_classes) logits


def worth_compiling(image_steps: int) -> bool:
    """Whether a run that passes ``image_steps`` images through a network (epochs × images, or iterations ×
    images embedded) is long enough to compile (COMPILE_MIN_IMAGE_STEPS)."""
    return image_steps >= COMPILE_MIN_IMAGE_STEPS


def compiled(
    net: Callable[[torch.Tensor], torch.Tensor], enabled: bool, dynamic: bool | None = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` (a module, or a module's method such as ``embed``) through torch.compile where ``enabled`` and it
    works here, else eager.

    Compilation happens at the first call and needs a C++ compiler on a CPU; where it fails (no compiler,
    an unsupported platform) the same call runs eagerly and every later one too, with one warning. The
    parameters stay ``net``'s own, so testing and saving use ``net`` as usual. ``dynamic``: torch.compile's
    (False: a graph per input shape; None: shapes made dynamic once they vary).
    """
    if not enabled:
        return net
    fast = torch.compile(net, dynamic=dynamic)
    failed = False

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal failed
        if not failed:
            try:
                return fast(x)
            except Exception as error:  # noqa: BLE001 - any backend failure: eager is always correct
                warnings.warn(f"torch.compile failed here ({type(error).__name__}); training goes on eagerly")
                failed = True
        return net(x)

    return forward


def parameter_shapes(module: type[nn.Module], *args, **kwargs) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``module(*args, **kwargs)``, computed on the meta device (no memory):
    what an archive's stored tensors are checked against before any is loaded."""
    with torch.device("meta"):
        return {name: tuple(value.shape) for name, value in module(*args, **kwargs).state_dict().items()}


# activations one forward and backward step may hold: half a GiB on a CPU keeps an ImageNet-scale encode within
# 4 GB (DM's 1 000 classes at 64 px held 1.5 GB of images, gradients and momentum beside its matching chunk);
# on CUDA, a share of the memory free when the step is sized
CPU_ACTIVATION_BYTES = 512 << 20
CUDA_MEMORY_SHARE = 0.5


def activation_memory(device: torch.device) -> int:
    """Bytes of activations one step may hold on ``device`` (matching chunks, teacher micro-batches):
    CPU_ACTIVATION_BYTES on a CPU (beyond a few classes a chunk, a larger one is no faster there),
    CUDA_MEMORY_SHARE of the free memory on CUDA (where it is)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_SHARE)
    return CPU_ACTIVATION_BYTES


def saved_activation_bytes(build: Callable[[], nn.Module], example: Callable[[], tuple]) -> int:
    """Bytes of the tensors autograd saves for the backward pass in one forward pass of ``build()`` on
    ``example()`` (one sample), counted on the meta device (no memory, no arithmetic): what one sample
    holds until its backward pass. A tensor saved twice counts twice, so it errs high."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.device("meta"):
        module, inputs = build(), example()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(*inputs)
    return total


def upsampling_geometry(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(u, h0, w0) of the upsampling networks (Decoder, d2m's generator) for images (C, H, W):
    u = max(0, ⌊log2(min(H, W) / 4)⌋) doublings from an h0 × w0 map, h0 = ⌈H / 2^u⌉, w0 = ⌈W / 2^u⌉."""
    _, h, w = image_shape
    u = max(0, int(math.log2(max(min(h, w), 4) / 4)))
    return u, math.ceil(h / 2**u), math.ceil(w / 2**u)


DECODER_ARCHITECTURES = ("uniform", "tapered")


def decoder_stage_widths(architecture: str, width: int, upsamples: int) -> list[int]:
    """Channels c_0 … c_u of a :class:`Decoder`'s maps: all ``width`` (uniform), or halved at every upsampling
    and at least 4 (tapered: c_0 = width, c_{i+1} = max(4, ⌊c_i / 2⌋), as d2m's upconv generators).
    Raises: ValueError for an unknown architecture."""
    if architecture == "uniform":
        return [width] * (upsamples + 1)
    if architecture == "tapered":
        out = [width]
        for _ in range(upsamples):
            out.append(max(4, out[-1] // 2))
        return out
    raise ValueError(f"unknown decoder architecture {architecture!r}; known: {', '.join(DECODER_ARCHITECTURES)}")


class Decoder(nn.Module):
    """Latents (N, Z) float32 → images (N, C, H, W) float32 in [0, 1].

    Linear(Z → width·h0·w0) → ``upsamples`` × [nearest ×2 → Conv 3×3 (c_i → c_{i+1}) → GroupNorm →
    LeakyReLU(0.2)] → Conv 3×3 → sigmoid, with h0 = ⌈H / 2^upsamples⌉ (4 to 7) and a crop to H×W at the
    end. ``architecture`` "uniform" keeps every map ``width`` wide (d3's decoder); "tapered" halves the
    channels at every upsampling (decoder_stage_widths), so the full-resolution stage, 96 % of a uniform
    width-256 decoder's multiply-adds at 64 pixels, costs as much as each smaller one.
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], width: int, architecture: str = "uniform"):
        super().__init__()
        c = image_shape[0]
        if architecture == "uniform" and width > 3 and width % 4:  # spec/FORMAT.md §5.3, whatever the image size
            raise ValueError(
                f"a uniform decoder's width must be 1, 2, 3 or a multiple of 4 (its GroupNorms have "
                f"min(4, width) groups), not {width}"
            )
        self.image_shape = image_shape
        self.upsamples, self.h0, self.w0 = upsampling_geometry(image_shape)
        self.width, self.architecture = width, architecture
        widths = decoder_stage_widths(architecture, width, self.upsamples)
        self.fc = nn.Linear(latent_dim, width * self.h0 * self.w0)
        blocks = []
        for i in range(self.upsamples):
            groups = min(4, widths[i + 1]) if architecture == "uniform" else math.gcd(4, widths[i + 1])
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i], widths[i + 1], 3, padding=1),
                nn.GroupNorm(groups, widths[i + 1]),
                nn.LeakyReLU(0.2),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(widths[-1], c, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        x = F.leaky_relu(self.fc(z), 0.2).view(-1, self.width, self.h0, self.w0)  # (N, width, h0, w0)
        x = self.blocks(x)  # (N, c_u, h0·2^u, w0·2^u)
        return torch.sigmoid(self.out(x))[:, :, :h, :w]  # (N, C, H, W)


class MLP(nn.Module):
    """The DatasetCondensation code's MLP: flatten → Linear(C·H·W, 128) → ReLU → Linear(128, 128) → ReLU
    → Linear(128, classes). Input (N, C, H, W) float32 normalised; output (N, classes) logits."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5 as the Dataset Distillation code builds it (Wang et al. 2018, Sec. 4): Conv 5×5 (6) →
    ReLU → MaxPool 2 → Conv 5×5 (16) → ReLU → MaxPool 2 → Linear 120 → ReLU → Linear 84 → ReLU →
    Linear(classes).
    28×28 inputs are padded by 2 in the first convolution (as MNIST's LeNet); other sizes are not.
    Input (N, C, H, W) float32 normalised, H = W ≥ 16; output (N, classes) logits."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        pad = 2 if image_size == 28 else 0
        side = ((image_size + 2 * pad - 4) // 2 - 4) // 2  # after two conv-pool stages
        if side < 1:
            raise ValueError(f"LeNet needs images of at least 16×16, not {image_size}×{image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (N, num_classes) logits


def resnet18_small(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 adapted to small images as the CIFAR papers do: the first convolution is
    3×3, stride 1 (not 7×7, stride 2) and the max-pool is dropped, so 28 or 32 pixel inputs keep
    enough resolution. Batch norm, as torchvision builds it."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, width: int = 128) -> nn.Module:
    """A freshly initialised network by name (one of MODELS), for (N, C, H, W) inputs of side ``image_size``.

    ``width`` applies to convnet3 and mlp. Raises ValueError naming the known models.
    """
    if name == "convnet3":
        return ConvNet(in_channels, num_classes, image_size, width=width, depth=3)
    if name == "resnet18":
        return resnet18_small(in_channels, num_classes)
    if name == "mlp":
        return MLP(in_channels, num_classes, image_size, width=width)
    if name == "lenet":
        return LeNet(in_channels, num_classes, image_size)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device, checked to exist here.

    Raises: ValueError in one line that names the fix: an unknown name (``bogus``), a device type this
    machine lacks (``cuda`` without CUDA, ``mps`` off Apple silicon) or an index past the devices it has.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)[:40]!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: this machine has no CUDA device that torch can use "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                "use `device` cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; use `device` cpu")
        return dev
    raise ValueError(f"device {str(device)!r}: d3codec runs on cpu, cuda and mps, not {dev.type}")
