"""Benchmark on real Fashion-MNIST: DM and D3 archives against random real images in the same bytes.

For each IPC budget, in one run: compress with DM and with D3 (fast presets unless told
otherwise), train ``--runs`` fresh ConvNet-3 students on each archive and on random real images
stored in the same bytes (as float32 and as PNG), and record final-epoch test accuracy mean ± std,
file bytes, distillation seconds and student seconds. D3 archives are sampled with
``--d3-samples-per-class`` images per class (one number, or one per ``--ipc``; 40 by default, between
what DM stores at IPC 1 (4 per class) and at IPC 10 (55 per class); "priors" draws one sample per
prior; students' seconds are in the table, since more samples cost more); one D3 row has soft
labels switched off, to show what they buy. Optionally also DM with the paper's 256 real
images per class per iteration (``--real-side-ipc``), to show what the fast preset's cheaper real
side costs. Writes benchmarks/RESULTS.md and a JSON file of every number.

    python benchmarks/fashion_mnist.py --ipc 1 10 --runs 3 --epochs 300
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from d3codec import D3Dataset
from d3codec.budget import ipc_budget
from d3codec.compress import compress
from d3codec.data import load_dataset
from d3codec.evaluate import StudentConfig, evaluate, random_real_subset, test_split
from d3codec.methods.d3 import D3Encoder
from d3codec.methods.pixel import PixelEncoder
from d3codec.models import resolve_device

HERE = Path(__file__).resolve().parent

# ../shared/background.md; "recalled" figures are from memory of the papers' tables, unverified
PUBLISHED = {
    1: {"random real": "≈51 (recalled)", "DM": "70.7 (recalled)", "DC": "70.5", "DSA": "70.6", "MTT": "75.1 (recalled)"},
    10: {"random real": "≈74 (recalled)", "DM": "83.5 (recalled)", "DC": "82.3", "DSA": "84.6", "MTT": "87.2 (recalled)"},
    50: {"random real": "≈82.5 (recalled)", "DM": "88.1 (recalled)", "DC": "83.6", "DSA": "88.7", "MTT": "88.3 (recalled)"},
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run(args) -> dict:
    device = resolve_device(args.device)
    real = load_dataset("fashion-mnist", args.data_root)
    test = test_split(real)
    config = StudentConfig(epochs=args.epochs)
    log = lambda m: print(m, flush=True)  # noqa: E731
    invocation = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
                  "machine": machine(), "device": str(device), "note": args.note}
    results = {"invocations": [invocation], "epochs": args.epochs, "runs": args.runs, "rows": [],
               "planned": [[ipc, name] for ipc in args.ipc for name in row_names(ipc, args)]}
    if args.resume and Path(args.json).is_file():  # keep finished rows of an interrupted run
        earlier = json.loads(Path(args.json).read_text())
        if (earlier["epochs"], earlier["runs"]) == (args.epochs, args.runs):
            results["rows"] = earlier["rows"]
            results["invocations"] = earlier["invocations"] + [invocation]
    done = {(r["ipc"], r["name"]) for r in results["rows"]}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def row(ipc, name, images, targets, bytes_, distill_s=None, extra=None):
        r = evaluate(name, images, targets, real, args.runs, config, args.seed, device, test, bytes_, log)
        results["rows"].append({"ipc": ipc, "name": name, "run": len(results["invocations"]),
                                "images": len(images), "bytes": bytes_,
                                "distill_seconds": distill_s, "accuracies": r.accuracies, "mean": r.mean, "std": r.std,
                                "student_seconds": r.seconds, **(extra or {})})
        log(r.summary())
        save(results, args)

    for ipc in args.ipc:
        variants = dm_variants(ipc, args)
        budget = ipc_budget(ipc, real.num_classes, real.image_shape)
        for name, overrides in variants:
            if (ipc, name) in done:
                continue
            encoder = PixelEncoder.from_options(args.preset, **overrides)
            path = work / f"fm-ipc{ipc}-{len(results['rows'])}.d3"
            log(f"== IPC {ipc}: compress {name}")
            t = time.time()
            res = compress(real, path, encoder=encoder, ipc=ipc, seed=args.seed, device=device, progress=False)
            seconds = time.time() - t
            ds = D3Dataset(path)
            row(ipc, name, ds.images, ds.labels, res.file_bytes, round(seconds, 1),
                {"images_per_class": ds.meta["params"]["images_per_class"],
                 "storage": ds.meta["params"]["storage_dtype"], "budget": res.budget,
                 "config": ds.meta["params"]["config"]})
        for name, overrides in d3_variants(ipc, args):
            if (ipc, name) in done:
                continue
            path = work / f"fm-ipc{ipc}-d3-{len(results['rows'])}.d3"
            log(f"== IPC {ipc}: compress {name}")
            t = time.time()
            res = compress(real, path, encoder=D3Encoder.from_options(args.preset, **overrides), ipc=ipc,
                           seed=args.seed, device=device, progress=False)
            seconds = time.time() - t
            t = time.time()
            ds = D3Dataset(path, samples_per_class=d3_samples(ipc, args), seed=args.seed)
            decode_rate = len(ds) / (time.time() - t)
            targets = ds.soft_labels if ds.soft_labels is not None else ds.labels
            group = ds.meta["params"]["groups"][0]
            row(ipc, name, ds.images, targets, res.file_bytes, round(seconds, 1),
                {"samples_per_class": len(ds) // real.num_classes, "priors_per_class": group["priors_per_class"],
                 "latent_dim": group["latent_dim"], "decoder_width": group["decoder_width"],
                 "teacher_accuracy": group["stats"].get("teacher_accuracy"), "budget": res.budget,
                 "decode_images_per_second_cpu": round(decode_rate), "config": ds.meta["params"]["config"]})
        for storage in ("float32", "png"):
            if (ipc, f"random real ({storage})") in done:
                continue
            x, y, used = random_real_subset(real, budget, storage, args.seed)
            log(f"== IPC {ipc}: random real ({storage}), {len(x)} images, {used} bytes")
            row(ipc, f"random real ({storage})", x, y, used, extra={"budget": budget})
    return results


def dm_variants(ipc: int, args) -> list[tuple[str, dict]]:
    """(row name, preset overrides) of the DM rows at this IPC budget."""
    if "dm" not in args.methods:
        return []
    variants = [("DM (fast preset)" if args.preset == "fast" else f"DM ({args.preset})", {})]
    if ipc in args.real_side_ipc:
        variants.append((f"DM ({args.preset}, 256 real/class/iter)", {"real_per_class": 256}))
    return variants


def d3_variants(ipc: int, args) -> list[tuple[str, dict]]:
    """(row name, preset overrides) of the D3 rows at this IPC budget."""
    if "d3" not in args.methods:
        return []
    variants = [(f"D3 ({args.preset} preset)", {})]
    if ipc in args.no_labels_ipc:
        variants.append((f"D3 ({args.preset}, no soft labels)", {"soft_labels": False}))
    return variants


def d3_samples(ipc: int, args) -> int | None:
    """Samples per class drawn from the D3 archive at this IPC budget (None: one per prior)."""
    values = args.d3_samples_per_class
    value = values[0] if len(values) == 1 else values[args.ipc.index(ipc)]
    return None if value == "priors" else int(value)


def row_names(ipc: int, args) -> list[str]:
    return [name for name, _ in dm_variants(ipc, args) + d3_variants(ipc, args)] + \
        ["random real (float32)", "random real (png)"]


def save(results: dict, args) -> None:
    Path(args.json).write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(render(results))


def render(results: dict) -> str:
    lines = [
        "# Benchmark: real Fashion-MNIST, ConvNet-3",
        "",
        "- script runs (the `script run` column; `--resume` keeps the rows of the earlier runs):",
        *[f"  {i}. {v['date']}: `{v['command']}` on {v['machine']}; device: {v['device']}"
          + (f". {v['note']}" if v.get("note") else "")
          for i, v in enumerate(results["invocations"], 1)],
        f"- protocol: {results['runs']} fresh ConvNet-3 students per row, {results['epochs']} epochs, SGD lr 0.01 "
        "(× 0.1 at half), momentum 0.9, weight decay 5e-4, batch 256, DSA; **final-epoch** test accuracy on the "
        "10 000 test images, mean ± std over students. Bytes: the whole file (archives) or the images "
        "as stored (baselines). Baselines are drawn in the same run.",
        "",
        "| IPC budget | row | script run | bytes | images | distil s | student s (each) | accuracy % (final) | published % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        pub = PUBLISHED.get(r["ipc"], {})
        published = pub.get("DM", "") if r["name"].startswith("DM") else (
            pub.get("random real", "") if r["name"] == "random real (float32)" else "")
        distil = f"{r['distill_seconds']:.0f}" if r.get("distill_seconds") is not None else "-"
        per_class = f" ({r['images_per_class']}/class, {r['storage']})" if "images_per_class" in r else ""
        if "priors_per_class" in r:
            per_class = (f" ({r['samples_per_class']}/class drawn from {r['priors_per_class']} priors/class, "
                         f"latent {r['latent_dim']}, decoder width {r['decoder_width']}; decodes "
                         f"{r['decode_images_per_second_cpu']} img/s on CPU)")
        student = sum(r["student_seconds"]) / len(r["student_seconds"])
        lines.append(f"| {r['ipc']} ({r.get('budget', '')} B) | {r['name']} | {r.get('run', 1)} | {r['bytes']} | {r['images']}{per_class} | "
                     f"{distil} | {student:.0f} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {published} |")
    finished = {(r["ipc"], r["name"]) for r in results["rows"]}
    pending = [f"IPC {ipc}: {name}" for ipc, name in results.get("planned", []) if (ipc, name) not in finished]
    if pending:
        lines += ["", f"**Not yet measured** (the run was interrupted; `--resume` continues it): {'; '.join(pending)}."]
    lines += [
        "",
        "Published Fashion-MNIST ConvNet-3 figures (../shared/background.md; \"recalled\" ones are unverified, and "
        "papers mostly report the best epoch over float32 images at IPC × K images, not whole files):",
        "",
        "| method | IPC 1 | IPC 10 | IPC 50 |",
        "|---|---|---|---|",
    ]
    for method in ("random real", "DC", "DSA", "DM", "MTT"):
        lines.append(f"| {method} | " + " | ".join(PUBLISHED[i][method] for i in (1, 10, 50)) + " |")
    lines += ["", "Earlier measured baseline on this kind of machine (background.md, one student, final epoch): "
              "IPC 1 budget: float32 51.0 %, raw uint8 67.3 %, JPEG q50 70.3 %; IPC 10 budget: float32 73.8 %, "
              "raw uint8 83.0 %, JPEG q50 83.1 %.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--preset", default="fast")
    p.add_argument("--real-side-ipc", type=int, nargs="*", default=[1],
                   help="IPC budgets at which DM also runs with 256 real images per class per iteration")
    p.add_argument("--methods", nargs="+", default=["dm", "d3"], choices=["dm", "d3"])
    p.add_argument("--no-labels-ipc", type=int, nargs="*", default=[1, 10],
                   help="IPC budgets at which D3 also runs with soft labels off")
    p.add_argument("--d3-samples-per-class", nargs="+", default=["40"],
                   help="images drawn per class from D3 archives: one number, or one per --ipc; 'priors': one per prior")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--work", default=str(HERE / "work"))
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--json", default=str(HERE / "results-fashion-mnist.json"))
    p.add_argument("--note", default="", help="said of this run in RESULTS.md (e.g. what else shared the machine)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --json and run the rest")
    p.add_argument("--render-only", action="store_true", help="rewrite --out from --json without running anything")
    args = p.parse_args()
    if len(args.d3_samples_per_class) not in (1, len(args.ipc)) or not all(
            v == "priors" or v.isdigit() and int(v) > 0 for v in args.d3_samples_per_class):
        p.error("--d3-samples-per-class takes one positive number (or 'priors'), or one per --ipc")
    if args.render_only:
        results = json.loads(Path(args.json).read_text())
        results.setdefault("planned", [[ipc, name] for ipc in args.ipc for name in row_names(ipc, args)])
        save(results, args)
        return
    run(args)


if __name__ == "__main__":
    main()
