"""Teachers: networks trained on the real data whose predictions become soft labels.

A teacher is a ConvNet-3 (d3codec.nn.models) trained by :func:`train_teacher` on the real images of
some classes, or loaded from a safetensors file with :func:`load_teacher` (never a pickle). Pixel
and d3 archives keep only the soft labels it gives; a d2m archive with soft labels stores the
teacher itself (d3codec.methods.d2m), so that it can label every sample drawn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save

from d3codec.data.real import Normalisation, RealData
from d3codec.errors import D3Error
from d3codec.format.container import write_atomic
from d3codec.format.text import safe_text
from d3codec.format.weights import check_state, read_safetensors_file
from d3codec.nn.models import (
    ConvNet,
    activation_memory,
    compiled,
    parameter_shapes,
    saved_activation_bytes,
    worth_compiling,
)
from d3codec.util.progress import progress_bar


@dataclass
class Teacher:
    """A trained network and the classes its logits are read on.

    ``probabilities(x)`` takes (N, C, H, W) float32 **normalised** images and returns (N, len(classes))
    softmax probabilities over ``classes`` (indices into the dataset's classes), at ``temperature``.
    """

    net: ConvNet
    classes: list[int]
    out_index: list[int]  # column of each of ``classes`` in the network's logits

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        self.net.eval()
        logits = self.net(x)[:, self.out_index]  # (N, len(classes))
        return F.softmax(logits / temperature, dim=1)

    def restricted(self, classes: list[int]) -> "Teacher":
        """The same network read on a subset of its classes (a subtask's)."""
        position = {c: i for i, c in enumerate(self.classes)}
        missing = [c for c in classes if c not in position]
        if missing:
            raise ValueError(f"the teacher has no output for classes {missing[:5]}")
        return Teacher(self.net, list(classes), [self.out_index[position[c]] for c in classes])


def untrained_teacher(
    image_shape: tuple[int, int, int], classes: list[int], width: int, device: torch.device = torch.device("cpu")
) -> Teacher:
    """A teacher of :func:`train_teacher`'s shape with fresh weights, to load saved weights into
    (an encoder's checkpoint). Its logits are in the order of ``classes``."""
    c, h, _ = image_shape
    return Teacher(ConvNet(c, len(classes), h, width=width).to(device), list(classes), list(range(len(classes))))


def _step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    micro: int,
    opt: torch.optim.Optimizer,
) -> torch.Tensor:
    """One SGD step on the batch x (B, C, H, W) normalised, y (B,) classes: the gradient of its mean cross-entropy,
    summed over micro-batches of ``micro`` images (the norm is per image, so they give the batch's gradient while
    holding ``micro`` images' activations at a time). Returns its logits (B, K), detached."""
    opt.zero_grad(set_to_none=True)
    pieces: list[torch.Tensor] = []
    for i in range(0, len(y), micro):
        part = forward(x[i : i + micro])
        (F.cross_entropy(part, y[i : i + micro], reduction="sum") / len(y)).backward()
        pieces.append(part.detach())
    opt.step()
    return torch.cat(pieces)


def train_teacher(
    real: RealData,
    classes: list[int],
    *,
    epochs: float = 2.0,
    width: int = 128,
    batch_size: int = 256,
    lr: float = 0.05,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    progress: bool = False,
    snapshot: Callable[[int, ConvNet], None] | None = None,
    name: str = "teacher",
) -> tuple[Teacher, float]:
    """Train a ConvNet-3 on the real training images of ``classes`` (SGD, momentum 0.9, cosine lr).

    Args: ``classes`` dataset class indices, the logits' order; ``epochs`` passes over their images (0.5 reads half
        once); ``snapshot(e, net)`` called with the initial network (e = 0) and after each whole epoch e (an
        expert's trajectory, d3codec.nn.experts; it must copy what it keeps); ``name`` the progress bar's.
    Returns: (teacher, training accuracy of the last epoch's batches, a fraction).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, h, _ = real.image_shape
    indices = torch.cat([real.class_indices(k) for k in classes])
    local = torch.cat([torch.full((len(real.class_indices(k)),), i, dtype=torch.long) for i, k in enumerate(classes)])
    steps = max(1, int(epochs * len(indices) / batch_size))
    normalise = Normalisation.of(real, device)
    net = ConvNet(c, len(classes), h, width=width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    one = (1, *real.image_shape)  # micro-batches (see _step): 256 images at 128 pixels hold gigabytes on a CPU
    per_image = 2 * saved_activation_bytes(
        lambda: ConvNet(c, len(classes), h, width=width), lambda: (torch.zeros(one),)
    )
    micro = max(1, min(batch_size, activation_memory(device) // per_image))
    order, position, correct, seen = torch.randperm(len(indices), generator=gen), 0, 0, 0
    per_epoch = max(1, len(indices) // batch_size)
    forward = compiled(net, worth_compiling(steps * batch_size))
    if snapshot is not None:
        snapshot(0, net)
    for step in progress_bar(range(steps), desc=name, enabled=progress, unit="step"):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(indices), generator=gen), 0
        pick = order[position : position + batch_size]
        position += batch_size
        x = normalise(real.images_at(indices[pick]).to(device))  # (B, C, H, W) normalised
        y = local[pick].to(device)
        if torch.rand((), generator=gen) < 0.5:  # horizontal flip, the one augmentation every dataset here allows
            x = x.flip(3)
        logits = _step(forward, x, y, micro, opt)
        sched.step()
        if step >= steps - per_epoch:
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if snapshot is not None and (step + 1) % per_epoch == 0:
            snapshot((step + 1) // per_epoch, net)
    net.eval().requires_grad_(False)
    return Teacher(net, list(classes), list(range(len(classes)))), correct / max(seen, 1)


def save_teacher(teacher: Teacher, path: str | os.PathLike, image_shape: tuple[int, int, int]) -> None:
    """Write the teacher's weights as safetensors (atomically), with its classes and shape in the header metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in teacher.net.state_dict().items()}
    write_atomic(
        path,
        save(
            state,
            metadata={
                "model": "convnet3",
                "classes": ",".join(map(str, teacher.classes)),
                "image_shape": ",".join(map(str, image_shape)),
                "width": str(teacher.net.classifier.in_features),
            },
        ),
    )


MAX_TEACHER_WIDTH = 4096  # as an archive's stored teacher or labeller (spec/FORMAT.md §5.7, §5.8)


def load_teacher(
    path: str | os.PathLike,
    image_shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device = torch.device("cpu"),
) -> Teacher:
    """A ConvNet-3 teacher from a safetensors file (as :func:`save_teacher` writes, or any ConvNet-3
    state dict whose classifier has ``num_classes`` outputs, one per dataset class in order). A file
    whose header names its ``classes`` (dataset class indices, one per output, as save_teacher writes
    for a teacher of some classes) is read on those classes.

    Everything is checked before a network is built: the tensors' names and shapes against a ConvNet-3
    of the file's width (1 to MAX_TEACHER_WIDTH) for ``image_shape``, floating-point and finite values,
    and the class list.
    Raises: D3Error naming the mismatch when the file is not such a network.
    """
    what = f"`teacher` {safe_text(str(path), 300)}"
    state, header = read_safetensors_file(path, "`teacher`")
    first, head = state.get("features.0.weight"), state.get("classifier.weight")
    if first is None or head is None or first.dim() != 4 or head.dim() != 2:
        raise D3Error(
            f"{what}: expected a ConvNet-3 state dict (features.0.weight (T, C, 3, 3), classifier.weight "
            "(K, features), ...)"
        )
    width, outputs = first.shape[0], head.shape[0]
    if not 1 <= width <= MAX_TEACHER_WIDTH:
        raise D3Error(f"{what}: a ConvNet-3 of width {width}; d3codec reads widths 1 to {MAX_TEACHER_WIDTH}")
    if not 1 <= outputs <= num_classes:
        raise D3Error(f"{what}: its {outputs} outputs do not match the dataset's {num_classes} classes")
    classes = _teacher_classes(header.get("classes"), outputs, num_classes, what)
    c, h, w = image_shape
    if h != w or h < 8:
        raise D3Error(f"{what}: a ConvNet-3 teacher needs square images of at least 8 × 8 pixels, not {h} × {w}")
    check_state(state, parameter_shapes(ConvNet, c, outputs, h, width=width), what)
    with torch.device("meta"):
        net = ConvNet(c, outputs, h, width=width)
    net.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    net.to(device).eval().requires_grad_(False)
    return Teacher(net, classes, list(range(len(classes))))


def _teacher_classes(text, outputs: int, num_classes: int, what: str) -> list[int]:
    """The dataset classes a teacher file's outputs stand for: its header's ``classes`` ("0,1,2"), distinct
    and each in [0, num_classes), one per output; without one, every class in order. Raises: D3Error."""
    if text is None:
        if outputs != num_classes:
            raise D3Error(
                f"{what}: its {outputs} outputs do not match the dataset's {num_classes} classes, and its "
                "header names no 'classes' for them"
            )
        return list(range(num_classes))
    try:
        classes = [int(c) for c in str(text).split(",")] if len(str(text)) <= 12 * outputs else None
    except ValueError:
        classes = None
    if (
        classes is None
        or len(classes) != outputs
        or len(set(classes)) != outputs
        or any(not 0 <= c < num_classes for c in classes)
    ):
        raise D3Error(
            f"{what}: its header's 'classes' ({safe_text(str(text), 80)}) must be {outputs} distinct "
            f"class indices from 0 to {num_classes - 1}, one per output"
        )
    return classes
