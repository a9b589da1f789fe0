"""Pixel distillation: learn the synthetic images themselves.

Objective ``dm``: Distribution Matching (Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023, Sec. 3.2, Eq. 3 to 5). Synthetic images start from random real images of
their class. Each iteration draws a freshly initialised, untrained ConvNet φ and minimises

    L = Σ_c ‖ mean_i φ(A(x_real,c,i)) − mean_j φ(A(x̃_c,j)) ‖²

where A is DSA augmentation with one parameter draw shared by the real and synthetic batch of
class c (siamese), by SGD on the synthetic pixels (lr 1.0, momentum 0.5). The paper runs 20 000
iterations with 256 real images per class per iteration (preset ``paper``); the ``fast`` preset
uses fewer of both so that a 2-core CPU finishes Fashion-MNIST at the IPC 10 budget in 15 minutes;
benchmarks/RESULTS.md shows what that costs.

Departures, all options: ``embed_width`` may narrow the random embedding network (128 in the
paper); images are stored as the byte plan says (uint8 with a per-class range by default, see
d3codec.storage), so a budget holds up to 4× the paper's float32 image count, and more where zstd
shrinks them (``fill="compressed"``: the plan aims at the count whose estimated compressed size
fits, from the zstd ratio of real images times DISTILLED_RATIO_MARGIN; if the archive still comes
out too large, the last image of each class is dropped until it fits, never below the count that
fits uncompressed; ``fill="raw"`` plans on the uncompressed size alone and never drops).

Archive sections: ``images`` (safetensors: images, labels, range) beside the metadata.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..augment import DSA
from ..budget import PixelPlan, plan_pixel_storage
from ..container import Section, stored_size
from ..data import RealData
from ..errors import D3FormatError
from ..models import ConvNet
from ..storage import check_probabilities, decode_images, encode_images, resolve_storage_dtype
from ..progress import progress_bar
from .base import CheckpointedEncoder, DatasetSpec, Encoded
from .registry import ArchiveKind, Method, Option, register_archive_kind, register_method


@dataclass(frozen=True)
class DMConfig:
    """Options of DM. Units: iterations; images per class; learning rate per pixel (normalised)."""

    iterations: int = 20000
    real_per_class: int = 256
    lr_images: float = 1.0
    momentum: float = 0.5
    embed_width: int = 128
    dsa: bool = True
    storage_dtype: str = "auto"
    images_per_class: int | None = None
    fill: str = "compressed"


# Distilled images compress worse than real ones: on Fashion-MNIST uint8, zstd stored real images
# at 0.59 of their raw size and the same images after 300 DM iterations at 0.74 (ratio 1.25).
DISTILLED_RATIO_MARGIN = 1.3


PRESETS = {
    "paper": DMConfig(),
    "fast": DMConfig(iterations=400, real_per_class=64, embed_width=64),
}


class PixelEncoder(CheckpointedEncoder):
    """DM on pixels. ``PixelEncoder(PRESETS["fast"])`` or any :class:`DMConfig`."""

    method = "pixel"

    presets = PRESETS

    def method_meta(self, plan: PixelPlan) -> dict:
        return {"objective": "dm", "config": asdict(self.config), "images_per_class": plan.images_per_class,
                "storage_dtype": plan.storage_dtype}

    def _sections(self, images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, dtype: str) -> list[Section]:
        return [Section.tensors("images", encode_images(images, labels, spec.num_classes, dtype))]

    def plan(self, spec: DatasetSpec, budget: int, meta_for, real: RealData | None = None) -> PixelPlan:
        """Images per class and storage dtype for ``budget`` bytes (see d3codec.budget)."""
        k, shape = spec.num_classes, spec.image_shape
        if self.config.fill not in ("compressed", "raw"):
            raise ValueError(f"fill must be 'compressed' or 'raw', not {self.config.fill!r}")

        def sections_for(n: int, dtype: str) -> list[Section]:
            draft = PixelPlan(n, dtype, 0, budget)
            labels = torch.arange(k).repeat_interleave(n)
            return [Section.json("meta", meta_for(self.method_meta(draft)))] + \
                self._sections(torch.zeros(n * k, *shape), labels, spec, dtype)

        ratio = None
        if real is not None and self.config.fill == "compressed" and self.config.images_per_class is None:
            dtype = resolve_storage_dtype(self.config.storage_dtype)
            ratio = min(1.0, image_compression_ratio(real, dtype) * DISTILLED_RATIO_MARGIN)
        return plan_pixel_storage(budget, k, shape, sections_for, self.config.storage_dtype,
                                  self.config.images_per_class, ratio)

    def distill(self, real: RealData, plan: PixelPlan, *, device: torch.device, seed: int,
                progress: bool = True) -> Encoded:
        cfg, spec = self.config, DatasetSpec.of(real)
        k, n = real.num_classes, plan.images_per_class
        c, h, w = real.image_shape
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # network initialisations draw from the global generator
        mean = torch.tensor(real.mean, device=device).view(1, c, 1, 1)
        std = torch.tensor(real.std, device=device).view(1, c, 1, 1)

        # synthetic images, normalised, initialised from random real images of each class
        init = torch.cat([real.sample_class(cls, n, gen) for cls in range(k)])  # (K·n, C, H, W)
        synthetic = ((init.to(device) - mean) / std).requires_grad_(True)
        optimiser = torch.optim.SGD([synthetic], lr=cfg.lr_images, momentum=cfg.momentum)
        dsa = DSA() if cfg.dsa else None

        start = time.time()
        ckpt, first, loss_value = self.resume_checkpoint(  # a killed run goes on from its last checkpoint
            "pixel-dm", (asdict(cfg), asdict(plan), seed, real.name, len(real.train_targets), device.type),
            {"sgd": optimiser}, gen, {"synthetic": synthetic}, device)
        for it in progress_bar(range(first, cfg.iterations), desc="DM", enabled=progress, unit="it", initial=first,
                       total=cfg.iterations):
            net = ConvNet(c, k, h, width=cfg.embed_width).to(device)
            net.requires_grad_(False)
            real_batches, synthetic_batches = [], []
            for cls in range(k):
                x_real = (real.sample_class(cls, cfg.real_per_class, gen).to(device) - mean) / std
                x_syn = synthetic[cls * n:(cls + 1) * n]
                if dsa is not None:  # one draw, applied to both: siamese augmentation
                    params = dsa.sample(gen)
                    x_real, x_syn = dsa.apply(x_real, params), dsa.apply(x_syn, params)
                real_batches.append(x_real)
                synthetic_batches.append(x_syn)
            with torch.no_grad():
                real_mean = net.embed(torch.cat(real_batches)).view(k, cfg.real_per_class, -1).mean(1)  # (K, D)
            syn_mean = net.embed(torch.cat(synthetic_batches)).view(k, n, -1).mean(1)  # (K, D)
            loss = ((real_mean - syn_mean) ** 2).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_value = loss.detach().item()
            if ckpt is not None and ckpt.due(it + 1, cfg.iterations):
                ckpt.save(it + 1, {"synthetic": synthetic, "loss": torch.tensor(loss_value)}, {"sgd": optimiser}, gen)

        images = (synthetic.detach() * std + mean).cpu()  # back to pixel space
        stats = {"distill_seconds": round(time.time() - start, 3)}
        if math.isfinite(loss_value):
            stats["final_loss"] = round(loss_value, 6)
        if first:
            stats["resumed_at_iteration"] = first
        encoded = self._encoded(images.view(k, n, c, h, w), spec, plan, stats)
        encoded.cleanup = ckpt.remove if ckpt is not None else None
        return encoded

    def _encoded(self, images: torch.Tensor, spec: DatasetSpec, plan: PixelPlan, stats: dict) -> Encoded:
        """Sections of images (K, n, C, H, W); trim drops the last image of each class."""
        k, n = images.shape[:2]
        labels = torch.arange(k).repeat_interleave(n)
        kept = replace(plan, images_per_class=n)

        def trim() -> Encoded | None:
            if n - 1 < max(plan.guaranteed_per_class, 1):
                return None
            return self._encoded(images[:, :n - 1], spec, plan, {**stats, "planned_images_per_class":
                                                                  plan.images_per_class})

        return Encoded(self._sections(images.reshape(k * n, *images.shape[2:]), labels, spec, plan.storage_dtype),
                       self.method_meta(kept), stats, trim)


def image_compression_ratio(real: RealData, dtype: str, per_class: int = 16, seed: int = 0) -> float:
    """zstd's stored/raw size for ``per_class`` random real images of each class coded as ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.cat([real.sample_class(c, per_class, gen) for c in range(real.num_classes)])
    labels = torch.arange(real.num_classes).repeat_interleave(per_class)
    raw = encode_images(images, labels, real.num_classes, dtype)["images"].numpy().tobytes()
    return stored_size(raw) / len(raw)


