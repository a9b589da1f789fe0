"""A classifier's accuracy on a dataset's test split, in pixel space: what students, labellers and BPTT's
replayed networks are scored by."""

from __future__ import annotations

from typing import Sized, cast

import torch

from d3codec.data.real import Normalisation, RealData, TensorImages


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA), so that wall-clock seconds measure it; nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def test_accuracy(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    device: torch.device,
    batch_size: int = 1000,
) -> float:
    """Fraction of ``images`` (M, C, H, W) pixel space that ``net`` classifies as ``labels``."""
    net.eval()
    normalise = Normalisation(mean, std, device)
    correct = 0
    for i in range(0, len(images), batch_size):
        x = normalise(images[i : i + batch_size].to(device))
        correct += int((net(x).argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(images)


def test_split(real: RealData) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split as (M, C, H, W) float32 pixel space and (M,) int64 labels."""
    if real.test is None:
        raise ValueError(f"dataset {real.name!r} has no test split to evaluate on")
    ds = real.test
    if hasattr(ds, "images"):  # in-memory TensorImages
        tensors = cast(TensorImages, ds)
        return tensors.images.float() / 255, tensors.targets.long()
    xs, ys = zip(*(ds[i] for i in range(len(cast(Sized, ds)))))  # a map-style dataset: it has a length
    return torch.stack(xs), torch.tensor(ys)
