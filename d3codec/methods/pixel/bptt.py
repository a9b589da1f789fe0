"""Method ``bptt``: the original Dataset Distillation, learning images and step sizes.

Wang, Zhu, Torralba, Efros, "Dataset Distillation" (arXiv 1811.10959, 2018), Sec. 3. The synthetic images x̃ and
one step size per training step η̃_t = softplus(ρ_t) are learned so that a network trained on x̃ by plain GD,

    θ_{t+1} = θ_t − η̃_t ∇_θ ℓ(x̃_{t mod S}, θ_t),   t = 0 … T−1,  T = S · E   (Eq. 1; S steps × E epochs)

has a low loss ℓ(x_real, θ_T) on a fresh real batch (Eq. 2), by Adam on x̃ and ρ through the unrolled training.
``init="fixed"`` (Sec. 3.1): one θ₀, stored and counted in the budget (rounded to ``theta0_dtype`` before distilling);
``init="random"`` (Sec. 3.2): θ₀ redrawn every outer iteration from the stream ``bptt-init``. The backward pass keeps
only the T + 1 parameter vectors θ_t and recomputes one step's graph at a time (memory O(T · |θ| + one step's
activations); a test checks it against autograd). Section ``schedule`` carries step batches, step sizes, network and
θ₀ (d3codec.nn.schedule.TrainingSchedule replays it); ``images`` is stored as DM's. Departures, all options:
``image_init="real"``; a class-balanced real batch (``real_per_class``). measurements: benchmarks/method-notes.md
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from d3codec.data.real import Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.interface import CheckpointedEncoder, DatasetSpec, Encoded, MetaFor
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.errors import D3BudgetError
from d3codec.format.accounting import archive_bound
from d3codec.format.container import Section
from d3codec.format.storage import decode_images, encode_images, resolve_storage_dtype, stored_image_zeros
from d3codec.methods.pixel.archive import INITS, MAX_SCHEDULE_STEPS, NETWORKS
from d3codec.methods.pixel.plan import PixelPlan, plan_pixel_storage
from d3codec.nn.models import build_model
from d3codec.nn.schedule import TrainingSchedule, gd_step, init_parameters
from d3codec.util.progress import progress_bar

THETA0_DTYPES = ("float16", "float32")
END_EVAL_INITS = 3  # random init: the end-of-distillation accuracy is the mean over student seeds 0, 1, 2


@dataclass(frozen=True)
class BPTTConfig:
    """Options of BPTT dataset distillation. Units: outer iterations; images; step sizes (GD learning rates).

    ``inner_steps`` None: min(10, images per class) when filling the budget, else the largest
    divisor of ``images_per_class`` up to 10. ``inner_epochs`` None: the paper's 3, or more so that
    the schedule has at least 10 steps in all (with one image per class an epoch is one step; on
    Fashion-MNIST, 10 images, fixed init, 1 500 iterations, d3codec measured 56 % test accuracy with
    3 steps, 63 % with 10 and 63 % with 30).
    """

    iterations: int = 23_000  # outer iterations (one unrolled training each)
    network: str = "lenet"  # the unrolled network: lenet or convnet3
    init: str = "fixed"  # "fixed": one stored θ₀; "random": a fresh θ₀ every iteration
    inner_steps: int | None = None  # GD steps an epoch, each on its share of the images (None: see above)
    inner_epochs: int | None = None  # passes over the steps (None: see above)
    real_per_class: int = 100  # real images per class in the outer loss
    lr_images: float = 0.01  # Adam learning rate of the images
    lr_step_sizes: float = 0.01  # Adam learning rate of the raw step sizes
    initial_step_size: float = 0.02  # every step size at the start
    lr_decay_every: int | None = 2_300  # halve both learning rates every this many iterations (None: never)
    image_init: str = "noise"  # "noise" (the paper) or "real" images to start from
    theta0_dtype: str = "float16"  # how a fixed θ₀ is stored (and rounded before distilling): float16 or float32
    storage_dtype: str = "auto"  # how images are stored: auto (uint8 with a per-class range), uint8, float16, float32
    images_per_class: int | None = None  # a fixed count instead of filling the budget

    def __post_init__(self) -> None:
        cfg = self
        for value, known, what in (
            (cfg.network, NETWORKS, "network"),
            (cfg.init, INITS, "init"),
            (cfg.theta0_dtype, THETA0_DTYPES, "theta0_dtype"),
            (cfg.image_init, ("noise", "real"), "image_init"),
        ):
            if value not in known:
                raise ValueError(f"{what} must be one of {', '.join(known)}, not {value!r}")
        if any(v is not None and v < 1 for v in (cfg.inner_steps, cfg.inner_epochs)):
            raise ValueError("`inner_steps` and `inner_epochs` must be at least 1")
        if (cfg.inner_steps or 1) * (cfg.inner_epochs or 1) > MAX_SCHEDULE_STEPS:
            raise ValueError(f"steps × epochs may be at most {MAX_SCHEDULE_STEPS}")
        if cfg.images_per_class is not None and cfg.inner_steps is not None and cfg.images_per_class % cfg.inner_steps:
            raise ValueError(
                f"`inner_steps` {cfg.inner_steps} must divide `images_per_class` {cfg.images_per_class}: "
                "each step trains on its own equal share of every class's images"
            )


PRESETS = {
    # the public code's MNIST settings: ~400 epochs of 1 024-image real batches, lr halved every 40
    "paper": BPTTConfig(),
    "fast": BPTTConfig(iterations=1_500, lr_decay_every=500),
    # a first picture and number in minutes (README: the first five minutes), not a result to report
    "smoke": BPTTConfig(iterations=150, lr_decay_every=50, real_per_class=32),
}


@dataclass(frozen=True)
class BPTTPlan(PixelPlan):
    """A pixel plan plus the schedule's shape: ``inner_steps`` × ``inner_epochs`` GD steps."""

    inner_steps: int = 1
    inner_epochs: int = 1


