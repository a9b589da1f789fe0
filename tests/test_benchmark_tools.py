"""The benchmark tools that no benchmark run exercises before a GPU or a large tree is at hand: the CUDA
check in its CPU dry mode, and the stage monitor of the ImageNet rehearsal."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_runs_every_step_in_its_cpu_dry_mode(tmp_path):
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry", str(tmp_path)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    failed = [(row["step"], row.get("error")) for row in report["rows"] if not row["ok"]]
    assert done.returncode == 0 and not failed, (failed, done.stdout[-2000:], done.stderr[-2000:])
    steps = [row["step"] for row in report["rows"]]
    assert steps == ["encode dm", "encode bptt", "encode d3", "encode d2m", "kill and resume D3",
                     "two D3 workers on one GPU", "expand and evaluate on the device"]
    resume = report["rows"][4]
    assert resume["resumed"] and resume["killed_mid_run"]  # the checkpoint was taken up after a SIGKILL
    assert all(report["rows"][i]["same_bytes_cpu_and_cuda"] for i in range(4))  # the CPU twice: equal bytes
    assert 0 <= report["rows"][-1]["accuracy"] <= 1
    assert (tmp_path / "RESULTS-cuda.md").read_text().count("| yes |") == len(steps)


def test_stage_monitor_records_seconds_exit_code_and_the_peak_memory_of_children(tmp_path):
    log = tmp_path / "stages.jsonl"
    child = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'x = bytearray(300 << 20); import time; " \
            "time.sleep(1)']); sys.exit(3)"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "stage_monitor.py"), "--stage", "demo", "--log", str(log),
                           "--interval", "0.05", "--", sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == 3
    row = json.loads(log.read_text())
    assert row["stage"] == "demo" and row["exit_code"] == 3 and row["processes"] >= 2 and row["seconds"] >= 1
    assert row["peak_mib"] >= 300  # the grandchild's 300 MiB, not the parent's few
