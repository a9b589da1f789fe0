"""Where CPU time goes: the kernel's share of short one-thread runs of every method, and of a student.

glibc's malloc unmaps large freed buffers and maps them again on the next allocation, so a training
loop that frees and re-allocates its activations every iteration spends much of its CPU time in the
kernel (page faults that zero fresh pages, mmap and munmap). d3codec.util.runtime.keep_freed_memory
raises malloc's thresholds at start-up. This script runs each workload three ways, each in a fresh
process with one thread, on real Fashion-MNIST at the IPC 10 budget:

- ``glibc default``: ``D3CODEC_MALLOC=system``, what every run did before the fix;
- ``d3codec``: as shipped (mallopt at start-up);
- ``environment``: glibc's defaults overridden by ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` (4 000 000 000 each), the measurement the fix must come within 15 % of.

It reports user and system CPU seconds of the work alone (data loading excluded), the kernel's share,
and the wall time; writes benchmarks/cpu-time.md and benchmarks/results-cpu-time.json. A run of some
workloads replaces their rows and keeps the others' from the last run, each row with its own date and
the conditions it ran under (``--conditions``).

    python benchmarks/cpu_time.py                    # every workload, every mode
    python benchmarks/cpu_time.py --workloads dm     # one (the other rows are kept)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hardware import cpu_name

HERE = Path(__file__).resolve().parent
STUDENT_SECTION = "## Student speed"  # benchmarks/student_speed.py's section of cpu-time.md, kept by a rerun here
MODES = {
    "glibc default": {"D3CODEC_MALLOC": "system"},
    "d3codec": {},
    "environment": {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"},
}
WORKLOADS = {
    "dm": "DM, fast preset, 25 iterations",
    "bptt": "BPTT, fast preset, 10 images per class, fixed init, 10 iterations",
    "d3": "D3, fast preset, 200 warm-start and 25 matching iterations (teacher 0.2 epochs)",
    "d2m": "D2M, fast preset, 100 VAE pre-training and 25 fine-tuning iterations (teacher 0.2 epochs)",
    "student": "one ConvNet-3 student, 20 epochs on 550 random real images (DSA)",
}


def run_workload(name: str) -> dict:
    """Run one workload in this process; returns its user and system CPU seconds and wall seconds."""
    import torch

    torch.set_num_threads(1)
    from d3codec.data.sources import load_dataset
    from d3codec.encode.pipeline import compress
    from d3codec.evaluation.students import StudentConfig, random_real_subset, test_split, train_student
    from d3codec.methods.d2m import D2MEncoder
    from d3codec.methods.d3 import D3Encoder
    from d3codec.methods.pixel import BPTTEncoder, DMEncoder
    from d3codec.util.runtime import keep_freed_memory

    real = load_dataset("fashion-mnist")
    folder = tempfile.mkdtemp()
    teacher = dict(teacher_epochs=0.2)
    encoders = {
        "dm": lambda: DMEncoder.from_options("fast", iterations=25),
        "bptt": lambda: BPTTEncoder.from_options("fast", iterations=10, images_per_class=10),
        "d3": lambda: D3Encoder.from_options("fast", iterations=25, init_iterations=200, **teacher),
        "d2m": lambda: D2MEncoder.from_options(
            "fast", None, None, f"{folder}/p.ckpt", iterations=25, pretrain_iterations=100, **teacher
        ),
    }
    test = test_split(real) if name == "student" else None
    if name == "student":
        x, y, _ = random_real_subset(real, 550 * 28 * 28 * 4, "float32", 0)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    if name == "student":
        train_student(x, y, real.num_classes, real.mean, real.std, test, StudentConfig(epochs=20))
    else:
        compress(real, f"{folder}/a.d3", encoder=encoders[name](), ipc=10, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user": after.ru_utime - before.ru_utime,
        "system": after.ru_stime - before.ru_stime,
        "wall": time.time() - start,
        "malloc": keep_freed_memory(),
    }


def measure(name: str, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "D3CODEC_MALLOC"}
    env.update({"OMP_NUM_THREADS": "1", **MODES[mode]})
    out = subprocess.run(
        [sys.executable, __file__, "--child", name], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["kernel_share"] = result["system"] / (result["user"] + result["system"])
    return result


def table(results: dict, measured: dict, meta: dict) -> str:
    lines = [
        "# CPU time: the kernel's share before and after d3codec.util.runtime",
        "",
        f"Measured on {meta['machine']} ({meta['cores']} cores), one thread per run, torch "
        + meta["torch"]
        + "; each workload's date and conditions are under the table.",
        "",
        "Command: `python benchmarks/cpu_time.py`. Each workload runs in a fresh "
        "process on real Fashion-MNIST at the IPC 10 budget; CPU seconds count the work alone, not the data "
        "loading. *glibc default* is the behaviour before the fix (`D3CODEC_MALLOC=system`), *d3codec* what "
        "ships (mallopt at start-up), *environment* the `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` "
        "run it is compared with.",
        "",
        "| workload | mode | user s | system s | kernel share | wall s | wall vs environment |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, modes in results.items():
        ref = modes.get("environment", {}).get("wall")
        for mode, r in modes.items():
            rel = f"{100 * (r['wall'] / ref - 1):+.1f} %" if ref else "-"
            lines.append(
                f"| {WORKLOADS[name]} | {mode} | {r['user']:.1f} | {r['system']:.1f} | "
                f"{100 * r['kernel_share']:.1f} % | {r['wall']:.1f} | {rel} |"
            )
    lines += ["", "Measured:", ""]
    lines += [f"- {WORKLOADS[name]}: {m['date']}, {m['conditions']} (`{m['command']}`)" for name, m in measured.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument(
        "--conditions",
        default="each run alone on an idle machine",
        help="what else the machine ran, recorded beside these rows",
    )
    p.add_argument("--child", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_workload(args.child)))
        return
    results = {}
    for name in args.workloads:
        results[name] = {}
        for mode in args.modes:
            results[name][mode] = r = measure(name, mode)
            print(
                f"{name:8} {mode:14} user {r['user']:6.1f} s  system {r['system']:6.1f} s  kernel "
                f"{100 * r['kernel_share']:5.1f} %  wall {r['wall']:6.1f} s  ({r['malloc']})",
                flush=True,
            )
    import torch

    meta = {
        "date": dt.date.today().isoformat(),
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv[1:]) or "defaults",
    }
    path = HERE / "results-cpu-time.json"
    last = json.loads(path.read_text()) if path.exists() else {"results": {}, "measured": {}}
    old_meta = last.get("meta", {})  # files before 2026-12-05 have one date for every row
    measured = {
        name: last.get("measured", {}).get(name)
        or {
            "date": old_meta.get("date"),
            "conditions": "each run alone on an idle machine",
            "command": "python benchmarks/cpu_time.py",
        }
        for name in last["results"]
    }
    this_run = {
        "date": meta["date"],
        "conditions": args.conditions,
        "command": "python benchmarks/cpu_time.py " + shlex.join(sys.argv[1:]),
    }
    merged = {
        name: results.get(name) or last["results"][name]
        for name in WORKLOADS
        if name in results or name in last["results"]
    }
    measured = {name: this_run if name in results else measured[name] for name in merged}
    path.write_text(json.dumps({"meta": meta, "results": merged, "measured": measured}, indent=1) + "\n")
    page = HERE / "cpu-time.md"
    kept = page.read_text().partition(STUDENT_SECTION)[1:] if page.is_file() else ("", "")
    page.write_text(table(merged, measured, meta) + ("\n" + "".join(kept) if kept[0] else ""))
    print(f"wrote {HERE / 'cpu-time.md'}")


if __name__ == "__main__":
    main()
