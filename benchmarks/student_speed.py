"""Where a ConvNet-3 student's CPU time goes, and what PyTorch offers against it (issue 34).

One training step of the standard protocol (batch 256, 28×28×1, SGD with momentum and weight decay,
DSA on every batch) is timed piece by piece and under each variant: channels-last memory format,
torch.compile, a fused/foreach optimiser, threads. Throughput is set against the step's FLOP count
(counted by torch.utils.flop_counter) so the fraction of the cores' peak is visible.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/student_speed.py [--steps 30] [--variants ...] [--write]``;
``--write`` replaces the "Student speed" section of benchmarks/cpu-time.md and writes
benchmarks/results-student-speed.json. Synthetic inputs: a step's speed does not depend on what the images show.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hardware import cpu_name
from torch.utils.flop_counter import FlopCounterMode

from d3codec.nn.augment import DSA
from d3codec.nn.models import ConvNet

VARIANTS = (
    "baseline",
    "no-dsa",
    "forward-only",
    "channels-last",
    "compile",
    "foreach-off",
    "groupnorm-off",
    "bf16-autocast",
    "compile-bf16",
    "two-threads",
)
ABOUT = {
    "baseline": "the protocol's step, eager, float32 (what students ran before)",
    "no-dsa": "the same without DSA",
    "forward-only": "the forward pass alone, no gradients (a third of the FLOPs)",
    "channels-last": "the network and batch in channels-last memory format",
    "compile": "torch.compile of the network (inductor), float32: what students now use for long runs",
    "foreach-off": "SGD without its multi-tensor (foreach) update",
    "groupnorm-off": "the instance norms replaced by identities (their share; not a usable network)",
    "bf16-autocast": "autocast to bfloat16 (changes the numerics: not adopted)",
    "compile-bf16": "torch.compile and bfloat16 autocast",
    "two-threads": "the baseline with two threads (one job on both cores, where the other is idle)",
}


STUDENT_SECTION = "## Student speed"
NOTES = """
Reading (see the table for the numbers of the run above):
- The eager float32 step runs at about half of one core's float32 peak (AVX-512 on a Zen 4 core issues
  2 × 256-bit FMAs a cycle: 32 FLOP a cycle, about 83 GFLOP/s at 2.6 GHz); the convolutions are oneDNN's.
  The forward pass alone (a third of the FLOPs) takes about 40 % of the step's time, at about the same
  rate per FLOP: no one part of the step is slow, the convolutions are simply most of the work.
- DSA costs almost nothing (a few ms a batch against a step of over a second); the instance norms
  about a sixth of the step; SGD's foreach update nothing measurable.
- channels-last is slower here. torch.compile (inductor, float32) fuses the norms, ReLUs and pooling
  and their backward passes: about 1.4 times faster after a warm-up of seconds, with the same accuracy
  (one 100-epoch student on 108 JPEG images: 75.17 % compiled, 75.20 % eager). It is what students
  (`d3 eval --compile auto`: students of at least 100 000 image-steps) and teachers and experts of as
  many image-steps now use; short runs and the tests stay eager.
- bfloat16 autocast is faster still on this CPU (AVX512-BF16), but it changes the numerics of the
  protocol: not adopted.
- The compile row's warm-up is with inductor's cache warm; a first compile on a fresh machine takes
  tens of seconds more. "two-threads" is only meaningful on an idle machine: beside another job it
  gets no second core.
