"""Screening trials for the best student per byte (issue 24): one short student per trial.

    python benchmarks/per_byte_screen.py real --storage png --ipc 10 --labeller-width 16 --epochs 100
    python benchmarks/per_byte_screen.py archive fm.d3 --epochs 100 --labels online

``real``: random real Fashion-MNIST training images stored as PNG or JPEG in the budget less the labeller's
bytes (the fair baseline with the same labeller: a width-W ConvNet-3 trained here for --labeller-epochs,
its int8 section counted exactly as an archive would count it), the student relabelling every augmented
batch with it (or trained on hard labels with --labeller-width 0); the labeller is trained once and kept
in --cache for the next trial. ``archive``: d3codec.evaluate on an
archive. Prints one line to paste into benchmarks/per-byte-exploration.md: the trial, bytes, the
student's final test accuracy and the seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import d3codec
from d3codec.data.sources import load_dataset
from d3codec.decode.labeller import Labeller, labeller_parts, section_cost
from d3codec.evaluation import students
from d3codec.format.accounting import ipc_budget
from d3codec.nn.models import build_model
from d3codec.nn.teacher import train_teacher


def real_files(args) -> str:
    """Random real PNG or JPEG images in the budget less the labeller, labelled online by it (or hard)."""
    real = load_dataset("fashion-mnist")
    budget = ipc_budget(args.ipc, real.num_classes, real.image_shape)
    start, labeller, cost = time.time(), None, 0
    if args.labeller_width:
        cached = Path(args.cache) / f"labeller-w{args.labeller_width}-e{args.labeller_epochs:g}-s{args.seed}.pt"
        if cached.exists():
            net = build_model("convnet3", 1, real.num_classes, 28, width=args.labeller_width)
            net.load_state_dict(torch.load(cached, weights_only=True))
        else:
            net = train_teacher(
                real,
                list(range(real.num_classes)),
                epochs=args.labeller_epochs,
                width=args.labeller_width,
                seed=args.seed,
                progress=True,
            )[0].net
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), cached)
        cost = section_cost(labeller_parts(net, 1.0, "int8")[1])  # as LabelledEncoder counts it
        labeller = Labeller(net, real.mean, real.std, 1.0)
    images, labels, used = students.random_real_subset(real, budget - cost, args.storage, args.seed, args.quality)
    test_x, test_y = students.test_split(real)
    accuracy, seconds = students.train_student(
        images,
        labeller if labeller is not None else labels,
        real.num_classes,
        real.mean,
        real.std,
        (test_x, test_y),
        students.StudentConfig(epochs=args.epochs, compile=args.compile),
        seed=args.seed,
        progress="student",
    )
    what = f"labeller width {args.labeller_width} ({cost} B), online" if labeller is not None else "hard labels"
    stored = "PNG" if args.storage == "png" else f"JPEG q{args.quality}"
    return (
        f"| real {stored}, {what} | IPC {args.ipc:g} | {used + cost} of {budget} B ({len(images)} images) | "
        f"{100 * accuracy:.2f} % | {seconds:.0f} s student, {time.time() - start:.0f} s in all |"
    )


def archive(args) -> str:
    """d3codec.evaluate on an archive, one student."""
    start = time.time()
    result = d3codec.evaluate(
        args.archive,
        epochs=args.epochs,
        runs=1,
        labels=args.labels,
        device="cpu",
        compile=args.compile,
        samples_per_class=args.samples_per_class,
        seed=args.seed,
        progress=True,
    )
    row = result.rows[0]
    return (
        f"| {row.name} | {args.archive} | {row.file_bytes} B ({row.images} images) | {100 * row.mean:.2f} % | "
        f"{row.seconds[0]:.0f} s student, {time.time() - start:.0f} s in all |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="trial", required=True)
    png = sub.add_parser("real")
    png.add_argument("--storage", choices=("png", "jpeg"), default="png")
    png.add_argument("--quality", type=int, default=students.JPEG_QUALITY)
    png.add_argument("--cache", default="/tmp/d3-screen")
    png.add_argument("--ipc", type=float, default=10)
    png.add_argument("--labeller-width", type=int, default=16)
    png.add_argument("--labeller-epochs", type=float, default=10)
    one = sub.add_parser("archive")
    one.add_argument("archive")
    one.add_argument("--labels", default="auto")
    one.add_argument("--samples-per-class", type=int, default=None, help="a sampled archive's draw (default: its own)")
    for p in (png, one):
        p.add_argument("--epochs", type=int, default=100)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--compile", choices=students.COMPILE_MODES, default="auto")
    args = parser.parse_args()
    print(real_files(args) if args.trial == "real" else archive(args))


if __name__ == "__main__":
    main()
