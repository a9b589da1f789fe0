"""Formations: how the codes a pixel archive stores become images (the parameterisation of synthetic data).

A formation is a fixed linear map from a stored code (C, H/f, W/f) to an image (C, H, W), so that a
budget holds about f² times as many synthetic images as it holds pixel images, each with less detail:

- ``pixels`` (f = 1): the images themselves (DM, Zhao & Bilen, WACV 2023).
- ``lowres``: IDC's multi-formation (Kim et al., "Dataset Condensation via Efficient Synthetic-Data
  Parameterization", ICML 2022, Sec. 3.1): every image is stored at 1/f of its side and upsampled
  bilinearly to full size. IDC packs f² such images into one full-size slot and splits it at training
  time; storing the f² small images apart holds the same bytes and the same images.
- ``dct``: FreD (Shin et al., "Frequency Domain-based Dataset Distillation", NeurIPS 2023, Sec. 3):
  every image is stored as (H/f)·(W/f) coefficients of its orthonormal 2-D DCT-II, per channel;
  decoding fills the other coefficients with zeros and inverts the DCT. Which coefficients: the lowest
  frequencies (a square, no mask stored), or, as FreD selects them (Sec. 3.2, explained variance ratio),
  those of largest variance over the real training images, named by a stored mask per channel
  (``dct-variance``; the DC coefficient is always kept, so that a constant offset stays exact). On
  Fashion-MNIST at f = 2 the variance-ranked 196 leave 34 % less residual error than the 14 × 14 square.

The distiller optimises the codes through :meth:`Formation.decode` (the formation is differentiable),
in the networks' normalised space; :meth:`Formation.denormalise` turns those codes into the pixel-space
codes the archive stores. spec/FORMAT.md §5.5 defines ``meta.params.formation``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from d3codec.errors import D3FormatError
from d3codec.format.meta import describe, meta_int, meta_str

FORMATIONS = ("pixels", "lowres", "dct")  # the kinds an archive names (spec/FORMAT.md §5.5)
FORMATION_CHOICES = FORMATIONS + ("dct-variance",)  # what a user may ask for: dct-variance is dct with FreD's mask
MAX_FACTOR = 16  # the largest side reduction a reader accepts
MASK_SAMPLE_IMAGES = 4096  # real images whose DCT variances rank the coefficients (dct-variance)


@dataclass(frozen=True)
class Formation:
    """One formation. ``kind`` one of FORMATIONS; ``factor`` f ≥ 1, the side reduction (1 for pixels).

    ``selection`` (dct only): ``lowpass``, the lowest frequencies, or ``variance``, the coefficients a
    ``mask`` names: per channel, a hex string of H·W bits, row-major, the first bit the most significant
    of the first byte (spec/FORMAT.md §5.5); code element (a, b) is the (a·W/f + b)-th set bit. A
    variance formation without its mask is a request, made whole by :meth:`fitted` on the real data.
    """

    kind: str = "pixels"
    factor: int = 1
    selection: str = "lowpass"
    mask: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.kind not in FORMATIONS:
            raise ValueError(f"formation must be one of {', '.join(FORMATIONS)}, not {self.kind!r}")
        if (self.kind == "pixels") != (self.factor == 1) or not 1 <= self.factor <= MAX_FACTOR:
            raise ValueError(
                f"formation {self.kind!r} needs a factor of "
                + ("1" if self.kind == "pixels" else f"2 to {MAX_FACTOR}")
                + f", not {self.factor}"
            )
        if self.selection not in ("lowpass", "variance") or (self.selection == "variance" and self.kind != "dct"):
            raise ValueError(
                f"only the dct formation selects its coefficients (lowpass or variance), not "
                f"{self.kind} by {self.selection!r}"
            )
        if self.mask is not None and self.selection != "variance":
            raise ValueError("a coefficient mask belongs to the dct formation's variance selection")

    def check(self, image_shape: tuple[int, int, int]) -> None:
        """Raise ValueError where the formation cannot make images of ``image_shape`` (C, H, W)."""
        _, h, w = image_shape
        if self.kind == "lowres" and (h % self.factor or w % self.factor):
            raise ValueError(f"formation lowres: the factor {self.factor} must divide the image side ({h}×{w})")
        if h // self.factor < 1 or w // self.factor < 1:
            raise ValueError(f"formation {self.kind}: the factor {self.factor} leaves nothing of {h}×{w} images")
        if self.mask is not None:
            mask_positions(self.mask, image_shape, self.factor)  # raises ValueError for a mask of another shape

    def code_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The stored shape (C, H // f, W // f) of one image's code."""
        c, h, w = image_shape
        return c, h // self.factor, w // self.factor

    @property
    def gain(self) -> float:
        """How many times larger a code value's gradient is than a pixel's (f² for lowres: each stored value
        feeds about f² pixels; 1 for the orthonormal DCT); the distiller divides its learning rate by it."""
        return float(self.factor**2) if self.kind == "lowres" else 1.0

    def decode(self, codes: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
        """Codes (N, C, H/f, W/f) → images (N, C, H, W), the same dtype and device; linear, differentiable."""
        _, h, w = image_shape
        if self.kind == "pixels":
            return codes
        if self.kind == "lowres":
            return F.interpolate(codes, size=(h, w), mode="bilinear", align_corners=False)
        if self.selection == "variance":  # the codes at their masked positions, zeros elsewhere, then the full inverse
            n, c = codes.shape[:2]
            where = self.positions(image_shape, codes.device).unsqueeze(0).expand(n, -1, -1)  # (N, C, kh·kw)
            codes = codes.new_zeros(n, c, h * w).scatter(2, where, codes.flatten(2)).view(n, c, h, w)
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
        if self.selection == "variance":
            full = dct_basis(h, h, images) @ images @ dct_basis(w, w, images).T  # (N, C, H, W) every coefficient
            n, c = images.shape[:2]
            where = self.positions((c, h, w), images.device).unsqueeze(0).expand(n, -1, -1)
            return full.flatten(2).gather(2, where).view(n, c, kh, kw)
        return dct_basis(h, kh, images) @ images @ dct_basis(w, kw, images).T

    def denormalise(
        self, codes: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, image_shape: tuple[int, int, int]
    ) -> torch.Tensor:
        """Codes of normalised images → codes of pixel-space images: x = norm⁻¹(decode(codes)) =
        decode(codes · std + encode(mean)). ``mean``, ``std`` broadcast as (1, C, 1, 1)."""
        if self.kind != "dct":  # pixels and bilinear upsampling keep constants: the offset is mean itself
            return codes * std + mean
        if self.mask is not None and bool((self.positions(image_shape)[:, 0] != 0).any()):
            raise ValueError("a dct mask without the DC coefficient cannot hold the normalisation's offset")
        out = codes * std
        out[:, :, 0, 0] += mean.view(-1) * math.sqrt(image_shape[1] * image_shape[2])  # DC of a constant image
        return out

    def positions(self, image_shape: tuple[int, int, int], device=None) -> torch.Tensor:
        """(C, kh·kw) int64: the flat H·W position of each code element, per channel (variance selection)."""
        if self.mask is None:
            raise ValueError("the dct-variance formation has no mask yet: fit it to the real data (Formation.fitted)")
        return mask_positions(self.mask, image_shape, self.factor).to(device)

    def fitted(self, images: torch.Tensor) -> "Formation":
        """This formation with its mask chosen on ``images`` (N, C, H, W) float32 (real training images):
        per channel the DC coefficient and the kh·kw − 1 others of largest variance over the images (FreD's
        explained-variance selection, Shin et al. 2023, Sec. 3.2). Formations without a mask: unchanged."""
        if self.selection != "variance":
            return self
        _, c, h, w = images.shape
        keep = (h // self.factor) * (w // self.factor)
        x = images.double()
        coefficients = dct_basis(h, h, x) @ x @ dct_basis(w, w, x).T
        variance = coefficients.flatten(2).var(0)  # (C, H·W)
        variance[:, 0] = float("inf")  # the DC first: denormalise adds the mean's offset there
        masks = []
        for ch in range(c):
            bits = np.zeros(8 * ((h * w + 7) // 8), dtype=bool)
            bits[variance[ch].topk(keep).indices.cpu().numpy()] = True
            masks.append(np.packbits(bits).tobytes().hex())
        return Formation(self.kind, self.factor, self.selection, tuple(masks))

    def meta(self, image_shape: tuple[int, int, int] | None = None) -> dict:
        """``meta.params.formation`` (spec/FORMAT.md §5.5). A variance formation not yet fitted gives a mask of
        zeros of the right length for ``image_shape`` (a placeholder while planning bytes)."""
        out = {"kind": self.kind, "factor": self.factor}
        if self.selection != "variance":
            return out
        if self.mask is not None:
            return {**out, "mask": list(self.mask)}
        if image_shape is None:
            raise ValueError("a variance formation not yet fitted needs the image shape for its placeholder mask")
        c, h, w = image_shape
        return {**out, "mask": ["0" * (2 * ((h * w + 7) // 8))] * c}


PIXELS = Formation()


def dct_basis(n: int, keep: int, like: torch.Tensor) -> torch.Tensor:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size n: (keep, n), like's dtype and device.
    Row k, column j: s_k · cos(π (2j + 1) k / 2n), s_0 = √(1/n), s_k = √(2/n)."""
    k = torch.arange(keep, dtype=torch.float64).view(-1, 1)
    j = torch.arange(n, dtype=torch.float64).view(1, -1)
    basis = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis.to(dtype=like.dtype, device=like.device)


@functools.lru_cache(maxsize=16)
def mask_positions(mask: tuple[str, ...], image_shape: tuple[int, int, int], factor: int) -> torch.Tensor:
    """(C, kh·kw) int64 flat positions of the set bits of each channel's hex ``mask``, in row-major order.
    Raises: ValueError unless there is one mask per channel, each 2·⌈H·W/8⌉ hex digits (no bits past H·W)
    with exactly kh·kw bits set."""
    c, h, w = image_shape
    keep, digits = (h // factor) * (w // factor), 2 * ((h * w + 7) // 8)
    if len(mask) != c:
        raise ValueError(f"the dct mask names {len(mask)} channels, not the images' {c}")
    rows = []
    for text in mask:
        if not isinstance(text, str) or len(text) != digits or not all(ch in "0123456789abcdef" for ch in text):
            raise ValueError(f"a dct mask is {digits} lowercase hex digits (H·W = {h * w} bits)")
        bits = torch.from_numpy(np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8)).astype(bool))
        if bits[h * w :].any():
            raise ValueError(f"a dct mask sets no bit past its first {h * w} (the last byte's padding)")
        if int(bits.sum()) != keep:
            raise ValueError(f"a dct mask sets exactly {keep} of its first {h * w} bits, not {int(bits.sum())}")
        rows.append(bits[: h * w].nonzero().view(-1))
    return torch.stack(rows)


def parse_formation(kind: str, factor: int | None = None) -> Formation:
    """The formation a user asked for: ``kind`` (one of FORMATION_CHOICES) and ``factor`` (default 2 for
    lowres and dct). ``dct-variance`` is a dct formation whose mask :meth:`Formation.fitted` chooses."""
    if kind == "pixels":
        if factor not in (None, 1):
            raise ValueError("`formation_factor` applies to the lowres and dct formations, not pixels")
        return PIXELS
    if kind == "dct-variance":
        return Formation("dct", 2 if factor is None else factor, "variance")
    return Formation(kind, 2 if factor is None else factor)


def read_formation(params: dict, image_shape: tuple[int, int, int]) -> Formation:
    """``meta.params.formation`` of a pixel archive (absent: pixels), checked against the image shape.
    Raises: D3FormatError for an unknown kind, a factor outside [1, MAX_FACTOR] or one that does not fit."""
    if "formation" not in params:
        return PIXELS
    value = params["formation"]
    if not isinstance(value, dict) or set(value) - {"mask"} != {"kind", "factor"}:
        raise D3FormatError(
            f"params.formation must be an object with kind and factor (and a dct's mask), not {describe(value)}"
        )
    kind = meta_str(value, "kind", FORMATIONS, "params.formation.")
    factor = meta_int(value, "factor", 1, MAX_FACTOR, "params.formation.")
    mask = value.get("mask")
    if "mask" in value and (
        kind != "dct" or not isinstance(mask, list) or len(mask) > 4096 or not all(isinstance(m, str) for m in mask)
    ):
        raise D3FormatError(
            f"params.formation.mask belongs to a dct formation, as a list of hex strings, one per "
            f"channel, not {describe(mask)}"
        )
    try:
        formation = Formation(
            kind, factor, "variance" if mask is not None else "lowpass", tuple(mask) if mask is not None else None
        )
        formation.check(image_shape)
    except ValueError as e:
        raise D3FormatError(f"params.formation: {e}") from None
    return formation
