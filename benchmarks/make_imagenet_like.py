"""Write an ImageNet-like image tree: synset-named class folders of JPEG files, for rehearsals without ImageNet.

    python benchmarks/make_imagenet_like.py OUT_DIR --classes 1000 --per-class 20 [--val-per-class 2]

The layout is what ``torchvision.datasets.ImageFolder`` reads and what ``d3 compress imagenet --data-root
OUT_DIR`` finds (d3codec.data: OUT_DIR/train/<synset>/<synset>_<i>.JPEG, and OUT_DIR/val/<synset>/... when
``--val-per-class`` is above 0). Like ImageNet's training files, the JPEGs vary: short sides of 120 to 500
pixels at aspect ratios from 3:5 to 2:1, mostly RGB, about 2 % grayscale and 1 % CMYK (ImageNet holds
both), and about 0.5 % very large (2 000 to 3 000 pixels on the long side). Each class has its own colour,
stripe frequency and orientation, so that a distilled archive has something to learn; every image adds
its own phase, blob and noise. The tree is a pure function of ``--seed``.

Prints one JSON line: the folders, files, bytes and seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

GRAYSCALE_SHARE = 0.02
CMYK_SHARE = 0.01
LARGE_SHARE = 0.005
ASPECTS = (0.6, 0.75, 1.0, 1.0, 1.33, 1.33, 1.5, 2.0)  # width / height


def synset(c: int) -> str:
    """An ImageNet-style WordNet id for class ``c`` ("n" and 8 digits, increasing with c)."""
    return f"n{1440764 + 9973 * c:08d}"


def class_style(c: int, seed: int) -> tuple[np.ndarray, float, float]:
    """(RGB colour (3,) in [0, 1], stripe frequency in cycles per short side, stripe angle in radians)."""
    rng = np.random.default_rng([seed, c, 0])
    return rng.uniform(0.1, 0.9, 3), float(rng.uniform(1.5, 12.0)), float(rng.uniform(0, math.pi))


def render(c: int, i: int, split: int, seed: int) -> tuple[Image.Image, str]:
    """Image ``i`` of class ``c`` (split 0: train, 1: val) and its mode name."""
    rng = np.random.default_rng([seed, c, i, split, 1])
    colour, frequency, angle = class_style(c, seed)
    short = int(rng.integers(120, 501))
    aspect = float(rng.choice(ASPECTS))
    if rng.random() < LARGE_SHARE:
        short = int(rng.integers(1300, 2001))
        aspect = float(rng.choice((1.33, 1.5)))
    width, height = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / short
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8) * aspect, rng.uniform(0.1, 0.35)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    shade = rng.uniform(0.6, 1.0) * colour[None, None, :] * (0.35 + 0.65 * stripes[..., None])
    pixels = shade + 0.3 * blob[..., None] * rng.uniform(0, 1, 3)[None, None, :]
    pixels += rng.normal(0, 0.04, (height // 4 + 1, width // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:height, :width]
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")
    draw = rng.random()
    if draw < GRAYSCALE_SHARE:
        return image.convert("L"), "L"
    if draw < GRAYSCALE_SHARE + CMYK_SHARE:
        return image.convert("CMYK"), "CMYK"
    return image, "RGB"


def write_class(args: tuple[Path, int, int, int, int]) -> tuple[int, int, dict[str, int]]:
    """Write one class's train (and val) files; returns (files, bytes, files per mode)."""
    root, c, per_class, val_per_class, seed = args
    files, size, modes = 0, 0, {}
    for split, count, folder in ((0, per_class, "train"), (1, val_per_class, "val")):
        out = root / folder / synset(c)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mode = render(c, i, split, seed)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(75 + (c * 7 + i) % 20))
            name = f"{synset(c)}_{i}.JPEG" if split == 0 else f"ILSVRC2012_val_{c * val_per_class + i + 1:08d}.JPEG"
            (out / name).write_bytes(buffer.getvalue())
            files, size, modes[mode] = files + 1, size + buffer.tell(), modes.get(mode, 0) + 1
    return files, size, modes


def make_tree(root: Path, classes: int, per_class: int, val_per_class: int = 0, seed: int = 0, jobs: int = 1) -> dict:
    """Write the tree under ``root``; returns its summary (folders, files, bytes, files per mode)."""
    if classes < 1 or per_class < 1 or val_per_class < 0:
        raise ValueError("--classes and --per-class must be at least 1, --val-per-class at least 0")
    work = [(root, c, per_class, val_per_class, seed) for c in range(classes)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(write_class, work, chunksize=8))
    else:
        results = [write_class(w) for w in work]
    modes: dict[str, int] = {}
    for _, _, m in results:
        for k, v in m.items():
            modes[k] = modes.get(k, 0) + v
    return {
        "root": str(root),
        "classes": classes,
        "files": sum(r[0] for r in results),
        "bytes": sum(r[1] for r in results),
        "modes": modes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the tree's root (train/ and val/ go under it)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=20, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=0, help="validation images per class (val/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes writing classes in parallel")
    args = parser.parse_args(argv)
    start = time.time()
    summary = make_tree(args.out, args.classes, args.per_class, args.val_per_class, args.seed, args.jobs)
    print(json.dumps({**summary, "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
