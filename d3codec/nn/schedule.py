"""A training schedule that travels with the synthetic images: learned step sizes, steps, epochs, a network.

Dataset Distillation (Wang et al. 2018, Sec. 3, Eq. 1 and 2) learns images *for* a training
procedure: plain gradient descent θ_{t+1} = θ_t − η_t ∇_θ ℓ(x̃_{t mod S}, θ_t) for T = S · E steps
(S steps an epoch, E epochs), each step on its own batch of synthetic images with its own learned
step size η_t, from an initialisation θ₀ that is either fixed (and stored with the images) or
drawn fresh. A student trained any other way is a different experiment; :meth:`TrainingSchedule.replay`
runs exactly this procedure.

Step batches: the images of each class, in their stored order, are split into S equal chunks;
step s takes chunk s of every class (images (K·m, C, H, W) in class order, m = images per class / S).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from d3codec.data.real import Normalisation
from d3codec.nn.models import build_model


def init_parameters(
    network: str, image_shape: tuple[int, int, int], num_classes: int, seed: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The parameters of a freshly initialised ``network`` (PyTorch's default initialisation) drawn
    from ``seed``, without touching the global random state. Returns name → float32 tensor."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(network, image_shape[0], num_classes, image_shape[1])
    return {k: v.detach().to(device) for k, v in net.named_parameters()}


def step_batches(labels: torch.Tensor, steps: int, num_classes: int) -> list[torch.Tensor]:
    """Indices of each step's batch for images ordered as ``labels`` (N,) int64 (any order).

    Returns: ``steps`` index tensors (K·m,) int64, class-major within a step.
    Raises: ValueError if some class's image count is not a positive multiple of ``steps``.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    bad = torch.nonzero((counts == 0) | (counts % steps != 0)).flatten()
    if len(bad):
        c = int(bad[0])
        raise ValueError(f"class {c} has {int(counts[c])} images, not a positive multiple of the {steps} steps")
    per_class = torch.split(torch.argsort(labels, stable=True), counts.tolist())  # each class's indices, in order
    return [torch.cat([idx.view(steps, -1)[s] for idx in per_class]) for s in range(steps)]


def gd_step(
    net: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    lr: torch.Tensor,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """One plain gradient-descent step θ − lr · ∇_θ CE(net_θ(x), y) (Wang et al. 2018, Eq. 1).

    ``params`` must require grad; with ``create_graph`` the result stays differentiable in params, x, lr.
    """
    loss = F.cross_entropy(functional_call(net, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {k: p - lr * g for (k, p), g in zip(params.items(), grads)}


@dataclass
class TrainingSchedule:
    """What an archive says about how its images must be trained on.

    Attributes:
        network: a name of d3codec.nn.models.MODELS ("lenet", "convnet3").
        steps, epochs: S steps an epoch (one batch each), E epochs; T = S · E.
        lrs: (T,) float32 learned step sizes, positive, in order.
        init: "fixed" (start from ``theta0``) or "random" (start from a fresh initialisation).
        theta0: name → float32 tensor, the stored initialisation (fixed), else None.
        forward_macs: multiply-adds of one forward pass of the network on one image.
    """

    network: str
    steps: int
    epochs: int
    lrs: torch.Tensor
    init: str
    theta0: dict[str, torch.Tensor] | None = None
    forward_macs: int = 0  # multiply-adds of the network on one image (set by the archive's reader)

    def replay_macs(self, images: int) -> int:
        """The multiply-adds a replay on ``images`` images in all costs (d3codec.format.limits.replay_macs)."""
        from d3codec.format.limits import replay_macs

        return replay_macs(self.steps * self.epochs, images // self.steps, self.forward_macs)

    def initial_parameters(
        self, image_shape: tuple[int, int, int], num_classes: int, seed: int, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """θ₀: the stored one (fixed; ``seed`` unused), or a fresh one drawn from ``seed`` (random)."""
        if self.theta0 is not None:
            return {k: v.to(device) for k, v in self.theta0.items()}
        return init_parameters(self.network, image_shape, num_classes, seed, device)

    def replay(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        mean,
        std,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> nn.Module:
        """Train a network by exactly this schedule.

        Args:
            images: (N, C, H, W) float32 pixel space; labels: (N,) int64, each class a multiple of ``steps``.
            mean, std: the normalisation (per channel) applied before the network.
            seed: the initialisation's seed under init "random".
        Returns: the trained network (eval mode) on ``device``.
        """
        device = torch.device(device)
        c, h, w = images.shape[1:]
        net = build_model(self.network, c, num_classes, h).to(device)
        x_all = Normalisation(mean, std, device)(images.to(device))  # (N, C, H, W) normalised
        y_all = labels.to(device)
        batches = [b.to(device) for b in step_batches(labels, self.steps, num_classes)]
        params = self.initial_parameters((c, h, w), num_classes, seed, device)
        lrs = self.lrs.to(device)
        for t in range(self.steps * self.epochs):
            idx = batches[t % self.steps]
            params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            params = gd_step(net, params, x_all[idx], y_all[idx], lrs[t])
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(params[name])
        return net.eval()
