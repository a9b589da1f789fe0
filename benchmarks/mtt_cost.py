"""What one iteration of trajectory matching (MTT) costs on this machine (issue 34).

MTT (Cazenavette et al., CVPR 2022, Sec. 3; FreD, Shin et al., NeurIPS 2023, uses it through its frequency
parameterisation) starts a student at an expert's weights θ*_t, takes N SGD steps on synthetic batches,
and matches the result to the expert's θ*_{t+M}: ‖θ_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖². The gradient
reaches the synthetic images through all N steps (second order), so an iteration costs about N student
steps forward and two to three times that backward.

This script times one such iteration of a ConvNet-3 (width 128, Fashion-MNIST's 28 × 28 × 1) for the
given N and synthetic batch, on random inputs (the cost does not depend on what the images show), and
prints the seconds an iteration takes and what a run of ``--iterations`` would take.

    OMP_NUM_THREADS=1 python benchmarks/mtt_cost.py --steps 20 --batch 100 --iterations 5000
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from d3codec.nn.models import ConvNet


def one_iteration(
    net: ConvNet,
    start: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch: int,
    lr: float = 0.01,
) -> float:
    """N unrolled SGD steps from ``start`` on batches of ``images``, the normalised parameter distance to
    ``target``, and its gradient to the images. Returns: the loss."""
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    for i in range(steps):
        idx = torch.arange(i * batch, (i + 1) * batch) % len(images)
        loss = F.cross_entropy(functional_call(net, params, (images[idx],)), labels[idx])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {k: v - lr * g for (k, v), g in zip(params.items(), grads)}
    num = sum(((params[k] - target[k]) ** 2).sum() for k in params)
    den = sum(((start[k] - target[k]) ** 2).sum() for k in params)
    matching = num / den
    matching.backward()
    return float(matching.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--batch", type=int, default=100, help="synthetic images a step")
    parser.add_argument("--images", type=int, default=240, help="synthetic images in all (IPC 1 through dct ×2)")
    parser.add_argument("--iterations", type=int, default=5000, help="a run's iterations (MTT's CIFAR-10 runs)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = ConvNet(1, 10, 28, width=128)
    start = {k: v.detach() for k, v in net.named_parameters()}
    target = {k: v + 0.01 * torch.randn_like(v) for k, v in start.items()}
    images = torch.randn(args.images, 1, 28, 28, requires_grad=True)
    labels = torch.arange(args.images) % 10
    for steps in args.steps:
        one_iteration(net, start, target, images, labels, steps, args.batch)  # warm-up
        t = time.perf_counter()
        for _ in range(args.repeat):
            one_iteration(net, start, target, images, labels, steps, args.batch)
        seconds = (time.perf_counter() - t) / args.repeat
        print(
            f"N = {steps} steps of {args.batch} images: {seconds:.1f} s an iteration, "
            f"{seconds * args.iterations / 3600:.0f} h for {args.iterations} iterations "
            f"({1000 * seconds / (steps * args.batch):.1f} ms an image-step)",
            flush=True,
        )


if __name__ == "__main__":
    main()
