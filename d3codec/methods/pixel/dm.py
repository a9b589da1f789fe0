"""Method ``dm``: learn the synthetic images themselves by Distribution Matching.

Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023, Sec. 3.2, Eq. 3 to 5). Synthetic
images start from random real images of their class. Each iteration draws a freshly initialised, untrained
ConvNet φ and minimises

    L = Σ_c ‖ mean_i φ(A(x_real,c,i)) − mean_j φ(A(x̃_c,j)) ‖²

with A siamese DSA (one draw shared by class c's real and synthetic batch), by SGD on the pixels (lr 1.0, momentum
0.5). Preset ``paper`` runs the paper's 20 000 iterations of 256 real images a class; ``fast`` uses fewer of both.
Departures, all options: ``embed_width`` narrows φ (128 in the paper); images are stored as the byte plan says
(uint8 with a per-class range by default, d3codec.format.storage), and ``fill="compressed"`` plans on the estimated
zstd size, then drops single images until the archive fits; ``formation`` (formation.py) stores codes of 1/f the side
that a fixed linear map turns into images (IDC, ICML 2022 Sec. 3.1; FreD, NeurIPS 2023 Sec. 3), optimised through the
map at the learning rate over its gain. Archive section ``images`` (safetensors: images or codes, labels, range).
measurements: benchmarks/method-notes.md
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from d3codec.data.real import ClassSampler, Normalisation, RealData
from d3codec.encode import seeds
from d3codec.encode.interface import CheckpointedEncoder, DatasetSpec, Encoded, MetaFor, Overrun
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.format.container import Section, stored_size
from d3codec.format.storage import encode_images, resolve_storage_dtype, stored_image_zeros
from d3codec.methods.matching import (
    DistributionMatcher,
    FeatureTerm,
    MatchingTerm,
    matching_experts,
    matching_terms,
    memory_sized_chunk,
)
from d3codec.methods.pixel.formation import MASK_SAMPLE_IMAGES, Formation, parse_formation
from d3codec.methods.pixel.plan import FEW_PER_CLASS, PixelPlan, plan_pixel_storage
from d3codec.nn.augment import DSA
from d3codec.nn.experts import ExpertPool
from d3codec.nn.losses import mean_embedding_loss
from d3codec.nn.models import activation_memory, worth_compiling
from d3codec.util.progress import progress_bar


@dataclass(frozen=True)
class DMConfig:
    """Options of DM. Units: iterations; images per class; learning rate per pixel (normalised)."""

    iterations: int = 20000  # outer iterations, each with a fresh random network
    real_per_class: int = 256  # real images per class and iteration
    lr_images: float = 1.0  # SGD learning rate on the (normalised) pixels
    momentum: float = 0.5  # SGD momentum
    embed_width: int = 128  # channels of the random ConvNet-3 that embeds both sides
    dsa: bool = True  # siamese DSA augmentation of both sides
    storage_dtype: str = "auto"  # how images are stored: auto (uint8 with a per-class range), uint8, float16, float32
    images_per_class: int | None = None  # a fixed count instead of filling the budget
    fill: str = "compressed"  # "compressed": plan on the estimated zstd size (trim if wrong); "raw": on the raw size
    formation: str = "pixels"  # how codes become images: pixels, lowres (IDC), dct or dct-variance (FreD); formation.py
    formation_factor: int | None = None  # the side reduction f of lowres and dct (default 2)
    class_chunk: int | None = None  # classes per forward pass (memory, not the objective; None: memory-sized)
    real_cache_per_class: int = 512  # real images per class kept in memory for datasets on disk
    matching: str = "dm"  # embed with random networks (dm) or DANCE's middle encoders of an expert pool (dance)
    expert_count: int = 3  # dance: experts in the pool (ConvNet-3s of embed_width; d3codec.nn.experts)
    expert_epochs: int = 2  # dance: each expert's epochs over the real training set
    calibration_weight: float = 1.0  # dance: weight of the trained expert's cross-entropy on synthetic images

    def __post_init__(self) -> None:
        if self.fill not in ("compressed", "raw"):
            raise ValueError(f"fill must be 'compressed' or 'raw', not {self.fill!r}")

    @property
    def parsed_formation(self) -> Formation:
        return parse_formation(self.formation, self.formation_factor)


# The plan's estimate of how distilled codes compress, as a multiple of the real images' zstd ratio: the
# real ratio itself for pixels (the writer trims image by image, so an optimistic estimate costs only the
# trimmed images' distillation), 0.9 of it for DCT codes, which compress better once distilled.
# measurements: benchmarks/method-notes.md
DISTILLED_RATIO_MARGIN = {"pixels": 1.0, "lowres": 1.0, "dct": 0.9}


PRESETS = {
    "paper": DMConfig(),
    "fast": DMConfig(iterations=400, real_per_class=64, embed_width=64),
    # a first picture and number in minutes (README: the first five minutes), not a result to report
    "smoke": DMConfig(iterations=60, real_per_class=32, embed_width=32),
    # every stage at full class count with a few iterations, to find what breaks before a long run
    # (benchmarks/imagenet_rehearsal.sh); its images are barely distilled
    "rehearsal": DMConfig(iterations=3, real_per_class=8, embed_width=16),
}


class DMEncoder(CheckpointedEncoder[PixelPlan, DMConfig]):
    """DM on pixels (method ``dm``). ``DMEncoder(PRESETS["fast"])`` or any :class:`DMConfig`."""

    method = "pixel"

    presets = PRESETS

    def method_meta(
        self, plan: PixelPlan, formation: Formation | None = None, image_shape: tuple[int, int, int] | None = None
    ) -> dict:
        """``meta.params``; ``formation``: the one distilled with (a dct-variance one with its mask), default the
        config's (a mask of zeros of ``image_shape``'s length while planning)."""
        meta = {
            "objective": "dm",
            "config": asdict(self.config),
            "images_per_class": plan.images_per_class,
            "storage_dtype": plan.storage_dtype,
        }
        formation = formation or self.config.parsed_formation
        return meta if formation.kind == "pixels" else {**meta, "formation": formation.meta(image_shape)}

    def _sections(self, images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, dtype: str) -> list[Section]:
        return [Section.tensors("images", encode_images(images, labels, spec.num_classes, dtype))]

    def plan(self, spec: DatasetSpec, budget: int, meta_for: MetaFor, real: RealData | None = None) -> PixelPlan:
        """Images per class and storage dtype for ``budget`` bytes (see d3codec.methods.pixel.plan); an image is its
        formation's code (C, H/f, W/f)."""
        formation = self.config.parsed_formation
        formation.check(spec.image_shape)
        k, shape = spec.num_classes, formation.code_shape(spec.image_shape)

        def sections_for(n: int, dtype: str) -> list[Section]:  # placeholders in their stored dtypes
            draft = PixelPlan(n, dtype, 0, budget)
            return [
                Section.json("meta", meta_for(self.method_meta(draft, image_shape=spec.image_shape))),
                Section.tensors("images", stored_image_zeros(n * k, shape, k, dtype)),
            ]

        ratio = None
        if real is not None and self.config.fill == "compressed" and self.config.images_per_class is None:
            dtype = resolve_storage_dtype(self.config.storage_dtype)
            margin = DISTILLED_RATIO_MARGIN[formation.kind]
            # estimated on the low square (no mask before distilling): real images' ranked codes store at 0.64 of
            # their size against the square's 0.60 on Fashion-MNIST at ×2, distilled ones at 0.55 (the margin)
            lowpass = replace(formation, selection="lowpass")
            ratio = min(1.0, image_compression_ratio(real, dtype, lowpass) * margin)
        return plan_pixel_storage(
            budget, k, shape, sections_for, self.config.storage_dtype, self.config.images_per_class, ratio
        )

    def distill(
        self, real: RealData, plan: PixelPlan, *, device: torch.device, seed: int, progress: bool = True
    ) -> Encoded:
        cfg, spec = self.config, DatasetSpec.of(real)
        k, n = real.num_classes, plan.images_per_class
        gen = seeds.generator(seed, "dm")
        torch.manual_seed(seeds.stream_seed(seed, "dm"))  # the random networks draw from the global generator
        normalise = Normalisation.of(real, device)
        # a dataset on disk is read once into a per-class cache, from its own stream (in memory: no draws)
        sampler = ClassSampler(real, list(range(k)), cfg.real_cache_per_class, seeds.generator(seed, "dm-real-cache"))
        formation = self.config.parsed_formation
        if formation.selection == "variance":  # FreD's coefficients: ranked on the real images
            formation = formation.fitted(mask_sample(real, seeds.generator(seed, "dm-mask")))
        c, h, w = formation.code_shape(real.image_shape)

        synthetic = initial_codes(sampler, formation, normalise, k, n, gen, device).requires_grad_(True)
        optimiser = torch.optim.SGD([synthetic], lr=cfg.lr_images / formation.gain, momentum=cfg.momentum)

        def images_of(classes: Sequence[int]) -> torch.Tensor:  # (K', n, C, H, W) normalised images of some classes
            assert isinstance(classes, range), "the matcher gives DM's classes as ranges"
            chosen = synthetic[classes.start : classes.stop]
            if formation.kind == "pixels":
                return chosen
            return formation.decode(chosen.flatten(0, 1), real.image_shape).view(len(chosen), n, *real.image_shape)

        matcher, terms, pool = self._matcher(real, sampler, normalise, n, device, progress)

        loop = self.loop(
            "pixel-dm",
            (asdict(cfg), asdict(plan), seed, real.name, len(real.train_targets), device.type),
            cfg.iterations,
        )
        loop.resume(LoopState(gen, {"synthetic": synthetic}, {"sgd": optimiser}), device)  # a killed run goes on
        self._run(loop, optimiser, matcher, images_of, terms, gen, progress)
        # the momentum, the gradients and the real images' cache go before the copy below reuses their memory:
        # at ImageNet's 1 000 classes each of the first two is as large as the copy (0.5 GB)
        synthetic.grad = None
        # their memory freed (_run's step held them in its closure, and never runs again)
        optimiser = matcher = sampler = None  # type: ignore[assignment]
        images = formation.denormalise(
            synthetic.detach().flatten(0, 1), normalise.mean, normalise.std, real.image_shape
        ).cpu()  # codes of pixel-space images, (K·n, C, H/f, W/f)
        stats = {"distill_seconds": round(loop.seconds, 3), **loop.stats()}
        if pool is not None:
            stats["expert_seconds"] = round(pool.trained_seconds, 3)  # 0 where every expert came from the cache
        encoded = self._encoded(images.view(k, n, c, h, w), spec, plan, stats, formation=formation)
        encoded.cleanup = loop.remove
        return encoded

    def _run(
        self,
        loop: ResumableLoop,
        optimiser: torch.optim.Optimizer,
        matcher: DistributionMatcher,
        images_of: Callable[[Sequence[int]], torch.Tensor],
        terms: list[MatchingTerm],
        gen: torch.Generator,
        progress: bool,
    ) -> None:
        """DM's outer iterations from ``loop.first`` on (a resumed run goes on): each is one optimiser step on the
        synthetic codes against the matcher's loss (Eq. 4) on ``images_of(classes)`` (K', n, C, H, W), drawing
        from ``gen``."""

        def step(it: int) -> float:
            optimiser.zero_grad(set_to_none=True)
            loss = matcher.step(images_of, terms, gen)
            optimiser.step()
            return loss

        iterations = self.config.iterations
        loop.run(
            step,
            progress_bar(
                range(loop.first, iterations),
                desc="DM",
                enabled=progress,
                unit="it",
                initial=loop.first,
                total=iterations,
            ),
        )

    def _matcher(
        self,
        real: RealData,
        sampler: ClassSampler,
        normalise: Normalisation,
        n: int,
        device: torch.device,
        progress: bool,
    ) -> tuple[DistributionMatcher, list[MatchingTerm], ExpertPool | None]:
        """The matcher of ``n`` images a class, its terms (Σ_c ‖mean φ(x_c) − mean φ(x̃_c)‖², Eq. 4, and DANCE's
        calibration under matching dance) and the expert pool (None under matching dm), trained or read here."""
        cfg, k = self.config, real.num_classes
        chunk = cfg.class_chunk or memory_sized_chunk(
            k, n, cfg.real_per_class, real.image_shape, cfg.embed_width, activation_memory(device)
        )
        pool = matching_experts(
            cfg.matching, real, cfg.expert_count, cfg.expert_epochs, cfg.embed_width, device, progress
        )
        matcher = DistributionMatcher(
            real.image_shape,
            k,
            sampler.sample,
            cfg.real_per_class,
            normalise,
            DSA() if cfg.dsa else None,
            cfg.embed_width,
            chunk,
            device,
            pool,
            compile=worth_compiling(cfg.iterations * k * (n + cfg.real_per_class)),
        )
        return matcher, [FeatureTerm(mean_embedding_loss)] + matching_terms(pool, cfg.calibration_weight), pool

    def _encoded(
        self,
        images: torch.Tensor,
        spec: DatasetSpec,
        plan: PixelPlan,
        stats: dict,
        total: int | None = None,
        formation: Formation | None = None,
    ) -> Encoded:
        """Sections of the first ``total`` (default all) of images (K, n, C, H, W), spread over the classes:
        class c keeps total // K images, one more for c < total % K. ``trim`` drops as many images as an
        :class:`Overrun` asks, the last image of the last classes first, never below the guaranteed count;
        below d3codec.methods.pixel.plan.FEW_PER_CLASS images a class it drops whole rounds (one image of every
        class)."""
        k, n = images.shape[:2]
        total = k * n if total is None else total
        counts = [total // k + (c < total % k) for c in range(k)]
        labels = torch.arange(k).repeat_interleave(torch.tensor(counts))
        kept = replace(plan, images_per_class=counts[0])
        floor = k * max(plan.guaranteed_per_class, 1)

        def trim(overrun: Overrun) -> Encoded | None:
            if total <= floor:
                return None
            smaller = max(floor, total - overrun.units_to_drop(total, ("images",)))
            if smaller < k * FEW_PER_CLASS:  # few images a class: drop whole rounds, classes stay equal
                smaller = max(floor, smaller - smaller % k)
            return self._encoded(
                images, spec, plan, {**stats, "planned_images_per_class": plan.images_per_class}, smaller, formation
            )

        chosen = torch.cat([images[c, : counts[c]] for c in range(k)]) if total < k * n else images.flatten(0, 1)
        meta = self.method_meta(kept, formation, spec.image_shape)
        meta = meta if total == k * counts[0] else {**meta, "images": total}
        return Encoded(self._sections(chosen, labels, spec, plan.storage_dtype), meta, stats, trim)


def initial_codes(
    sampler: ClassSampler,
    formation: Formation,
    normalise: Normalisation,
    k: int,
    n: int,
    gen: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Synthetic codes of normalised images (the images themselves for formation pixels), initialised from ``n``
    random real images of each of ``k`` classes (drawn with ``gen``), for the formation to make images of (IDC,
    FreD): (K, n, C, H/f, W/f) float32 on ``device``."""
    init = torch.stack([sampler.sample(cls, n, gen) for cls in range(k)])  # (K, n, C, H, W)
    codes = formation.encode(normalise(init.to(device).flatten(0, 1)))  # (K·n, C, H/f, W/f)
    del init  # at ImageNet's 1 000 classes, hundreds of MB
    return codes.reshape(k, n, *codes.shape[1:])


def mask_sample(real: RealData, gen: torch.Generator) -> torch.Tensor:
    """About MASK_SAMPLE_IMAGES random real training images spread over the classes (at least one a class),
    (N, C, H, W) float32 in [0, 1]: what a dct-variance formation ranks its coefficients on."""
    return real.sample_classes(max(1, MASK_SAMPLE_IMAGES // real.num_classes), gen)


def image_compression_ratio(
    real: RealData, dtype: str, formation: Formation | None = None, per_class: int | None = None, seed: int = 0
) -> float:
    """zstd's stored/raw size for ``per_class`` random real images of each class (default 16, fewer with
    over 256 classes: about 4 096 images in all, at least 2 a class), as ``formation``'s codes (default: the
    pixels) coded as ``dtype``."""
    per_class = per_class or max(2, min(16, 4096 // real.num_classes))
    gen = torch.Generator().manual_seed(seed)
    images = real.sample_classes(per_class, gen)
    images = formation.encode(images) if formation is not None else images
    labels = torch.arange(real.num_classes).repeat_interleave(per_class)
    raw = encode_images(images, labels, real.num_classes, dtype)["images"].numpy().tobytes()
    return stored_size(raw) / len(raw)
