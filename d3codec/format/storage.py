"""How synthetic images are stored in an archive: float32, float16, or uint8 with a stored range.

uint8 storage keeps, per class, the range [lo, hi] of that class's images (float32) and codes
every pixel as round((x - lo) / (hi - lo) · 255); decoding inverts it, so the error is at most
(hi - lo) / 510 per pixel. Distilled pixels stray outside [0, 1], which is why the range is stored
rather than assumed.
"""

from __future__ import annotations

import torch

from d3codec.errors import D3FormatError
from d3codec.format.limits import all_finite

STORAGE_DTYPES = ("float32", "float16", "uint8")
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "uint8": 1}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}


def label_dtype(num_classes: int) -> torch.dtype:
    """How stored labels are typed (spec §5.5): uint8 for up to 256 classes, else int32."""
    return torch.uint8 if num_classes <= 256 else torch.int32


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
    out = {"labels": labels.to(label_dtype(num_classes))}
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


def stored_image_zeros(count: int, shape: tuple[int, ...], num_classes: int, dtype: str) -> dict[str, torch.Tensor]:
    """What :func:`encode_images` stores for ``count`` images of ``shape`` (C, H, W), as zeros of the stored
    dtypes without a float32 copy first: a plan's placeholder, whose bytes count exactly as the real ones."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, not {dtype!r}")
    out = {
        "labels": torch.zeros(count, dtype=label_dtype(num_classes)),
        "images": torch.zeros(count, *shape, dtype=TORCH_DTYPES[dtype]),
    }
    if dtype == "uint8":
        out["range"] = torch.zeros(num_classes, 2)
    return out


PROBABILITY_TOLERANCE = 0.01  # |Σ p − 1| a stored soft label may show (float16 rounds each p by 2^-11)


def check_probabilities(p: torch.Tensor, section: str, key: str) -> None:
    """Refuse soft labels that are not probabilities: every value finite and ≥ 0, every row (the last
    dimension) summing to 1 within PROBABILITY_TOLERANCE (spec/FORMAT.md §5).

    Raises: D3FormatError naming the section and tensor.
    """
    if p.numel() == 0:
        return
    p = p.float()
    if not all_finite(p) or (p < 0).any():
        raise D3FormatError(f"section {section!r}: {key!r} holds negative or non-finite probabilities")
    worst = (p.sum(-1) - 1).abs().max().item()
    if worst > PROBABILITY_TOLERANCE:
        raise D3FormatError(
            f"section {section!r}: the rows of {key!r} must sum to 1 (within "
            f"{PROBABILITY_TOLERANCE}); one is off by {worst:.4g}"
        )


def decode_images(
    tensors: dict[str, torch.Tensor],
    num_classes: int,
    image_shape: tuple[int, int, int],
    limits=None,
    soft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`encode_images`, checking names, shapes and dtypes as spec/FORMAT.md §5 defines them:
    ``images`` (N, C, H, W) U8, F16 or F32 with N ≥ 1, ``labels`` (N,) U8 or I32 in [0, K), and for U8
    images ``range`` (K, 2) F32, finite, nothing else. A U8 pixel is ``lo + code / 255 · (hi − lo)``,
    each operation in float32 in that order.

    Args:
        limits: d3codec.format.limits.DecodeLimits (default: its defaults); the float32 images, labels and
            (``soft``) soft labels must fit ``max_bytes``, checked before they are allocated.
    Returns: images (N, C, H, W) float32 in pixel space, labels (N,) int64.
    Raises: D3FormatError if the tensors are missing, mis-shaped, of another dtype or label out of range;
        D3LimitError past the limits.
    """
    from d3codec.format.limits import DEFAULT_LIMITS, check, output_bytes

    codes, labels = _checked_layout(tensors, image_shape)
    n = codes.shape[0]
    check(
        "bytes",
        output_bytes(n, image_shape, num_classes, soft),
        limits or DEFAULT_LIMITS,
        "max_bytes",
        f"decoding {n} images of shape {tuple(image_shape)}",
    )
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise D3FormatError(f"labels fall outside [0, {num_classes})")
    if codes.dtype == torch.uint8:
        ranges = tensors.get("range")
        if ranges is None or ranges.shape != (num_classes, 2) or ranges.dtype != torch.float32:
            raise D3FormatError(f"uint8 images need a float32 'range' tensor of shape ({num_classes}, 2)")
        if not torch.isfinite(ranges).all():
            raise D3FormatError("image 'range' holds non-finite values")
        lo = ranges[labels, 0].view(-1, 1, 1, 1)
        hi = ranges[labels, 1].view(-1, 1, 1, 1)
        # in place, the same float32 operations in the same order: no image-sized temporaries beside the output
        images = codes.float().div_(255).mul_(hi - lo).add_(lo)
    else:
        images = codes.float()
    if not all_finite(images):
        raise D3FormatError("images hold non-finite values")
    return images, labels


def _checked_layout(
    tensors: dict[str, torch.Tensor], image_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored ``images`` (N, C, H, W) and ``labels`` (N,) of an image section, as stored, once their names,
    shapes and dtypes are those of spec/FORMAT.md §5 (see :func:`decode_images`; label values unchecked).

    Raises: D3FormatError naming what is missing, extra, mis-shaped or of another dtype."""
    from d3codec.format.weights import check_names

    for key in ("images", "labels"):
        if key not in tensors:
            raise D3FormatError(f"image section lacks the tensor {key!r}")
    codes, labels = tensors["images"], tensors["labels"]
    check_names(tensors, {"images", "labels"} | ({"range"} if codes.dtype == torch.uint8 else set()), "images")
    if codes.dim() != 4 or tuple(codes.shape[1:]) != tuple(image_shape) or codes.shape[0] < 1:
        raise D3FormatError(
            f"images have shape {tuple(codes.shape)}, expected (N, {', '.join(map(str, image_shape))}) with N ≥ 1"
        )
    if labels.shape != (codes.shape[0],) or labels.dtype not in (torch.uint8, torch.int32):
        raise D3FormatError(
            f"labels have shape {tuple(labels.shape)} and dtype {labels.dtype}; expected "
            f"({codes.shape[0]},) uint8 or int32"
        )
    if codes.dtype not in (torch.uint8, torch.float16, torch.float32):
        raise D3FormatError(f"images have dtype {codes.dtype}; expected uint8, float16 or float32")
    return codes, labels
