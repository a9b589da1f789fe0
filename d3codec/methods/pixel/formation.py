"""Formations: how the codes a pixel archive stores become images (the parameterisation of synthetic data).

A formation is a fixed linear map from a stored code (C, H/f, W/f) to an image (C, H, W), so that a
budget holds about f² times as many synthetic images as it holds pixel images, each with less detail:

- ``pixels`` (f = 1): the images themselves (DM, Zhao & Bilen, WACV 2023).
- ``lowres``: IDC's multi-formation (Kim et al., "Dataset Condensation via Efficient Synthetic-Data
  Parameterization", ICML 2022, Sec. 3.1): every image is stored at 1/f of its side and upsampled
  bilinearly to full size. IDC packs f² such images into one full-size slot and splits it at training
  time; storing the f² small images apart holds the same bytes and the same images.
- ``dct``: FreD (Shin et al., "Frequency Domain-based Dataset Distillation", NeurIPS 2023, Sec. 3):
  every image is stored as the lowest (H/f)·(W/f) coefficients of its orthonormal 2-D DCT-II, per
  channel; decoding fills the other coefficients with zeros and inverts the DCT. FreD picks the
  coefficients by their explained variance on the real data; the low-frequency square kept here needs no
  stored mask, and on small images the two are close (most variance is at low frequencies).

The distiller optimises the codes through :meth:`Formation.decode` (the formation is differentiable),
in the networks' normalised space; :meth:`Formation.denormalise` turns those codes into the pixel-space
codes the archive stores. spec/FORMAT.md §5.2 defines ``meta.params.formation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...archive import describe, meta_int, meta_str
from ...errors import D3FormatError

FORMATIONS = ("pixels", "lowres", "dct")
MAX_FACTOR = 16  # the largest side reduction a reader accepts


@dataclass(frozen=True)
class Formation:
    """One formation. ``kind`` one of FORMATIONS; ``factor`` f ≥ 1, the side reduction (1 for pixels)."""

    kind: str = "pixels"
    factor: int = 1

    def __post_init__(self):
        if self.kind not in FORMATIONS:
            raise ValueError(f"formation must be one of {', '.join(FORMATIONS)}, not {self.kind!r}")
        if (self.kind == "pixels") != (self.factor == 1) or not 1 <= self.factor <= MAX_FACTOR:
            raise ValueError(f"formation {self.kind!r} needs a factor of " +
                             ("1" if self.kind == "pixels" else f"2 to {MAX_FACTOR}") + f", not {self.factor}")

    def check(self, image_shape: tuple[int, int, int]) -> None:
        """Raise ValueError where the formation cannot make images of ``image_shape`` (C, H, W)."""
        _, h, w = image_shape
        if self.kind == "lowres" and (h % self.factor or w % self.factor):
            raise ValueError(f"formation lowres: the factor {self.factor} must divide the image side ({h}×{w})")
        if h // self.factor < 1 or w // self.factor < 1:
            raise ValueError(f"formation {self.kind}: the factor {self.factor} leaves nothing of {h}×{w} images")

    def code_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The stored shape (C, H // f, W // f) of one image's code."""
        c, h, w = image_shape
        return c, h // self.factor, w // self.factor

    @property
    def gain(self) -> float:
        """How many times larger a code value's gradient is than a pixel's (f² for lowres: each stored value
        feeds about f² pixels; 1 for the orthonormal DCT); the distiller divides its learning rate by it."""
        return float(self.factor ** 2) if self.kind == "lowres" else 1.0

    def decode(self, codes: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
        """Codes (N, C, H/f, W/f) → images (N, C, H, W), the same dtype and device; linear, differentiable."""
        _, h, w = image_shape
        if self.kind == "pixels":
            return codes
        if self.kind == "lowres":
            return F.interpolate(codes, size=(h, w), mode="bilinear", align_corners=False)
        bh, bw = dct_basis(h, codes.shape[-2], codes), dct_basis(w, codes.shape[-1], codes)  # (kh, H), (kw, W)
        return bh.T @ codes @ bw  # x = Bhᵀ X Bw: zero-filled high frequencies, inverse orthonormal DCT

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) → codes (N, C, H/f, W/f): area averages (lowres) or the lowest DCT coefficients
        (dct). For dct, ``decode(encode(x))`` is the least-squares projection of x on what codes can make."""
        if self.kind == "pixels":
            return images
        h, w = images.shape[-2:]
        kh, kw = h // self.factor, w // self.factor
        if self.kind == "lowres":
            return F.adaptive_avg_pool2d(images, (kh, kw))
        return dct_basis(h, kh, images) @ images @ dct_basis(w, kw, images).T

    def denormalise(self, codes: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    image_shape: tuple[int, int, int]) -> torch.Tensor:
        """Codes of normalised images → codes of pixel-space images: x = norm⁻¹(decode(codes)) =
        decode(codes · std + encode(mean)). ``mean``, ``std`` broadcast as (1, C, 1, 1)."""
        if self.kind != "dct":  # pixels and bilinear upsampling keep constants: the offset is mean itself
            return codes * std + mean
        out = codes * std
        out[:, :, 0, 0] += mean.view(-1) * math.sqrt(image_shape[1] * image_shape[2])  # DC of a constant image
        return out

    def meta(self) -> dict:
        """``meta.params.formation`` (spec/FORMAT.md §5.2)."""
        return {"kind": self.kind, "factor": self.factor}


PIXELS = Formation()


def dct_basis(n: int, keep: int, like: torch.Tensor) -> torch.Tensor:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size n: (keep, n), like's dtype and device.
    Row k, column j: s_k · cos(π (2j + 1) k / 2n), s_0 = √(1/n), s_k = √(2/n)."""
    k = torch.arange(keep, dtype=torch.float64).view(-1, 1)
    j = torch.arange(n, dtype=torch.float64).view(1, -1)
    basis = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis.to(dtype=like.dtype, device=like.device)


def parse_formation(kind: str, factor: int | None = None) -> Formation:
    """The formation a user asked for: ``kind`` and ``factor`` (default 2 for lowres and dct)."""
    if kind == "pixels":
        if factor not in (None, 1):
            raise ValueError("--formation-factor applies to the lowres and dct formations, not pixels")
        return PIXELS
    return Formation(kind, 2 if factor is None else factor)


def read_formation(params: dict, image_shape: tuple[int, int, int]) -> Formation:
    """``meta.params.formation`` of a pixel archive (absent: pixels), checked against the image shape.
    Raises: D3FormatError for an unknown kind, a factor outside [1, MAX_FACTOR] or one that does not fit."""
    if "formation" not in params:
        return PIXELS
    value = params["formation"]
    if not isinstance(value, dict) or set(value) != {"kind", "factor"}:
        raise D3FormatError(f"params.formation must be an object with kind and factor, not {describe(value)}")
    kind = meta_str(value, "kind", FORMATIONS, "params.formation.")
    factor = meta_int(value, "factor", 1, MAX_FACTOR, "params.formation.")
    try:
        formation = Formation(kind, factor)
        formation.check(image_shape)
    except ValueError as e:
        raise D3FormatError(f"params.formation: {e}") from None
    return formation
