"""Where D3's soft-label time goes, and what cuts it (issue 35).

D3 labels every prior once: its mean is decoded and the teacher's softmax of that image is stored
(Qin et al. 2024, Sec. 3.4; d3codec.methods.d3.labels.label_means). At the README's ImageNet plan that
is 807 000 decoded means of 64 × 64 pixels, and on the CPU it was most of a subtask's time in the
rehearsal. This script times labelling N random means at ImageNet's shapes (tapered width-256 decoder,
latent 64, a ConvNet-3 teacher of 200 classes) piece by piece and under each variant, all in one process,
one variant after the other, repeated, so that the variants see the same machine:

- ``library``: d3codec's label_means as it is (its batch from LABEL_MEMORY_BYTES);
- ``decoder-only`` / ``teacher-only``: the two passes apart;
- ``batch-xN``: N times the batch;
- ``channels-last``: decoder and teacher in channels-last memory format;
- ``inference-mode``: torch.inference_mode instead of no_grad;
- ``compile``: torch.compile of both networks;
- ``channels-last+compile``: both.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/label_speed.py [--means 1024] [--repeats 3] [--teacher-width 16]``
(prints a table of means per second; ``--json FILE`` writes the rows). Synthetic weights and means: the speed
of a pass does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
from hardware import cpu_name

from d3codec.data.real import Normalisation
from d3codec.methods.d3.labels import LABEL_MEMORY_BYTES, decoder_map_bytes, label_means
from d3codec.methods.d3.layout import GroupPlan
from d3codec.nn.models import ConvNet
from d3codec.nn.teacher import Teacher

VARIANTS = (
    "library",
    "decoder-only",
    "teacher-only",
    "batch-x4",
    "batch-x16",
    "channels-last",
    "inference-mode",
    "compile",
    "channels-last+compile",
)


def networks(args) -> tuple[torch.nn.Module, Teacher, GroupPlan, tuple[int, int, int]]:
    shape = (3, args.resolution, args.resolution)
    g = GroupPlan(0, args.classes, args.latent, 1, args.width, "tapered", None)
    decoder = g.decoder(shape).eval()
    teacher = Teacher(
        ConvNet(3, args.classes, args.resolution, width=args.teacher_width).eval(),
        list(range(args.classes)),
        list(range(args.classes)),
    )
    return decoder, teacher, g, shape


def timed(run, means: torch.Tensor) -> float:
    """Means labelled per second by ``run(means)``."""
    start = time.perf_counter()
    run(means)
    return len(means) / (time.perf_counter() - start)


def variants(decoder, teacher, normalise, rows):
    """name → a function of means (N, Z) that labels them as that variant does."""

    def passes(dec, teach, batch, mode=torch.no_grad, decode=True, label=True):
        def run(means):
            with mode():
                for i in range(0, len(means), batch):
                    x = dec(means[i : i + batch]) if decode else fixed[: len(means[i : i + batch])]
                    if label:
                        teach.probabilities(normalise(x))

        return run

    fixed = torch.rand(rows * 16, *decoder.image_shape)
    last = lambda m: m.to(memory_format=torch.channels_last)  # noqa: E731
    out = {
        "library": lambda means: label_means(decoder, teacher, means, normalise, 1.0, 10, rows, progress=False),
        "decoder-only": passes(decoder, teacher, rows, label=False),
        "teacher-only": passes(decoder, teacher, rows, decode=False),
        "batch-x4": passes(decoder, teacher, 4 * rows),
        "batch-x16": passes(decoder, teacher, 16 * rows),
        "inference-mode": passes(decoder, teacher, rows, torch.inference_mode),
    }
    channels_last = Teacher(last(copy.deepcopy(teacher.net)), teacher.classes, teacher.out_index)
    out["channels-last"] = passes(last(copy.deepcopy(decoder)), channels_last, rows)
    compiled = Teacher(torch.compile(teacher.net), teacher.classes, teacher.out_index)
    out["compile"] = passes(torch.compile(decoder), compiled, rows)
    both = Teacher(torch.compile(last(copy.deepcopy(teacher.net))), teacher.classes, teacher.out_index)
    out["channels-last+compile"] = passes(torch.compile(last(copy.deepcopy(decoder))), both, rows)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--means", type=int, default=1024, help="means labelled per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per variant (the median is reported)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--classes", type=int, default=200, help="the teacher's classes (ImageNet's subtask: 200)")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--width", type=int, default=256, help="the tapered decoder's width")
    p.add_argument("--teacher-width", type=int, default=16, help="16: the rehearsal preset's; 32: fast's")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    decoder, teacher, g, shape = networks(args)
    rows = max(1, LABEL_MEMORY_BYTES // (3 * max(decoder_map_bytes(g, shape))))
    normalise = Normalisation((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    means = torch.randn(args.means, args.latent)
    runs = variants(decoder, teacher, normalise, rows)
    for name in args.variants:  # a first, untimed pass: compilation and allocator warm-up
        runs[name](means[: 2 * rows])
    rates = {name: [] for name in args.variants}
    for _ in range(args.repeats):  # interleaved, so that a busier minute falls on every variant alike
        for name in args.variants:
            rates[name].append(timed(runs[name], means))
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    print(
        f"{machine}; {args.means} means of latent {args.latent} → {shape} (tapered width {args.width}), teacher "
        f"width {args.teacher_width} of {args.classes} classes; batch {rows}"
    )
    rows_out = []
    for name in args.variants:
        median = sorted(rates[name])[len(rates[name]) // 2]
        rows_out.append(
            {"variant": name, "means_per_second": round(median, 1), "runs": [round(r, 1) for r in rates[name]]}
        )
        print(f"| {name} | {median:.1f} means/s |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "command": "python " + " ".join(sys.argv), "rows": rows_out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