"""


def make_step(variant: str, batch: int, width: int):
    """A closure running one training step of ``variant``; returns (step, model)."""
    torch.manual_seed(0)
    net = ConvNet(1, 10, 28, width=width)
    if variant == "groupnorm-off":  # the instance norm's share: the same net with identities in its place
        net.features = torch.nn.Sequential(
            *[torch.nn.Identity() if isinstance(m, torch.nn.GroupNorm) else m for m in net.features]
        )
    x_all = torch.randn(batch * 4, 1, 28, 28)
    y_all = torch.randint(10, (batch * 4,))
    if variant == "channels-last":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=variant != "foreach-off")
    dsa = None if variant in ("no-dsa", "forward-only") else DSA()
    gen = torch.Generator().manual_seed(0)
    model = torch.compile(net) if variant.startswith("compile") else net

    def step(i: int) -> None:
        lo = (i % 4) * batch
        x, y = x_all[lo : lo + batch], y_all[lo : lo + batch]
        if dsa is not None:
            x = dsa.apply(x, dsa.sample(gen, n=len(x)))
        if variant == "channels-last":
            x = x.contiguous(memory_format=torch.channels_last)
        if variant == "forward-only":
            with torch.no_grad():
                model(x)
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant in ("bf16-autocast", "compile-bf16")):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, net


def dsa_seconds(batch: int, steps: int) -> float:
    """Seconds per batch of the augmentation alone (a draw of each family in turn)."""
    dsa, gen, x = DSA(), torch.Generator().manual_seed(0), torch.randn(batch, 1, 28, 28)
    start = time.perf_counter()
    for _ in range(steps):
        dsa.apply(x, dsa.sample(gen, n=batch))
    return (time.perf_counter() - start) / steps


def step_flops(batch: int, width: int, backward: bool = True) -> int:
    """FLOPs of one forward and backward pass, or of the forward pass alone (the flop counter's count: 2 per
    multiply-add)."""
    net = ConvNet(1, 10, 28, width=width)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(10, (batch,))
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(net(x), y)
        if backward:
            loss.backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--write", action="store_true", help="update benchmarks/cpu-time.md and the JSON")
    parser.add_argument("--conditions", default="alone on an idle machine")
    args = parser.parse_args()
    flops = step_flops(args.batch, args.width)
    forward_flops = step_flops(args.batch, args.width, backward=False)
    rows = {
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "batch": args.batch,
        "flops_per_step": flops,
        "dsa_seconds_per_batch": dsa_seconds(args.batch, args.steps),
        "variants": {},
    }
    for variant in args.variants:
        threads = torch.get_num_threads()
        torch.set_num_threads(2 if variant == "two-threads" else threads)
        step, _ = make_step(variant, args.batch, args.width)
        start = time.perf_counter()
        for i in range(3):  # warm-up (compile happens here)
            step(i)
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        seconds = (time.perf_counter() - start) / args.steps
        torch.set_num_threads(threads)
        work = forward_flops if variant == "forward-only" else flops
        rows["variants"][variant] = {
            "seconds_per_step": seconds,
            "ms_per_image": 1000 * seconds / args.batch,
            "gflops_per_s": work / seconds / 1e9,
            "warmup_seconds": warmup,
        }
        print(
            f"{variant:15s} {1000 * seconds:8.1f} ms/step {1000 * seconds / args.batch:6.2f} ms/image "
            f"{work / seconds / 1e9:6.1f} GFLOP/s (warm-up {warmup:.1f} s)",
            flush=True,
        )
    print(
        f"DSA alone: {1000 * rows['dsa_seconds_per_batch']:.1f} ms/batch; step FLOPs {flops / 1e9:.1f} G "
        f"(threads {rows['threads']}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    if args.write:
        write(rows, args)


def write(rows: dict, args) -> None:
    """The "Student speed" section of cpu-time.md (replacing the last one) and results-student-speed.json."""
    here = Path(__file__).resolve().parent
    rows["date"], rows["conditions"] = dt.date.today().isoformat(), args.conditions
    rows["command"] = "OMP_NUM_THREADS=1 python benchmarks/student_speed.py " + shlex.join(sys.argv[1:])
    (here / "results-student-speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    base = rows["variants"].get("baseline", {}).get("seconds_per_step")
    lines = [
        STUDENT_SECTION,
        "",
        f"One training step of a ConvNet-3 student (batch {rows['batch']}, 28×28×1, width {args.width}, SGD, "
        "DSA): "
        f"{rows['flops_per_step'] / 1e9:.1f} GFLOP forward and backward (torch.utils.flop_counter, 2 per "
        f"multiply-add), {rows['flops_per_step'] / rows['batch'] / 1e6:.0f} MFLOP an image. Measured "
        f"{rows['date']} on {rows['cpu']} ({os.cpu_count()} cores), torch {rows['torch']}, {rows['threads']} "
        f"thread(s), {rows['conditions']}; `{rows['command']}`. DSA alone takes "
        f"{1000 * rows['dsa_seconds_per_batch']:.1f} ms a batch.",
        "",
        "| variant | ms/step | ms/image | GFLOP/s | vs baseline | warm-up s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows["variants"].items():
        speed = f"{base / row['seconds_per_step']:.2f}×" if base else "-"
        lines.append(
            f"| {name}: {ABOUT[name]} | {1000 * row['seconds_per_step']:.0f} | {row['ms_per_image']:.2f} | "
            f"{row['gflops_per_s']:.1f} | {speed} | {row['warmup_seconds']:.1f} |"
        )
    page = here / "cpu-time.md"
    text = page.read_text() if page.is_file() else ""
    head = text.partition(STUDENT_SECTION)[0].rstrip("\n")
    page.write_text((head + "\n\n" if head else "") + "\n".join(lines) + "\n" + NOTES)


if __name__ == "__main__":
    main()