def largest_divisor_up_to(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class BPTTEncoder(CheckpointedEncoder[BPTTPlan, BPTTConfig]):
    """Method ``bptt`` (``d3 compress bptt ...``). ``BPTTEncoder(PRESETS["fast"])`` or any :class:`BPTTConfig`.

    Its archives are pixel archives (DM's ``images`` section, read by the same decoder) plus a
    ``schedule`` section."""

    method = "pixel"

    presets = PRESETS

    def method_meta(self, plan: BPTTPlan) -> dict:
        cfg = self.config
        return {
            "objective": "bptt",
            "network": cfg.network,
            "init": cfg.init,
            "inner_steps": plan.inner_steps,
            "inner_epochs": plan.inner_epochs,
            "theta0_dtype": cfg.theta0_dtype if cfg.init == "fixed" else None,
            "config": asdict(cfg),
            "images_per_class": plan.images_per_class,
            "storage_dtype": plan.storage_dtype,
        }

    def _schedule_tensors(self, step_sizes: torch.Tensor, theta0: dict[str, torch.Tensor] | None) -> dict:
        tensors = {"step_sizes": step_sizes.detach().float().cpu().contiguous()}
        if theta0 is not None:
            dtype = getattr(torch, self.config.theta0_dtype)
            tensors.update({f"theta0.{k}": v.detach().cpu().to(dtype).contiguous() for k, v in theta0.items()})
        return tensors

    def plan(self, spec: DatasetSpec, budget: int, meta_for: MetaFor, real: RealData | None = None) -> BPTTPlan:
        """Images per class (a multiple of the steps), storage dtype and schedule for ``budget`` bytes,
        θ₀ included under fixed init. Raises D3BudgetError naming the smallest budget; ValueError for bad options."""
        cfg, k, shape = self.config, spec.num_classes, spec.image_shape
        with torch.device("meta"):
            shapes = {n: p.shape for n, p in build_model(cfg.network, shape[0], k, shape[1]).named_parameters()}
        theta0 = {n: torch.zeros(s) for n, s in shapes.items()} if cfg.init == "fixed" else None

        def steps_for(n: int) -> int:
            if cfg.inner_steps is not None:
                return cfg.inner_steps
            return largest_divisor_up_to(n, 10) if cfg.images_per_class is not None else min(10, n)

        def epochs_for(steps: int) -> int:
            return cfg.inner_epochs or max(3, math.ceil(10 / steps))

        def sections_for(n: int, dtype: str) -> list[Section]:
            s = steps_for(n)
            draft = BPTTPlan(n, dtype, 0, budget, inner_steps=s, inner_epochs=epochs_for(s))
            return [
                Section.json("meta", meta_for(self.method_meta(draft))),
                Section.tensors("images", stored_image_zeros(n * k, shape, k, dtype)),
                Section.tensors(
                    "schedule", self._schedule_tensors(torch.zeros(s * epochs_for(s), device="cpu"), theta0)
                ),
            ]  # small: made on the CPU

        dtype = resolve_storage_dtype(cfg.storage_dtype)
        least = cfg.images_per_class or cfg.inner_steps or 1
        with torch.device("meta"):  # placeholders counted, not made
            smallest = archive_bound(sections_for(least, dtype))
        if smallest > budget:
            stored = ""
            if theta0 is not None:
                n_params = sum(math.prod(s) for s in shapes.values())
                stored = (
                    f"; fixed init stores θ₀ of {cfg.network} ({n_params} parameters as {cfg.theta0_dtype}) in "
                    "the archive: `init` random does not"
                )
            raise D3BudgetError(
                f"a budget of {budget} bytes cannot hold {least} {dtype} image(s) per class for {k} "
                f"classes with the BPTT schedule{stored}; the smallest budget that works is {smallest} "
                f"bytes (`budget` {smallest})",
                min_budget=smallest,
            )
        base = plan_pixel_storage(budget, k, shape, sections_for, dtype, cfg.images_per_class, None)
        n = base.images_per_class
        steps = steps_for(n)
        n -= n % steps
        with torch.device("meta"):
            bound = archive_bound(sections_for(n, dtype))
        return BPTTPlan(n, dtype, bound, budget, n, inner_steps=steps, inner_epochs=epochs_for(steps))

    def distill(
        self, real: RealData, plan: BPTTPlan, *, device: torch.device, seed: int, progress: bool = True
    ) -> Encoded:
        cfg = self.config
        k, s, e = real.num_classes, plan.inner_steps, plan.inner_epochs
        m, (c, h, _) = plan.images_per_class // s, real.image_shape
        gen = seeds.generator(seed, "bptt")
        normalise = Normalisation.of(real, device)
        synthetic = self._initial_images(real, plan, normalise, gen, device).requires_grad_(True)
        step_labels = torch.arange(k, device=device).repeat_interleave(m)  # (K·m,)
        raw_step_sizes, optimiser = self._optimiser(synthetic, s * e, device)
        net = build_model(cfg.network, c, k, h).to(device)  # the architecture; parameters come from θ
        theta0 = self._fixed_theta0(real, seed, device) if cfg.init == "fixed" else None

        loop = self.loop(
            "pixel-bptt",
            (asdict(cfg), asdict(plan), seed, real.name, len(real.train_targets), device.type),
            cfg.iterations,
        )
        loop.resume(
            LoopState(gen, {"synthetic": synthetic, "raw_step_sizes": raw_step_sizes}, {"adam": optimiser}), device
        )  # a killed run goes on from its last checkpoint
        bar = progress_bar(
            range(loop.first, cfg.iterations),
            desc="BPTT",
            enabled=progress,
            unit="it",
            initial=loop.first,
            total=cfg.iterations,
        )

        def step(it: int) -> float:
            decay = 0.5 ** (it // cfg.lr_decay_every) if cfg.lr_decay_every else 1.0  # halved every lr_decay_every
            optimiser.param_groups[0]["lr"], optimiser.param_groups[1]["lr"] = (
                cfg.lr_images * decay,
                cfg.lr_step_sizes * decay,
            )
            start_params = (
                theta0
                if theta0 is not None
                else init_parameters(cfg.network, real.image_shape, k, seeds.stream_seed(seed, "bptt-init", it), device)
            )
            x_real = normalise(real.sample_classes(cfg.real_per_class, gen).to(device))
            y_real = torch.arange(k, device=device).repeat_interleave(cfg.real_per_class)
            loss, d_images, d_raw = unrolled_gradients(
                net, start_params, synthetic.detach(), step_labels, raw_step_sizes.detach(), e, x_real, y_real
            )
            optimiser.zero_grad(set_to_none=True)
            synthetic.grad, raw_step_sizes.grad = d_images, d_raw
            optimiser.step()
            if it % 50 == 0:
                bar.set_postfix(outer_loss=f"{loss:.3f}", step_size=f"{F.softplus(raw_step_sizes).mean().item():.4f}")
            return loss

        loop.run(step, bar)
        return self._encoded(
            real, plan, normalise.inverse(synthetic.detach().flatten(0, 1)), raw_step_sizes, theta0, loop, device
        )

    def _optimiser(
        self, synthetic: torch.Tensor, steps: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.optim.Adam]:
        """The raw step sizes ρ, (``steps``,) float32 on ``device`` with softplus(ρ) = ``initial_step_size``, and
        Adam (β = 0.5, 0.999) over two groups: the ``synthetic`` images at ``lr_images``, ρ at ``lr_step_sizes``."""
        cfg = self.config
        raw_step_sizes = torch.full(
            (steps,), math.log(math.expm1(cfg.initial_step_size)), device=device, requires_grad=True
        )  # softplus(ρ) = initial step size
        optimiser = torch.optim.Adam(
            [{"params": [synthetic], "lr": cfg.lr_images}, {"params": [raw_step_sizes], "lr": cfg.lr_step_sizes}],
            betas=(0.5, 0.999),
        )
        return raw_step_sizes, optimiser

    def _initial_images(
        self, real: RealData, plan: BPTTPlan, normalise: Normalisation, gen: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """The synthetic images at the start, normalised, step-major: (S, K·m, C, H, W) float32 on ``device``, m
        images a class a step; step s holds chunk s of every class. Noise, or real images (``image_init``)."""
        k, n, s = real.num_classes, plan.images_per_class, plan.inner_steps
        m, c, h, w = n // s, *real.image_shape
        if self.config.image_init == "real":
            init = normalise(real.sample_classes(n, gen).to(device))  # (K·n, C, H, W), class-major
            init = init.view(k, s, m, c, h, w).transpose(0, 1).reshape(s, k * m, c, h, w)
        else:
            init = torch.randn(s, k * m, c, h, w, generator=gen).to(device)
        return init.clone()

    def _fixed_theta0(self, real: RealData, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The fixed init's θ₀ (name → float32 tensor on ``device``), rounded to the stored dtype first, so that
        the archive holds exactly the θ₀ distilled from."""
        cfg, dtype = self.config, getattr(torch, self.config.theta0_dtype)
        return {
            name: v.to(dtype).float()
            for name, v in init_parameters(
                cfg.network, real.image_shape, real.num_classes, seeds.stream_seed(seed, "bptt"), device
            ).items()
        }

    def _encoded(
        self,
        real: RealData,
        plan: BPTTPlan,
        images: torch.Tensor,
        raw_step_sizes: torch.Tensor,
        theta0: dict[str, torch.Tensor] | None,
        loop: ResumableLoop,
        device: torch.device,
    ) -> Encoded:
        """The archive's sections of the distilled ``images`` (S·K·m, C, H, W) in pixel space, step-major, and
        step sizes softplus(``raw_step_sizes``): class-major images, coded as stored, then read back as a reader
        would, to measure what replaying the stored schedule on them gives."""
        cfg, k, n, s, e = self.config, real.num_classes, plan.images_per_class, plan.inner_steps, plan.inner_epochs
        m, c, h, w = n // s, *real.image_shape
        images = images.view(s, k, m, c, h, w).transpose(0, 1).reshape(k * n, c, h, w)
        labels = torch.arange(k).repeat_interleave(n)
        coded = encode_images(images.cpu(), labels, k, plan.storage_dtype)
        stored_images, _ = decode_images(coded, k, real.image_shape)
        step_sizes = F.softplus(raw_step_sizes.detach()).cpu()
        schedule = TrainingSchedule(
            cfg.network,
            s,
            e,
            step_sizes,
            cfg.init,
            {n_: v.cpu() for n_, v in theta0.items()} if theta0 is not None else None,
        )

        stats = {"distill_seconds": round(loop.seconds, 3), **loop.stats()}
        if real.test is not None:  # what replaying the stored schedule on the stored images gives
            stats["end_test_accuracy"] = end_test_accuracy(schedule, stored_images, labels, real, device)
        sections = [
            Section.tensors("images", coded),
            Section.tensors("schedule", self._schedule_tensors(step_sizes, schedule.theta0)),
        ]
        return Encoded(sections, self.method_meta(plan), stats, cleanup=loop.remove)


def end_test_accuracy(
    schedule: TrainingSchedule, images: torch.Tensor, labels: torch.Tensor, real: RealData, device: torch.device
) -> float | list[float]:
    """The test accuracy of the network the stored schedule trains on the stored images (fixed init),
    or of END_EVAL_INITS networks from student seeds 0, 1, … (random init): a fraction in [0, 1] or a list."""
    from d3codec.nn.accuracy import test_accuracy, test_split

    test_x, test_y = test_split(real)
    k = real.num_classes
    accuracies = [
        test_accuracy(
            schedule.replay(images, labels, k, real.mean, real.std, r, device),
            test_x,
            test_y,
            real.mean,
            real.std,
            device,
        )
        for r in range(1 if schedule.theta0 is not None else END_EVAL_INITS)
    ]
    return accuracies[0] if schedule.theta0 is not None else accuracies


def unrolled_gradients(
    net: torch.nn.Module,
    theta0: dict[str, torch.Tensor],
    step_images: torch.Tensor,
    step_labels: torch.Tensor,
    raw_step_sizes: torch.Tensor,
    epochs: int,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The outer loss ℓ(x_real, θ_T) and its gradients through the unrolled training (Eq. 1 and 2).

    Args:
        theta0: name → float32 tensor, the starting parameters (not differentiated).
        step_images: (S, B, C, H, W) float32 normalised, one batch per step; step_labels: (B,) int64.
        raw_step_sizes: (T,) float32, T = S · epochs; step size t is softplus(raw_step_sizes[t]).
        x_real: (M, C, H, W) float32 normalised; y_real: (M,) int64.
    Returns: (outer loss, d loss / d step_images (S, B, C, H, W), d loss / d raw_step_sizes (T,)).

    Memory: the forward pass keeps θ_0 … θ_T only; the backward pass rebuilds each step's graph in
    turn, θ_t ← θ_{t+1}'s adjoint through one vector-Jacobian product (module docstring).
    """
    steps, total = step_images.shape[0], raw_step_sizes.shape[0]
    step_sizes = F.softplus(raw_step_sizes)  # (T,)
    thetas = [theta0]
    for t in range(total):  # forward: no graph kept beyond one step
        params = {k: v.detach().requires_grad_(True) for k, v in thetas[-1].items()}
        thetas.append(
            {k: v.detach() for k, v in gd_step(net, params, step_images[t % steps], step_labels, step_sizes[t]).items()}
        )

    final = {k: v.requires_grad_(True) for k, v in thetas[-1].items()}
    loss = F.cross_entropy(torch.func.functional_call(net, final, (x_real,)), y_real)
    adjoint = list(torch.autograd.grad(loss, list(final.values())))  # dL/dθ_T

    d_images = torch.zeros_like(step_images)
    d_step_sizes = torch.zeros_like(step_sizes)
    for t in reversed(range(total)):
        x = step_images[t % steps].detach().requires_grad_(True)
        params = {k: v.detach().requires_grad_(True) for k, v in thetas[t].items()}
        step_loss = F.cross_entropy(torch.func.functional_call(net, params, (x,)), step_labels)
        grads = torch.autograd.grad(step_loss, list(params.values()), create_graph=True)  # g_t
        # θ_{t+1} = θ_t − η_t g_t(θ_t, x):  dL/dη_t = −⟨a, g_t⟩,  a ← a − η_t (∂g_t/∂θ)ᵀa,  dL/dx −= η_t (∂g_t/∂x)ᵀa
        d_step_sizes[t] = -sum((g.detach() * a).sum() for g, a in zip(grads, adjoint))
        *d_params, d_x = torch.autograd.grad(grads, list(params.values()) + [x], grad_outputs=adjoint)
        adjoint = [a - step_sizes[t] * d for a, d in zip(adjoint, d_params)]
        d_images[t % steps] -= step_sizes[t] * d_x
    return loss.item(), d_images, d_step_sizes * torch.sigmoid(raw_step_sizes)  # softplus' = sigmoid
