"""How synthetic images are stored in an archive: float32, float16, or uint8 with a stored range.

uint8 storage keeps, per class, the range [lo, hi] of that class's images (float32) and codes
every pixel as round((x - lo) / (hi - lo) · 255); decoding inverts it, so the error is at most
(hi - lo) / 510 per pixel. Distilled pixels stray outside [0, 1], which is why the range is stored
rather than assumed.
"""

from __future__ import annotations

import torch

from .errors import D3FormatError

STORAGE_DTYPES = ("float32", "float16", "uint8")
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "uint8": 1}


def resolve_storage_dtype(storage_dtype: str) -> str:
    """``"auto"`` → uint8 (the most images per byte); any of STORAGE_DTYPES as is; else ValueError."""
    dtype = "uint8" if storage_dtype == "auto" else storage_dtype
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be 'auto' or one of {STORAGE_DTYPES}, not {storage_dtype!r}")
    return dtype


def encode_images(images: torch.Tensor, labels: torch.Tensor, num_classes: int, dtype: str) -> dict[str, torch.Tensor]:
    """Code images for storage.

    Args:
        images: (N, C, H, W) float32, pixel space (about 0 to 1).
        labels: (N,) int64 class indices in [0, num_classes).
        dtype: one of STORAGE_DTYPES.
    Returns: tensors for a safetensors section: ``images`` (N, C, H, W) of ``dtype``, ``labels``
        (N,) uint8 or int32, and for uint8 ``range`` (num_classes, 2) float32 [lo, hi] per class.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, not {dtype!r}")
    images = images.detach().float().cpu()
    labels = labels.cpu()
    out = {"labels": labels.to(torch.uint8 if num_classes <= 256 else torch.int32)}
    if dtype == "float32":
        out["images"] = images.contiguous()
    elif dtype == "float16":
        out["images"] = images.half().contiguous()
    else:
        ranges = torch.zeros(num_classes, 2)
        codes = torch.empty(images.shape, dtype=torch.uint8)
        for c in range(num_classes):
            mask = labels == c
            if not mask.any():
                continue
            x = images[mask]  # (n_c, C, H, W)
            lo, hi = x.min(), x.max()
            if hi <= lo:
                hi = lo + 1e-6
            ranges[c] = torch.stack([lo, hi])
            codes[mask] = ((x - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
        out["images"], out["range"] = codes, ranges
    return out


def decode_images(tensors: dict[str, torch.Tensor], num_classes: int,
                  image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`encode_images`, checking shapes and dtypes.

    Returns: images (N, C, H, W) float32 in pixel space, labels (N,) int64.
    Raises: D3FormatError if the tensors are missing, mis-shaped or label out of range.
    """
    for key in ("images", "labels"):
        if key not in tensors:
            raise D3FormatError(f"image section lacks the tensor {key!r}")
    codes, labels = tensors["images"], tensors["labels"]
    if codes.dim() != 4 or tuple(codes.shape[1:]) != tuple(image_shape):
        raise D3FormatError(f"images have shape {tuple(codes.shape)}, expected (N, {', '.join(map(str, image_shape))})")
    if labels.shape != (codes.shape[0],) or labels.dtype not in (torch.uint8, torch.int32, torch.int64):
        raise D3FormatError(f"labels have shape {tuple(labels.shape)} and dtype {labels.dtype}; expected "
                            f"({codes.shape[0]},) integers")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise D3FormatError(f"labels fall outside [0, {num_classes})")
    if codes.dtype == torch.uint8:
        ranges = tensors.get("range")
        if ranges is None or ranges.shape != (num_classes, 2) or not ranges.is_floating_point():
            raise D3FormatError(f"uint8 images need a float 'range' tensor of shape ({num_classes}, 2)")
        ranges = ranges.float()
        if not torch.isfinite(ranges).all():
            raise D3FormatError("image 'range' holds non-finite values")
        lo = ranges[labels, 0].view(-1, 1, 1, 1)
        hi = ranges[labels, 1].view(-1, 1, 1, 1)
        images = lo + codes.float() / 255 * (hi - lo)
    elif codes.dtype in (torch.float16, torch.float32):
        images = codes.float()
    else:
        raise D3FormatError(f"images have dtype {codes.dtype}; expected uint8, float16 or float32")
    return images, labels
