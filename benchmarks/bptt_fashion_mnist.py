"""Benchmark on real Fashion-MNIST: BPTT dataset distillation (Wang et al. 2018), fixed and random init.

For each image count (``--images-per-class``, 1 and 10 by default: 10 and 100 images in all), in
one run:

- BPTT with fixed init (θ₀ stored in the archive) and with random init, LeNet, fast preset unless
  told otherwise; each archive is evaluated by **replaying its own schedule** (the learned step
  sizes; fixed: from the stored θ₀, one student, since every replay is the same computation;
  random: ``--inits`` students from unseen initialisations, seeds 0, 1, …) and, as a different
  experiment, by the standard protocol (``--runs`` ConvNet-3 students, ``--epochs`` epochs);
- DM with the same image count (standard protocol);
- random real images of the same count: standard protocol, and trained by each BPTT archive's
  learned schedule (what the schedule alone gives without the learned images).

Records final test accuracy mean ± std, file bytes and distillation seconds, and quotes the
paper's own MNIST and CIFAR-10 figures beside them (other data). Writes a Markdown table and a
JSON file of every number; every finished task is saved at once and ``--resume`` skips them.

    OMP_NUM_THREADS=1 python benchmarks/bptt_fashion_mnist.py --jobs 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from d3codec import D3Dataset
from d3codec.data.sources import load_dataset
from d3codec.encode.pipeline import compress
from d3codec.evaluation.students import StudentConfig, random_real_subset, replay_student, test_split, train_student
from d3codec.methods.pixel import BPTTEncoder, DMEncoder
from d3codec.util.runtime import keep_freed_memory

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fashion_mnist import machine  # noqa: E402

BUDGET = 10_000_000  # bytes: generous; --images-per-class fixes the count and the table gives the file size

# ../shared/background.md: the paper's figures, on other data (LeNet on MNIST, AlexCifarNet on CIFAR-10)
PAPER = [
    ("MNIST", "fixed init, 10 images", "93.8 (project page) / 96.6 (blog table)"),
    ("MNIST", "random init, 100 images", "79.5 ± 8.1"),
    ("CIFAR-10", "fixed init", "54.0"),
    ("CIFAR-10", "random init", "36.8 ± 1.2"),
]

_STATE: dict = {}


def init_worker(data_root, epochs: int) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    real = load_dataset("fashion-mnist", data_root)
    _STATE.update(real=real, test=test_split(real), epochs=epochs)


def build(kind: str, n: int, preset: str, seed: int, path: str, iterations: int | None) -> dict:
    """Distil one archive: kind is bptt-fixed, bptt-random or dm."""
    real = _STATE["real"]
    if kind == "dm":
        encoder = DMEncoder.from_options(preset, images_per_class=n, iterations=iterations)
    else:
        encoder = BPTTEncoder.from_options(preset, images_per_class=n, init=kind.split("-")[1], iterations=iterations)
    start = time.time()
    result = compress(real, path, encoder=encoder, budget=BUDGET, seed=seed, progress=False)
    return {"bytes": result.file_bytes, "distill_s": round(time.time() - start, 1), "stats": result.stats}


def students(how: str, source: str, n: int, runs: int, seed: int, schedule_from: str | None = None) -> dict:
    """Train ``runs`` students on an archive's images, on ``n`` random real images per class
    (source "real"), or on random real PNG images in the bytes of the archive ``schedule_from``
    (source "real-png").

    how: "replay" (by the schedule of the archive ``schedule_from``, or ``source``'s own) or "standard".
    """
    real, (test_x, test_y) = _STATE["real"], _STATE["test"]
    extra = {}
    if source == "real":
        float32_bytes = n * real.num_classes * math.prod(real.image_shape) * 4  # n float32 images per class
        images, labels, _ = random_real_subset(real, float32_bytes, "float32", seed)
    elif source == "real-png":
        images, labels, used = random_real_subset(real, Path(schedule_from).stat().st_size, "png", seed)
        extra = {"bytes": used, "images": len(labels)}
    else:
        ds = D3Dataset(source)
        images, labels = ds.images, ds.labels
    accuracies, seconds = [], []
    for r in range(runs):
        if how == "replay":
            schedule = D3Dataset(schedule_from or source).schedule
            acc, sec = replay_student(
                schedule, images, labels, real.num_classes, real.mean, real.std, test_x, test_y, seed + r
            )
        else:
            acc, sec = train_student(
                images,
                labels,
                real.num_classes,
                real.mean,
                real.std,
                (test_x, test_y),
                StudentConfig(epochs=_STATE["epochs"]),
                seed=seed + r,
            )
        accuracies.append(acc)
        seconds.append(sec)
    return {"accuracies": accuracies, "seconds": seconds, **extra}


def plan(args) -> tuple[list, list]:
    work = Path(args.work)
    builds, evals = [], []
    for n in args.images_per_class:
        for kind in ("bptt-fixed", "bptt-random", "dm"):
            builds.append(
                (f"{kind}-{n}", (kind, n, args.preset, args.seed, str(work / f"{kind}-{n}.d3"), args.iterations))
            )
        fixed, rand = str(work / f"bptt-fixed-{n}.d3"), str(work / f"bptt-random-{n}.d3")
        evals += [
            (f"bptt-fixed-{n}/replay", ("replay", fixed, n, 1, args.seed)),
            (f"bptt-fixed-{n}/standard", ("standard", fixed, n, args.runs, args.seed)),
            (f"bptt-random-{n}/replay", ("replay", rand, n, args.inits, args.seed)),
            (f"bptt-random-{n}/standard", ("standard", rand, n, args.runs, args.seed)),
            (f"dm-{n}/standard", ("standard", str(work / f"dm-{n}.d3"), n, args.runs, args.seed)),
            (f"real-{n}/standard", ("standard", "real", n, args.runs, args.seed)),
            (f"real-{n}/replay-fixed", ("replay", "real", n, 1, args.seed, fixed)),
            (f"real-{n}/replay-random", ("replay", "real", n, args.inits, args.seed, rand)),
            (f"real-png-{n}/standard", ("standard", "real-png", n, args.runs, args.seed, fixed)),
        ]
    return builds, evals


def run_tasks(function, tasks, results: dict, args) -> None:
    todo = [(key, a) for key, a in tasks if key not in results]
    with ProcessPoolExecutor(args.jobs, initializer=init_worker, initargs=(args.data_root, args.epochs)) as pool:
        futures = {pool.submit(function, *a): key for key, a in todo}
        for future in futures:
            results[futures[future]] = future.result()
            save(results, args)
            print(f"done {futures[future]}", file=sys.stderr, flush=True)


def save(results: dict, args) -> None:
    Path(args.json).write_text(json.dumps(results, indent=1))


def mean_std(accuracies: list[float]) -> str:
    std = statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0
    return f"{100 * statistics.fmean(accuracies):.2f} ± {100 * std:.2f}"


def render(results: dict, args) -> str:
    meta = results["_run"]
    lines = [
        "# Benchmark: BPTT dataset distillation (Wang et al. 2018) on real Fashion-MNIST",
        "",
        f"- {meta['date']}: `{meta['command']}` on {meta['machine']}; device: cpu. {args.note}".rstrip(),
        "- replay: a student trained by the archive's own schedule (LeNet, plain GD with the learned step sizes; "
        "fixed init from the stored θ₀, so one student: every replay is the same computation; random init from "
        f"{args.inits} unseen initialisations, seeds 0 to {args.inits - 1}). standard: {args.runs} fresh ConvNet-3 "
        f"students, {args.epochs} epochs, the protocol of benchmarks/RESULTS.md. Accuracy: final test accuracy "
        "on the 10 000 test images, mean ± std over students. Bytes: the whole archive file.",
        "",
        "| images | row | bytes | distil s | students | accuracy % |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "bptt-fixed": "BPTT, fixed init (θ₀ stored)",
        "bptt-random": "BPTT, random init",
        "dm": "DM",
        "real": "random real",
        "real-png": "random real PNG in the fixed-init archive's bytes",
    }
    hows = {
        "replay": "replayed schedule",
        "standard": "standard ConvNet-3",
        "replay-fixed": "the fixed-init archive's schedule and θ₀",
        "replay-random": "the random-init archive's schedule",
    }
    for n in args.images_per_class:
        for key, value in results.items():
            if key.startswith("_") or "/" not in key:
                continue
            source, how = key.split("/")
            kind, count = source.rsplit("-", 1)
            if int(count) != n:
                continue
            built = results.get(source, {})
            if "bytes" in value:  # a baseline stored in a given number of bytes
                built = {"bytes": f"{value['bytes']} ({value['images']} images)"}
            lines.append(
                f"| {n * 10} ({n}/class) | {names[kind]}, {hows[how]} | {built.get('bytes', '-')} | "
                f"{built.get('distill_s', '-')} | {len(value['accuracies'])} | {mean_std(value['accuracies'])} |"
            )
    lines += [
        "",
        "The paper's own figures, on other data (quoted from ../shared/background.md, not measured here):",
        "",
        "| data | setting | accuracy % (paper) |",
        "|---|---|---|",
    ]
    lines += [f"| {d} | {s} | {a} |" for d, s, a in PAPER]
    return "\n".join(lines) + "\n"


def main() -> None:
    keep_freed_memory()  # and every worker, through compress and train_student (d3codec.util.runtime)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images-per-class", type=int, nargs="+", default=[1, 10])
    p.add_argument("--runs", type=int, default=3, help="standard-protocol students per row")
    p.add_argument("--inits", type=int, default=10, help="unseen initialisations for random-init replays")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--preset", default="fast")
    p.add_argument("--iterations", type=int, help="override every method's iteration count (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--work", default=str(HERE / "work-bptt"))
    p.add_argument("--json", default=str(HERE / "results-bptt.json"))
    p.add_argument("--out", default=str(HERE / "RESULTS-bptt.md"))
    p.add_argument("--note", default="")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(args.json).read_text()) if args.resume and Path(args.json).exists() else {}
    results.setdefault(
        "_run",
        {"date": dt.date.today().isoformat(), "machine": machine(args.jobs), "command": "python " + " ".join(sys.argv)},
    )
    builds, evals = plan(args)
    run_tasks(build, builds, results, args)
    run_tasks(students, evals, results, args)
    Path(args.out).write_text(render(results, args))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
