"""The benchmark tools that no benchmark run exercises before a GPU or a large tree is at hand: the CUDA
check in its CPU dry mode, the stage monitor of the ImageNet rehearsal, the scaling table's parsing and
class subsets, and the top-k soft-label rewrite."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_gpu_check_runs_every_step_in_its_cpu_dry_mode(tmp_path):
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    failed = [(row["step"], row.get("error")) for row in report["rows"] if not row["ok"]]
    assert done.returncode == 0 and not failed, (failed, done.stdout[-2000:], done.stderr[-2000:])
    steps = [row["step"] for row in report["rows"]]
    assert steps == [
        "encode dm",
        "encode bptt",
        "encode d3",
        "encode d2m",
        "kill and resume D3",
        "two D3 workers on one GPU",
        "expand and evaluate on the device",
    ]
    resume = report["rows"][4]
    assert resume["resumed"] and resume["killed_mid_run"]  # the checkpoint was taken up after a SIGKILL
    assert all(report["rows"][i]["same_bytes_cpu_and_cuda"] for i in range(4))  # the CPU twice: equal bytes
    assert 0 <= report["rows"][-1]["accuracy"] <= 1
    assert (tmp_path / "RESULTS-cuda.md").read_text().count("| yes |") == len(steps)


def test_stage_monitor_records_seconds_exit_code_and_the_peak_memory_of_children(tmp_path):
    log = tmp_path / "stages.jsonl"
    child = (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', 'x = bytearray(300 << 20); import time; "
        "time.sleep(1)']); sys.exit(3)"
    )
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "stage_monitor.py"),
            "--stage",
            "demo",
            "--log",
            str(log),
            "--interval",
            "0.05",
            "--",
            sys.executable,
            "-c",
            child,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3
    row = json.loads(log.read_text())
    assert row["stage"] == "demo" and row["exit_code"] == 3 and row["processes"] >= 2 and row["seconds"] >= 1
    assert row["peak_mib"] >= 300  # the grandchild's 300 MiB, not the parent's few


def test_scaling_reads_seconds_per_iteration_of_the_matching_stage_and_links_class_subsets(tmp_path):
    from scaling import seconds_per_iteration, subset

    log = (
        "10:00:01 D3 teacher, group 1/1 (1/3): 4/4 (100 %), 00:08 elapsed\r"
        "10:00:09 D3 matching, group 1/1 (3/3): 1/3 (33 %), 00:03 elapsed, 00:06 left\n"
        "10:00:15 D3 matching, group 1/1 (3/3): 3/3 (100 %), 01:00:09 elapsed, 00:00 left\n"
    )
    assert seconds_per_iteration(log, "D3 matching") == 1203.0  # 1 h 9 s over 3 iterations
    assert seconds_per_iteration(log, "DM") is None
    assert seconds_per_iteration("DM: 3/3 (100 %), 00:01 elapsed, 00:00 left,  4.00it/s", "DM") == 0.25
    for split in ("train", "val"):
        for name in ("n03", "n01", "n02"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
    root = subset(tmp_path / "tree", tmp_path / "out", 2)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["n01", "n02"]  # the first classes, sorted
    assert (root / "val" / "n02").resolve() == (tmp_path / "tree" / "val" / "n02").resolve()


def test_top_k_labels_keeps_the_priors_and_cuts_every_row_to_its_largest(tiny_real, tmp_path):
    import torch
    from top_k_labels import top_k_archive

    from d3codec import D3Dataset
    from d3codec.encode.pipeline import compress
    from d3codec.methods.d3 import D3Encoder

    encoder = D3Encoder.from_options(
        "fast",
        iterations=1,
        init_iterations=2,
        real_per_class=4,
        synthetic_per_class=2,
        embed_width=8,
        teacher_epochs=1.0,
        teacher_width=8,
    )
    compress(tiny_real, tmp_path / "whole.d3", encoder=encoder, budget=16_000, progress=False)
    before, after = top_k_archive(tmp_path / "whole.d3", tmp_path / "top1.d3", 1)
    assert after < before
    whole, top = D3Dataset(tmp_path / "whole.d3"), D3Dataset(tmp_path / "top1.d3")
    assert torch.equal(whole.images, top.images)  # the same priors, decoder and draw
    assert torch.equal(whole.soft_labels.argmax(1), top.soft_labels.argmax(1))
    rest = (1 - top.soft_labels.max(1).values) / 2  # 3 classes: the other two share what the top one leaves
    assert torch.allclose(top.soft_labels.sort(1).values[:, :2], rest[:, None].expand(-1, 2), atol=1e-6)
    assert top.meta["params"]["groups"][0]["label_top_k"] == 1


def test_the_final_tables_rows_name_formation_matching_budget_and_students():
    """benchmarks/fashion_mnist.py: issue 34's rows (DM through a formation with a matching, at one budget, with
    their own count of students) are planned as asked."""
    import argparse

    import fashion_mnist

    spec = fashion_mnist.parse_formation_spec("dct-variance:3:dance@1!")
    assert spec == {"kind": "dct-variance", "factor": 3, "matching": "dance", "ipc": 1, "no_labeller": True}
    args = argparse.Namespace(
        methods=["dm"],
        preset="fast",
        formations=["dct-variance:3:dance@1!", "dct:2"],
        labeller_width=16,
        real_side_ipc=[],
        models=["convnet3"],
        jpeg_quality=20,
        runs=1,
        runs_for=["×3, dance=3", "JPEG=3"],
        default_row=False,
        matching=None,
        labeller_twins=True,
        real_storages=["float32", "png", "jpeg"],
    )
    at_1, at_10 = fashion_mnist.row_names(1, args), fashion_mnist.row_names(10, args)
    assert "DM (fast preset, dct-variance ×3, dance matching)" in at_1
    assert not any("dct-variance" in name for name in at_10)  # @1: that budget only
    assert not any("dct-variance" in name and "labeller" in name for name in at_1)  # !: no labeller twin
    assert any(name.startswith("DM (fast preset, dct ×2, labeller w16)") for name in at_10)
    runs = {name: fashion_mnist.row_runs(name, args) for name in at_1}
    assert runs["DM (fast preset, dct-variance ×3, dance matching)"] == 3 and runs["random real (JPEG q20)"] == 3
    assert runs["random real (PNG)"] == 1
    # the final table: the default rule's archive first, D3 and D2M with a matching, no labeller twins
    args.default_row, args.matching, args.labeller_twins, args.methods = True, "dance", False, ["dm", "d3"]
    args.real_storages, args.no_labels_ipc, args.d3_samples_per_class, args.ipc = ["jpeg"], [], ["40"], [1, 10]
    at_1, at_10 = fashion_mnist.row_names(1, args), fashion_mnist.row_names(10, args)
    assert at_1[0] == "default (DM, dct-variance ×3, dance matching)"
    assert at_10[0] == "default (DM, dct-variance ×2, dance matching)"
    assert "D3 (fast preset, dance matching)" in at_1 and not any("labeller w16)" in name for name in at_1)
    assert "random real (JPEG q20)" in at_1 and "random real (PNG)" not in at_1
