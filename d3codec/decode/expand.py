"""Turn a decoded archive into files other tools read: PNG folders, tensor files, a grid picture."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from PIL import Image

from d3codec.data.real import Normalisation
from d3codec.decode.dataset import D3Dataset


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) float32 pixel space → 8-bit PIL image (values clipped to [0, 1])."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if array.shape[0] == 1:
        return Image.fromarray(array[0].numpy(), mode="L")
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


MAX_FOLDER_NAME_BYTES = 120  # of a class folder's name after its index (file systems allow 255)


def _folder_name(name: str) -> str:
    """A class name made safe as one folder name: no separators or control characters, at most
    MAX_FOLDER_NAME_BYTES bytes of UTF-8 (the folder's index prefix keeps cut names apart)."""
    safe = "".join(ch if ch.isalnum() or ch in " -_." else "_" for ch in name[:MAX_FOLDER_NAME_BYTES])
    safe = safe.encode("utf-8")[:MAX_FOLDER_NAME_BYTES].decode("utf-8", errors="ignore").strip(" .")
    return safe or "class"


# What an expansion may write unless raised (d3 expand --max-files, --max-output-bytes): the ImageNet README
# command's default draw, 128 000 PNG images of 64 × 64 (about 1.6 GB), passes; a draw of millions does not.
MAX_OUTPUT_FILES = 500_000
MAX_OUTPUT_BYTES = 8 << 30
PNG_OVERHEAD_BYTES = 128  # a PNG file's signature, chunks and zlib framing, beyond its pixels' bytes
WRITE_BATCH = 256  # images decoded at once while writing a folder (a lazy dataset holds no more)


def output_size(ds: D3Dataset, fmt: str) -> tuple[int, int]:
    """(files, bytes) that expanding ``ds`` as ``fmt`` writes, known before anything is decoded: PNG files
    counted at their pixels' 8-bit bytes plus PNG_OVERHEAD_BYTES (zlib rarely makes them larger), tensor files
    exactly (float32 images, int64 labels, float32 soft labels)."""
    n, k, pixels = len(ds), len(ds.classes), math.prod(ds.image_shape)
    if fmt == "png":
        return n, n * (pixels + PNG_OVERHEAD_BYTES)
    return 4, n * (4 * pixels + 8 + (4 * k if ds.has_soft_labels else 0))


def check_output(
    ds: D3Dataset,
    fmt: str,
    out: str | os.PathLike,
    max_files: int = MAX_OUTPUT_FILES,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> tuple[int, int]:
    """Refuse, before anything is written, an expansion of more than ``max_files`` files or ``max_output_bytes``
    bytes, or more bytes than the disk under ``out`` has free. Returns (files, bytes) (:func:`output_size`).
    Raises: ValueError naming the figure and the option that raises it."""
    files, size = output_size(ds, fmt)
    what = f"expanding {len(ds):,} images as {fmt} writes {files:,} files, about {size / 1e9:.2f} GB"
    if files > max_files:
        raise ValueError(
            f"{what}: over the limit of {max_files:,} files; raise `max_files` to {files}, or draw "
            "fewer with `samples_per_class`"
        )
    if size > max_output_bytes:
        raise ValueError(
            f"{what}: over the limit of {max_output_bytes:,} bytes; raise `max_output_bytes` to {size}, "
            "or draw fewer with `samples_per_class`"
        )
    where = next((p for p in [Path(out), *Path(out).absolute().parents] if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    if size > free:
        raise ValueError(f"{what}: the disk under {where} has {free / 1e9:.2f} GB free")
    return files, size


def write_image_folder(ds: D3Dataset, out: str | os.PathLike) -> int:
    """Write ``out/<index>_<class>/<n>.png``, one folder per class (torchvision ImageFolder reads it back
    in class order), decoding WRITE_BATCH images at a time. Returns the number of images written."""
    out = Path(out)
    counts: dict[int, int] = {}
    width = len(str(len(ds.classes) - 1))
    for lo in range(0, len(ds), WRITE_BATCH):
        images, labels, _ = ds.batch(torch.arange(lo, min(len(ds), lo + WRITE_BATCH)))
        for image, label in zip(images, labels.tolist()):
            folder = out / f"{label:0{width}d}_{_folder_name(ds.classes[label])}"
            folder.mkdir(parents=True, exist_ok=True)
            n = counts.get(label, 0)
            _to_pil(image).save(folder / f"{n:05d}.png")
            counts[label] = n + 1
    return sum(counts.values())


def write_tensors(ds: D3Dataset, out: str | os.PathLike, fmt: str = "pt") -> list[Path]:
    """Write image and label tensors for other tools (e.g. DD-Ranking).

    ``fmt="pt"``: ``images.pt`` ((N, C, H, W) float32, pixel space), ``labels.pt`` ((N,) int64: the
    class each image is of, or was drawn for) and, where the archive has soft labels, ``soft_labels.pt``
    ((N, K) float32 probabilities), via ``torch.save``. ``fmt="safetensors"``: one ``data.safetensors``
    with the same tensors under the same names. An archive with a training schedule (BPTT) also gets
    ``schedule.safetensors`` in either format: ``step_sizes`` (T,) float32 and, under fixed init,
    ``theta0.<name>`` float32, with ``network``, ``steps``, ``epochs`` and ``init`` in its metadata.
    Returns the paths written.
    """
    out = Path(out)
    if fmt not in ("pt", "safetensors"):
        raise ValueError(f"format must be 'png', 'pt' or 'safetensors', not {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"images": ds.images, "labels": ds.labels}  # hard labels always; soft ones beside them
    if ds.soft_labels is not None:
        tensors["soft_labels"] = ds.soft_labels
    if fmt == "pt":
        paths = [out / f"{name}.pt" for name in tensors]
        for path, tensor in zip(paths, tensors.values()):
            torch.save(tensor.clone(), path)
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "data.safetensors"))
        paths = [out / "data.safetensors"]
    if ds.schedule is not None:
        sched = ds.schedule
        tensors = {
            "step_sizes": sched.lrs.contiguous(),
            **{f"theta0.{k}": v.contiguous() for k, v in (sched.theta0 or {}).items()},
        }
        safetensors.torch.save_file(
            tensors,
            str(out / "schedule.safetensors"),
            metadata={
                "network": sched.network,
                "steps": str(sched.steps),
                "epochs": str(sched.epochs),
                "init": sched.init,
            },
        )
        paths.append(out / "schedule.safetensors")
    return paths


def write_ddranking(ds: D3Dataset, out: str | os.PathLike) -> list[Path]:
    """Write the tensors DD-Ranking's evaluators take (``compute_metrics(images, soft_labels, syn_lr)``).

    In ``out``: ``images.pt`` (N, C, H, W) float32 *normalised* with the archive's mean and std,
    class-major (class 0's images first); ``labels.pt`` (N,) int64 hard labels; where the archive has soft
    labels, ``soft_labels.pt`` (N, K) float32 logits: the log of its probabilities (clamped at 1e-8),
    whose softmax gives them back (normalised to sum to 1); and ``ddranking.json``: ``ipc`` (images per
    class, None where the classes have different counts), ``im_size`` [H, W], ``mean``, ``std``,
    ``num_classes``, the dataset and class names. DD-Ranking 0.2.0 evaluates the datasets it knows
    (CIFAR-10 and CIFAR-100, for example) and has no Fashion-MNIST or MNIST support. Returns the paths
    written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = torch.argsort(ds.labels, stable=True)  # class-major, each class in the archive's order
    tensors = {
        "images": Normalisation(ds.mean, ds.std)(ds.images[order]).contiguous(),
        "labels": ds.labels[order].clone(),
    }
    if ds.soft_labels is not None:
        tensors["soft_labels"] = ds.soft_labels[order].clamp_min(1e-8).log().contiguous()
    paths = [out / f"{name}.pt" for name in tensors]
    for path, tensor in zip(paths, tensors.values()):
        torch.save(tensor, path)
    counts = ds.labels.bincount(minlength=len(ds.classes))
    description = {
        "ipc": int(counts[0]) if len(counts) and bool((counts == counts[0]).all()) else None,
        "im_size": list(ds.image_shape[1:]),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "num_classes": len(ds.classes),
        "dataset": ds.meta["dataset"]["name"],
        "classes": list(ds.classes),
        "images": "images.pt: normalised with mean and std, class-major",
        "soft_labels": "soft_labels.pt: logits (log-probabilities)" if "soft_labels" in tensors else None,
    }
    (out / "ddranking.json").write_text(json.dumps(description, indent=2) + "\n")
    return paths + [out / "ddranking.json"]


NAME_CHARACTERS = 24  # of a class name written beside its row
NAME_MARGIN = 160  # the widest margin, in pixels, the names may take


def grid_image(
    ds: D3Dataset,
    max_per_class: int = 20,
    pad: int = 2,
    max_pixels: int | None = None,
    scale: int = 1,
    names: bool = False,
) -> Image.Image:
    """One picture of the images, a row per class (at most ``max_per_class`` columns), each image
    enlarged ``scale`` times (nearest neighbour), with each class's name left of its row where ``names``
    (the first NAME_CHARACTERS characters, in pillow's default font, in a margin of at most NAME_MARGIN
    pixels).

    The canvas is 8-bit from the start and its size is checked before it is allocated: height × width
    at most ``max_pixels`` (default DecodeLimits().max_canvas_pixels, 2^27).
    Raises: D3LimitError naming the size and what to change (the limit, and ``d3 expand``'s grid options); ValueError
    for ``max_per_class`` or ``scale`` < 1.
    """
    from d3codec.format.limits import DEFAULT_LIMITS, DecodeLimits, check

    if max_per_class < 1 or scale < 1:
        raise ValueError(
            f"the grid needs at least one column and a scale of at least 1, not {max_per_class} and {scale}"
        )
    c, h, w = ds.image_shape
    k = len(ds.classes)
    counts = torch.bincount(ds.labels, minlength=k)
    cols = max(1, min(max_per_class, int(counts.max()) if len(counts) else 1))
    height, width = k * (h + pad) + pad, cols * (w + pad) + pad
    margin = NAME_MARGIN if names else 0
    limits = DecodeLimits(max_canvas_pixels=max_pixels) if max_pixels is not None else DEFAULT_LIMITS
    check(
        "pixels",
        height * scale * (width * scale + margin),
        limits,
        "max_canvas_pixels",
        f"a grid of {k} rows × {cols} columns of {h}×{w} images ({height * scale}×{width * scale + margin}; "
        "fewer columns: `grid_columns`, or a smaller `grid_scale`)",
    )
    canvas = torch.full((c, height, width), 255, dtype=torch.uint8)
    order = torch.argsort(ds.labels, stable=True)  # each class's images in their order, classes in turn
    starts = torch.cumsum(counts, 0) - counts  # (K,) where each class begins in ``order``
    # one pass over the labels, not one per class (a million images of 1 000 classes); only the tiles are decoded
    shown = [order[int(starts[cl]) : int(starts[cl]) + min(cols, int(counts[cl]))] for cl in range(k)]
    # a D3Dataset decodes just the tiles (a lazy one decodes nothing else); any object with images serves too
    tiles_of = ds.batch if hasattr(ds, "batch") else lambda index: (ds.images[index],)
    for lo in range(0, k, max(1, WRITE_BATCH // cols)):  # a few rows at a time
        rows = shown[lo : lo + max(1, WRITE_BATCH // cols)]
        if sum(map(len, rows)):  # classes with no images have no tiles to decode
            _draw_rows(canvas, rows, lo, tiles_of(torch.cat(rows))[0], pad)
    if scale > 1:
        canvas = canvas.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    picture = (
        Image.fromarray(canvas[0].numpy(), mode="L")
        if c == 1
        else Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    )
    return _with_names(picture, ds.classes, (h + pad) * scale, pad * scale) if names else picture


def _draw_rows(canvas: torch.Tensor, rows: list[torch.Tensor], first: int, images: torch.Tensor, pad: int) -> None:
    """Draw ``images`` (N, C, H, W) in [0, 1], the tiles of ``rows`` (each a class's indices, from class ``first``)
    in turn, into ``canvas`` (C, height, width) uint8, a row per class, ``pad`` pixels apart."""
    h, w = images.shape[-2:]
    tiles = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    at = 0
    for cl, row in enumerate(rows, first):
        for j in range(len(row)):
            y, x = pad + cl * (h + pad), pad + j * (w + pad)
            canvas[:, y : y + h, x : x + w] = tiles[at]
            at += 1


def _with_names(picture: Image.Image, classes: list[str], row: int, top: int) -> Image.Image:
    """``picture`` with each class's name written left of its row, in a white margin just wide enough."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    labels = [name if len(name) <= NAME_CHARACTERS else name[: NAME_CHARACTERS - 1] + "…" for name in classes]
    widest = max((font.getbbox(label)[2] for label in labels), default=0)
    margin = min(NAME_MARGIN, int(widest) + 8)  # pillow types a FreeTypeFont's bounding box float; it holds ints
    out = Image.new(picture.mode, (picture.width + margin, picture.height), 255 if picture.mode == "L" else (255,) * 3)
    out.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(out)
    ink = 0 if picture.mode == "L" else (0, 0, 0)
    for i, label in enumerate(labels):
        draw.text((4, top + i * row + max(0, (row - top) // 2 - 6)), label, fill=ink, font=font)
    return out