def decode(reader, meta: dict, limits=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Images (N, C, H, W) float32 in pixel space, labels (N,) int64 and soft labels (N, K) float32
    (None where the archive has no ``soft_labels`` section) of a pixel archive.

    ``limits`` (d3codec.limits.DecodeLimits) bounds the decoded bytes before they are allocated.
    Raises: D3FormatError for tensors that break spec/FORMAT.md §5 (soft labels must be (N, K) F16 or
    F32 probabilities); D3LimitError past the limits.
    """
    from ..weights import check_names

    ds = meta["dataset"]
    num_classes = len(ds["classes"])
    images, labels = decode_images(reader.read_tensors("images"), num_classes, tuple(ds["image_shape"]), limits,
                                   soft="soft_labels" in reader)
    soft = None
    if "soft_labels" in reader:
        tensors = reader.read_tensors("soft_labels")
        check_names(tensors, {"soft_labels"}, "soft_labels")
        soft = tensors["soft_labels"]
        if soft.shape != (len(labels), num_classes) or soft.dtype not in (torch.float16, torch.float32):
            raise D3FormatError("section 'soft_labels' must hold 'soft_labels' of shape (N, classes), float16 or "
                                "float32")
        check_probabilities(soft, "soft_labels", "soft_labels")
        soft = soft.float()
    return images, labels, soft


STORAGE_OPTION = Option("--storage-dtype", "storage_dtype", "How images are stored; auto picks uint8 with a per-class "
                        "range (most images per byte).", kind="choice", choices=("auto", "uint8", "float16", "float32"))
IMAGES_OPTION = Option("--images-per-class", "images_per_class", "Fix the image count instead of filling the budget.")

def read_schedule(reader, meta: dict, limits=None):
    """The training schedule a pixel archive of objective bptt carries, else None (see
    d3codec.methods.bptt.read_schedule, imported here only when an archive is read)."""
    from .bptt import read_schedule as read_bptt_schedule

    return read_bptt_schedule(reader, meta, limits)


def describe_params(params: dict) -> str:
    """A pixel archive's ``meta.params`` in a few words (d3 info, and the line d3 compress ends with)."""
    words = (f"objective {params.get('objective', 'dm')}: {int(params['images_per_class'])} {params['storage_dtype']} "
             "images per class")
    if params.get("objective") == "bptt":
        words += (f", {int(params['inner_steps'])} steps × {int(params['inner_epochs'])} epochs of a "
                  f"{params['network']} schedule, {params['init']} init")
    return words


register_archive_kind(ArchiveKind("pixel", {"meta": True, "images": True, "soft_labels": True, "schedule": True},
                                  decode=decode, read_schedule=read_schedule, describe=describe_params))
register_method(Method("dm", "Distribution matching on the pixels (Zhao & Bilen, WACV 2023): learn the images.",
                       "pixel", PixelEncoder, (STORAGE_OPTION, IMAGES_OPTION)))
