"""The decode budget: what an expansion may cost before a reader refuses it, computed before allocating.

An archive's metadata declares what it expands to (a few hundred bytes can declare a million 4096 × 4096 priors), so
every decoder and sampler computes the cost from the declared shapes alone (networks built on PyTorch's meta device)
and refuses with :class:`~d3codec.errors.D3LimitError` (a D3FormatError) anything over :class:`DecodeLimits`:
``max_bytes`` (the expansion's images, labels, soft labels and sampling noise in memory), ``max_parameters`` (every
network and latent table dequantised to float32), ``max_macs_per_image`` (decoding and teacher-labelling one image,
by ``torch.utils.flop_counter``), ``max_macs`` (a whole draw, noise at NOISE_VALUE_MACS a value, at least
MIN_MACS_PER_IMAGE an image), ``max_replay_macs`` (replaying a bptt schedule once, forward and backward, at least
MIN_MACS_PER_STEP a step), ``max_canvas_pixels`` (``d3 expand --grid``) and ``max_section_bytes`` (a section's raw
size, refused before decompressing: spec/FORMAT.md §4). ``working_bytes`` is a target, not a limit: decoders batch
so that activations fit it. The defaults pass every archive d3codec writes up to ImageNet-1K scale; raise a limit only
for an archive you trust (``D3Dataset(path, max_bytes=...)``, ``limits=DecodeLimits(...)``, ``--max-bytes`` and its
siblings on ``d3 expand``, ``eval``, ``verify``, ``merge``). Finite checks run in chunks (:func:`all_finite`).
measurements: benchmarks/method-notes.md
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from d3codec.errors import D3FormatError, D3LimitError

GIB = 1 << 30


@dataclass(frozen=True)
class DecodeLimits:
    """The most one expansion may cost (see the module docstring). Units: bytes, values, multiply-adds,
    pixels."""

    # sized so that D3's default ImageNet-1K draw fits (measurements: benchmarks/method-notes.md)
    max_bytes: int = 16 * GIB
    max_parameters: int = 1 << 28
    max_macs_per_image: int = 1 << 35
    max_macs: int = 1 << 50
    max_replay_macs: int = 1 << 41
    max_canvas_pixels: int = 1 << 27
    max_section_bytes: int = 2 * GIB  # d3codec.format.container.DEFAULT_MAX_SECTION_BYTES
    working_bytes: int = GIB

    def with_overrides(self, **overrides: int | None) -> "DecodeLimits":
        """These limits with the given fields replaced (None leaves a field as it is).

        Raises: ValueError for a limit that is not a positive integer."""
        given = {k: v for k, v in overrides.items() if v is not None}
        for key, value in given.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{key} must be a positive integer, not {value!r}")
        return replace(self, **given)


DEFAULT_LIMITS = DecodeLimits()

# how each limit is raised, for the error message: (Python keyword, command-line option)
OVERRIDES = {
    "max_bytes": ("max_bytes", "--max-bytes"),
    "max_parameters": ("max_parameters", "--max-parameters"),
    "max_macs_per_image": ("max_macs_per_image", "--max-macs-per-image"),
    "max_macs": ("max_macs", "--max-macs"),
    "max_replay_macs": ("max_replay_macs", "--max-replay-macs"),
    "max_canvas_pixels": ("max_canvas_pixels", "--max-grid-pixels"),
    "max_section_bytes": ("max_section_bytes", "--max-section-bytes"),
}


def check(figure: str, value: int, limits: DecodeLimits, field: str, what: str) -> None:
    """Refuse ``value`` over ``limits.<field>``. ``what`` says what was counted, for the message.

    Raises: D3LimitError "<what>: <value> <figure>, over the limit of <limit> (<field>): ...".
    """
    limit = getattr(limits, field)
    if value > limit:
        keyword, option = OVERRIDES[field]
        raise D3LimitError(
            f"{what} would take {value:,} {figure}, over the decode limit of {limit:,} ({field}); "
            f"if you trust this archive, raise it: {keyword}=N in Python, {option} N on the command "
            "line",
            figure,
            value,
            limit,
            option,
        )


# However small its images, a network's draw costs a CPU fixed work per image (copies, padding, small
# kernels): a 1 × 1-pixel D3 decoder of 768 multiply-adds took 2 to 4 µs an image on one thread of the
# 2-core AMD EPYC (2026-12-05), the time of thousands of multiply-adds in larger layers. A draw is
# therefore counted against ``max_macs`` at no fewer than this many multiply-adds an image, so that the
# limit bounds the time of a draw of a million tiny images too.
MIN_MACS_PER_IMAGE = 4096

# The sampling noise of a format 1.1 draw (d3codec.format.noise: a hash and a polar-method normal, in numpy) cost
# 100 to 230 ns a value on one thread of the 2-core AMD EPYC (2026-12-07), 100 times a multiply-add at the
# rate above: a D2M draw of 100 000 images from a tiny generator of 64 noise values spent most of its
# second there. Each noise value of a draw counts as this many multiply-adds.
NOISE_VALUE_MACS = 256


# A sampled archive's default draw per class is capped by what the archive is worth: this many images per
# class for every float32 image per class its file's bytes would hold (its IPC-equivalent), so a 600-byte
# archive that declares ten million draws per class draws 2. d3codec's own archives draw one image per prior
# (D3, up to 310 a class at Fashion-MNIST's IPC 10, file IPC-equivalent 9.5) or their stored default under it.
DEFAULT_DRAW_FACTOR = 64


def default_draw_cap(file_bytes: int, num_classes: int, image_shape: tuple[int, int, int]) -> int:
    """The most images per class a sampled archive of ``file_bytes`` draws by default (spec/FORMAT.md §4):
    max(1, ⌈DEFAULT_DRAW_FACTOR · file_bytes / (4 · K · C · H · W)⌉)."""
    per_class_image = 4 * num_classes * math.prod(image_shape)
    return max(1, -(-DEFAULT_DRAW_FACTOR * file_bytes // per_class_image))


# A replayed step (one gradient step of the schedule's network) costs a CPU fixed work whatever its batch:
# a LeNet step on 10 images of 28 × 28 took 2.1 ms on one thread of a 2-core Intel Xeon (2026-12-07), the time
# of about 6 · 10^7 multiply-adds in ConvNet-3's layers there. A step counts at least this many.
MIN_MACS_PER_STEP = 1 << 27


def replay_macs(steps: int, images_per_step: int, forward_macs: int) -> int:
    """The multiply-adds a replay of ``steps`` gradient steps on ``images_per_step`` images counts against
    ``max_replay_macs``: forward and backward (3 × ``forward_macs`` an image), at least MIN_MACS_PER_STEP a
    step."""
    return steps * max(3 * images_per_step * forward_macs, MIN_MACS_PER_STEP)


def draw_macs(images: int, macs_per_image: int, noise_per_image: int = 0) -> int:
    """The multiply-adds a draw of ``images`` images counts against ``max_macs``: ``macs_per_image`` each
    plus NOISE_VALUE_MACS for each of its ``noise_per_image`` sampling noise values, and at least
    MIN_MACS_PER_IMAGE each."""
    return images * max(macs_per_image + noise_per_image * NOISE_VALUE_MACS, MIN_MACS_PER_IMAGE)


def output_bytes(
    images: int, image_shape: tuple[int, int, int], num_classes: int, soft: bool, noise_values: int = 0
) -> int:
    """Bytes an expansion holds: images float32, labels int64, soft labels float32 (N, K) where ``soft``,
    and ``noise_values`` float32 sampling noise."""
    return images * (math.prod(image_shape) * 4 + 8 + (num_classes * 4 if soft else 0)) + noise_values * 4


@dataclass(frozen=True)
class NetworkCost:
    """What running one network on one input costs: ``parameters`` (values), ``macs`` (multiply-adds)
    and ``activation_bytes`` (an upper estimate of what one input's activations hold at once)."""

    parameters: int
    macs: int
    activation_bytes: int

    def __add__(self, other: "NetworkCost") -> "NetworkCost":
        return NetworkCost(
            self.parameters + other.parameters,
            self.macs + other.macs,
            max(self.activation_bytes, other.activation_bytes),
        )


def network_cost(build: Callable[[], nn.Module], example: Callable[[], tuple], what: str) -> NetworkCost:
    """The cost of ``build()`` applied to ``example()`` (inputs for one image), measured on the meta
    device: nothing is allocated, however large the declared network.

    Activations: for each leaf module, its input and output, plus for a convolution the unfolded
    input a CPU convolution may build (in_channels · k² · output pixels); the largest of these,
    twice over (an op's neighbours), in float32.

    Raises: D3FormatError "<what> cannot run on the declared image size (why)" where the network
    cannot be built or run on those inputs (a size pooled below one pixel, channels a GroupNorm
    cannot split, ...).
    """
    from torch.utils.flop_counter import FlopCounterMode

    peak = [0]

    def measure(module: nn.Module, inputs: tuple, output) -> None:
        n = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
        n += output.numel() if isinstance(output, torch.Tensor) else 0
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            n += module.in_channels * math.prod(module.kernel_size) * math.prod(output.shape[2:])
        peak[0] = max(peak[0], n)

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "zero-element tensors": the network is refused below anyway
            net = build().eval()
            inputs = example()
        hooks = [m.register_forward_hook(measure) for m in net.modules() if not list(m.children())]
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net(*inputs)
        for h in hooks:
            h.remove()
    except (RuntimeError, ValueError, IndexError, TypeError, OverflowError) as error:
        raise D3FormatError(
            f"{what} cannot run on the declared image size ({str(error).splitlines()[0][:200]})"
        ) from None
    parameters = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    return NetworkCost(parameters, counter.get_total_flops() // 2, 2 * 4 * peak[0])


def all_finite(values: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """Whether every value of ``values`` is finite, checked ``chunk`` values at a time: ``torch.isfinite`` on a
    whole float32 tensor builds a float32 copy (its absolute values) and two masks, 1.6 times its size."""
    if not values.is_floating_point():
        return True
    flat = values.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def batch_size(cost: NetworkCost, limits: DecodeLimits, most: int = 1024) -> int:
    """Images decoded at once so that their activations fit ``limits.working_bytes`` (1 to ``most``)."""
    return max(1, min(most, limits.working_bytes // max(1, cost.activation_bytes)))
