"""Run one command and report its wall seconds and the peak resident memory of every process it starts.

    python benchmarks/stage_monitor.py --stage NAME --log OUT.jsonl -- COMMAND [ARGS...]

Every ``--interval`` seconds it reads ``VmHWM`` (the kernel's own peak resident set size, so a short
peak between two reads still counts) of the command and of all its descendants (torch.distributed
ranks, DataLoader workers) from /proc. It appends one JSON line to ``--log``: stage, command, exit
code, seconds, the number of processes seen, the largest peak of any one process (MiB) and the peaks
of the largest five with their command lines. It exits with the command's exit code. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def children() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc/*/stat."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def peak_kib(pid: int) -> tuple[int, str] | None:
    """(VmHWM in KiB, the command line, shortened) of a live process, else None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]), cmd[:160]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.time()
    process = subprocess.Popen(command)
    peaks: dict[int, tuple[int, str]] = {}
    while process.poll() is None:
        for pid in descendants(process.pid):
            seen = peak_kib(pid)
            if seen is not None and seen[0] >= peaks.get(pid, (0, ""))[0]:
                peaks[pid] = seen
        time.sleep(args.interval)
    seconds = time.time() - start
    largest = sorted(peaks.values(), reverse=True)
    row = {
        "stage": args.stage,
        "command": " ".join(command),
        "exit_code": process.returncode,
        "seconds": round(seconds, 1),
        "processes": len(peaks),
        "peak_mib": round(largest[0][0] / 1024) if largest else None,
        "largest": [{"peak_mib": round(k / 1024), "command": c} for k, c in largest[:5]],
    }
    with args.log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"[{args.stage}] {seconds:.1f} s, peak resident memory of one process {row['peak_mib']} MiB "
        f"({len(peaks)} processes), exit code {process.returncode}",
        file=sys.stderr,
    )
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
