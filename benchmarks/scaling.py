"""How each method's cost grows with the class count and the image side: seconds per matching iteration, peak
resident memory and archive bytes, from short runs on an ImageNet-like tree (benchmarks/make_imagenet_like.py).

    python benchmarks/scaling.py DATA_ROOT OUT_DIR [--classes 10 100 1000] [--resolutions 32 64 128]
                                 [--methods dm d3 d2m] [--timeout 900]

For every class count K it links the first K class folders of DATA_ROOT/train and /val into OUT_DIR/data-K,
then runs, for every method and side, ``d3 compress METHOD imagenet --data-root OUT_DIR/data-K --resolution R
--ipc 2 --preset rehearsal`` under benchmarks/stage_monitor.py (each run alone, ``timeout`` seconds at most).
Per run it reads: the matching stage's seconds per iteration (its last progress line: elapsed over
iterations; the first iteration, which includes warming up, is in the mean), the peak resident memory of the
largest process (VmHWM), the file's bytes against the budget, and the whole command's seconds. Rows go to
OUT_DIR/scaling.jsonl (appended as they finish, so a killed run keeps what it measured) and the table to
OUT_DIR/scaling.md. The rehearsal preset trains nothing well: the bytes are the plan's, filled by barely
distilled contents, and the seconds say how a long run's iterations scale, not what it reaches.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MATCHING_STAGE = {"dm": "DM", "d3": "D3 matching", "d2m": "D2M fine-tuning"}  # progress names of the loop
PROGRESS = re.compile(
    r"^(?:\d\d:\d\d:\d\d )?(?P<name>.+?): (?P<done>\d+)/(?P<total>\d+) \(\d+ %\), "
    r"(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+) elapsed(?:.*?(?P<rate>[\d.]+)(?P<unit>s/it|it/s))?"
)


def subset(data_root: Path, out: Path, classes: int) -> Path:
    """A tree of the first ``classes`` class folders of ``data_root`` (train and val), as symbolic links."""
    target = out / f"data-{classes}"
    for split in ("train", "val"):
        names = sorted(p.name for p in (data_root / split).iterdir() if p.is_dir())[:classes]
        (target / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = target / split / name
            if not link.exists():
                link.symlink_to((data_root / split / name).resolve())
    return target


def seconds_per_iteration(log: str, stage: str) -> float | None:
    """Elapsed seconds over iterations at the last progress line of ``stage`` (a name's start, e.g. "D3 matching"
    for "D3 matching, group 5/5 (3/3)") in a progress log (under 10 s elapsed: the bar's rate), else None."""
    best = None
    for line in log.replace("\r", "\n").splitlines():
        match = PROGRESS.search(line)
        if match and match["name"].startswith(stage) and int(match["done"]) > 0:
            elapsed = int(match["h"] or 0) * 3600 + int(match["m"]) * 60 + int(match["s"])
            best = elapsed / int(match["done"])
            if elapsed < 10 and match["rate"]:  # whole seconds say too little: the bar's own rate
                best = float(match["rate"]) if match["unit"] == "s/it" else 1 / float(match["rate"])
    return best


def run_one(method: str, root: Path, classes: int, side: int, out: Path, timeout: int) -> dict:
    """One short compress under the stage monitor; its row."""
    name = f"{method}-k{classes}-r{side}"
    archive = out / f"{name}.d3"
    command = [
        sys.executable,
        str(HERE / "stage_monitor.py"),
        "--stage",
        name,
        "--log",
        str(out / "stages.jsonl"),
        "--",
        "timeout",
        str(timeout),
        "d3",
        "compress",
        method,
        "imagenet",
        "--data-root",
        str(root),
        "--resolution",
        str(side),
        "--ipc",
        "2",
        "--preset",
        "rehearsal",
        "--device",
        "cpu",
        "--force",
        "--restart",
        "--json",
        "-o",
        str(archive),
    ]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    (out / f"{name}.log").write_text(done.stderr)
    row = {
        "method": method,
        "classes": classes,
        "resolution": side,
        "exit_code": done.returncode,
        "seconds": round(time.time() - start, 1),
        "seconds_per_iteration": seconds_per_iteration(done.stderr, MATCHING_STAGE[method]),
    }
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    row["peak_mib"] = next((s["peak_mib"] for s in reversed(stages) if s["stage"] == name), None)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(file_bytes=result["file_bytes"], budget=result["budget"])
    except (IndexError, ValueError, KeyError):
        row.update(file_bytes=None, budget=None)
    if archive.exists():
        archive.unlink()  # up to hundreds of MB each; the row keeps its size
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| method | classes | side (px) | s / matching iteration | peak memory (MiB) | file bytes | "
        "budget bytes | fill | whole run (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spi = f"{r['seconds_per_iteration']:.2f}" if r["seconds_per_iteration"] is not None else "-"
        fill = f"{r['file_bytes'] / r['budget']:.1%}" if r["file_bytes"] and r["budget"] else "-"
        status = (
            "" if r["exit_code"] == 0 else (" (timed out)" if r["exit_code"] == 124 else f" (exit {r['exit_code']})")
        )
        lines.append(
            f"| {r['method']} | {r['classes']} | {r['resolution']} | {spi} | {r['peak_mib']} | "
            f"{r['file_bytes'] or '-'} | {r['budget'] or '-'} | {fill} | {r['seconds']}{status} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=list(MATCHING_STAGE), choices=list(MATCHING_STAGE))
    parser.add_argument("--timeout", type=int, default=900, help="seconds one run may take")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for classes in args.classes:
        root = subset(args.data_root, args.out, classes)
        for side in args.resolutions:
            for method in args.methods:
                row = run_one(method, root, classes, side, args.out, args.timeout)
                rows.append(row)
                with (args.out / "scaling.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    (args.out / "scaling.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
