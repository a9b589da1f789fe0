"""What opening a sampled archive and reading it through a DataLoader costs: seconds and resident memory.

Issue 35's checks on the ImageNet rehearsal's D3 archive: ``D3Dataset(path)`` opens in under 10 s with under
1 GB resident, and a DataLoader with 2 workers reads 10 000 of its images with the main process under 2 GB.
This script opens ARCHIVE in a fresh process, records the seconds and the peak resident memory after
opening, then iterates ``--images`` images through ``DataLoader(ds, batch_size=256, shuffle=True,
num_workers=--workers)`` and records the main process's peak and the workers' (the largest child).

``--make-like-rehearsal PATH`` first writes a stand-in of that archive's shapes to PATH (5 groups of 200
classes at 64 × 64 × 3, latent 64, 807 int8 priors a class, tapered int8 decoders of width 256, top-10 soft
labels): random weights and priors, which decode to noise but cost what trained ones cost to open and decode.

Then three indices are read in this process and through DataLoader workers, and their largest difference
reported (the same images, to within float32 rounding).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/lazy_dataset.py ARCHIVE [--make-like-rehearsal] [--images 10000]
[--samples-per-class 128]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from d3codec.format.container import Section, encode_archive
from d3codec.methods.d3 import D3Config, GroupPlan, group_entry, group_tensors, sections_of


def rehearsal_like(path: str, classes: int = 1000, groups: int = 5, priors: int = 807, side: int = 64) -> None:
    """Write a D3 archive of the rehearsal plan's shapes with random contents to ``path``."""
    cfg, shape = D3Config(), (3, side, side)
    gen = torch.Generator().manual_seed(0)
    per = classes // groups
    parts, entries = [], []
    for i in range(groups):
        g = GroupPlan(i * per, (i + 1) * per, 64, priors, 256, "tapered", 10)
        decoder = g.decoder(shape)
        mean, logvar = torch.randn(per, priors, 64, generator=gen), torch.full((per, priors, 64), -4.0)
        values = torch.rand(per, priors, 10, generator=gen).softmax(-1) * 0.9
        indices = torch.stack([torch.randperm(per, generator=gen)[:10] for _ in range(per * priors)]).view(
            per, priors, 10
        )
        parts.append(group_tensors(g, i, shape, cfg, (mean, logvar), decoder.state_dict(), (values, indices)))
        entries.append(group_entry(g, cfg))
    meta = {
        "format": "d3",
        "method": "d3",
        "budget": {"bytes": 98_304_000},
        "params": {"groups": entries},
        "dataset": {
            "name": "imagenet-like",
            "classes": [f"n{c:08d}" for c in range(classes)],
            "image_shape": list(shape),
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }
    with open(path, "wb") as f:
        f.write(encode_archive([Section.json("meta", meta)] + sections_of(parts)))


def peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archive")
    p.add_argument("--make-like-rehearsal", action="store_true", help="first write the stand-in to ARCHIVE")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples-per-class", type=int, help="default: the archive's default draw")
    args = p.parse_args(argv)
    if args.make_like_rehearsal:
        rehearsal_like(args.archive)
    from d3codec import D3Dataset

    before = peak_mib()
    start = time.perf_counter()
    ds = D3Dataset(args.archive, samples_per_class=args.samples_per_class)
    opened = time.perf_counter() - start
    row = {
        "archive": args.archive,
        "images_in_draw": len(ds),
        "open_seconds": round(opened, 2),
        "peak_mib_before_open": round(before),
        "peak_mib_after_open": round(peak_mib()),
    }
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True, num_workers=args.workers)
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
        if seen >= args.images:
            break
    del loader  # the workers exit, so that their peak is counted
    picked = [0, len(ds) // 2, len(ds) - 1]  # the same index in this process and in a worker: the same image
    here = torch.stack([ds[i][0] for i in picked])
    there = torch.cat(
        [
            x
            for x, _ in torch.utils.data.DataLoader(
                torch.utils.data.Subset(ds, picked), batch_size=1, num_workers=args.workers
            )
        ]
    )
    row["worker_vs_main_max_abs_difference"] = float((here - there).abs().max())
    row.update(
        images_read=seen,
        read_seconds=round(time.perf_counter() - start, 1),
        images_per_second=round(seen / (time.perf_counter() - start), 1),
        main_peak_mib=round(peak_mib()),
        worker_peak_mib=round(peak_mib(resource.RUSAGE_CHILDREN)),
    )
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
