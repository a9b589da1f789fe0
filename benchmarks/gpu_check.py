"""The CUDA check: every encoder, expansion and a short evaluation on a GPU, against the same runs on the CPU.

    python benchmarks/gpu_check.py OUT_DIR            # on a machine with CUDA: about 5 minutes on one H100
    python benchmarks/gpu_check.py OUT_DIR --dry      # the same steps on the CPU, tiny (the test suite runs it)

It needs no dataset: it writes a small ImageNet-like tree (benchmarks/make_imagenet_like.py: 10 classes of
JPEGs read at 32 pixels) into OUT_DIR. Steps, each timed (CUDA timings after torch.cuda.synchronize):

1. each method (dm, bptt, d3, d2m) encodes on ``cuda`` and again on ``cuda:0`` (the same archive bytes where
   the method is deterministic there), and on the CPU with the same seed: the speed-up, and the CPU/CUDA
   agreement (identical bytes, else the largest difference of the expanded images);
2. DM with TF32 matmuls and convolutions allowed, against without: the largest image difference;
3. a D3 encode on CUDA killed mid-run and resumed from its checkpoint, the resumed run under
   ``torch.cuda.set_sync_debug_mode("warn")`` (host syncs in the loop are printed as warnings, counted);
4. two D3 workers on one GPU (``--workers 2``, ranks over gloo);
5. the peak CUDA memory of one D3 matching chunk at 64 pixels with ImageNet's plan (width-256 tapered
   decoder), against d3codec's estimate (d3codec.methods.matching.memory_sized_chunk);
6. ``d3 expand`` and a short ``d3 eval`` (1 student, 2 epochs) of the DM archive on CUDA.

Results go to OUT_DIR/RESULTS-cuda.md (and, run from the repository on a GPU, that file can be copied to
benchmarks/RESULTS-cuda.md) and OUT_DIR/gpu-check.json. A step that fails is recorded with its error and
the others still run; the exit code is 1 when any failed. ``--dry`` runs everything on the CPU (steps 2,
3's sync mode and 5 need CUDA and are skipped), so the script stays runnable where no GPU is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
METHODS = {  # quick settings per method: a few iterations on 10 classes at 32 pixels
    "dm": ["--preset", "smoke", "--iterations", "20"],
    "bptt": ["--preset", "smoke", "--iterations", "5"],
    "d3": ["--preset", "smoke", "--iterations", "10", "--warm-start-iterations", "20", "--teacher-epochs", "0.5"],
    "d2m": ["--preset", "smoke", "--iterations", "5", "--pretrain-iterations", "20", "--teacher-epochs", "0.5"],
}


def run(args: list[str], env: dict | None = None, timeout: float = 600) -> tuple[float, str]:
    """Run the d3 command with ``args``; (seconds, output). Raises RuntimeError with its output on failure."""
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "d3codec.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"d3 {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return time.time() - start, done.stdout + done.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def image_difference(a: Path, b: Path) -> float:
    """The largest absolute difference of two archives' expanded images (in [0, 1])."""
    from d3codec import D3Dataset

    x, y = D3Dataset(a, samples_per_class=2).images, D3Dataset(b, samples_per_class=2).images
    return float((x - y).abs().max()) if x.shape == y.shape else float("inf")


class Check:
    """Runs steps, records each as a row (step, seconds, result or error)."""

    def __init__(self):
        self.rows: list[dict] = []

    def step(self, name: str, fn) -> None:
        start = time.time()
        try:
            result = fn()
            self.rows.append({"step": name, "ok": True, "seconds": round(time.time() - start, 1), **result})
        except Exception as e:  # recorded, and the other steps still run
            self.rows.append(
                {
                    "step": name,
                    "ok": False,
                    "seconds": round(time.time() - start, 1),
                    "error": f"{type(e).__name__}: {e}"[-1500:],
                    "trace": traceback.format_exc()[-1500:],
                }
            )
        print(json.dumps(self.rows[-1])[:400], flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry", action="store_true", help="everything on the CPU, tiny: the suite's check")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --dry, or on a machine with a GPU")
    gpu, alias = ("cpu", "cpu") if args.dry else ("cuda", "cuda:0")
    sys.path.insert(0, str(HERE))
    from make_imagenet_like import make_tree

    data = out / "data"
    if not (data / "train").is_dir():
        make_tree(data, 10 if not args.dry else 3, 20 if not args.dry else 4, 2 if not args.dry else 1, seed=0)
    resolution = "32" if not args.dry else "16"
    common = [str(data / "train"), "--resolution", resolution, "--seed", "1", "--force", "--restart", "--quiet"]
    budget = {m: ["--ipc", "2"] for m in METHODS} | {"bptt": ["--budget", "60000"]}  # BPTT stores LeNet's θ₀ too
    if args.dry:
        quick = {
            m: ["--preset", "smoke", "--iterations", "2"]
            + (["--warm-start-iterations", "2", "--teacher-epochs", "0.2"] if m == "d3" else [])
            + (["--pretrain-iterations", "2", "--teacher-epochs", "0.2"] if m == "d2m" else [])
            for m in METHODS
        }
    else:
        quick = METHODS
    check = Check()
    timings: dict[str, dict[str, float]] = {}

    for method, flags in quick.items():

        def encode(method=method, flags=flags):
            row, paths = {}, {}
            for device in dict.fromkeys((gpu, alias, "cpu")):  # the dry run: the CPU once
                path = out / f"{method}-{device.replace(':', '')}.d3"
                paths[device] = path
                seconds, _ = run(
                    ["compress", method, *common, *budget[method], *flags, "--device", device, "-o", str(path)]
                )
                row[f"seconds_{device}"] = round(seconds, 1)
            row["same_bytes_cuda_and_cuda0"] = digest(paths[gpu]) == digest(paths[alias])
            row["same_bytes_cpu_and_cuda"] = digest(paths[gpu]) == digest(paths["cpu"])
            if not row["same_bytes_cpu_and_cuda"]:
                row["max_image_difference_cpu_cuda"] = round(image_difference(paths[gpu], paths["cpu"]), 5)
            row["speedup_over_cpu"] = round(row["seconds_cpu"] / max(row[f"seconds_{gpu}"], 1e-9), 2)
            timings[method] = row
            return row

        check.step(f"encode {method}", encode)

    if not args.dry:

        def tf32():
            paths = {}
            for allowed in ("0", "1"):
                paths[allowed] = out / f"dm-tf32-{allowed}.d3"
                # off: NVIDIA_TF32_OVERRIDE=0 disables TF32 in cuBLAS and cuDNN; on: cuDNN's convolutions
                # use it by default and TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 adds matmuls
                env = {"NVIDIA_TF32_OVERRIDE": "0"} if allowed == "0" else {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"}
                run(
                    [
                        "compress",
                        "dm",
                        *common,
                        *budget["dm"],
                        *quick["dm"],
                        "--device",
                        gpu,
                        "-o",
                        str(paths[allowed]),
                    ],
                    env=env,
                )
            return {
                "same_bytes": digest(paths["0"]) == digest(paths["1"]),
                "max_image_difference": round(image_difference(paths["0"], paths["1"]), 5),
            }

        check.step("TF32 on and off (DM)", tf32)

    def kill_and_resume():
        path = out / "d3-resume.d3"
        flags = [
            "compress",
            "d3",
            *common,
            *budget["d3"],
            "--preset",
            "smoke",
            "--iterations",
            "400" if not args.dry else "300",
            "--device",
            gpu,
            "-o",
            str(path),
        ]
        # D3 saves its checkpoint once the teacher and the warm start are done, before matching
        process = subprocess.Popen(
            [sys.executable, "-m", "d3codec.cli.main", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        checkpoint = out / "d3-resume.d3.ckpt.g0.safetensors"
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline and not checkpoint.exists():
            time.sleep(0.5)
        time.sleep(0.2)  # into matching, which saves only at its end (or every 5 minutes)
        killed = process.poll() is None
        if killed:
            process.send_signal(signal.SIGKILL)
        process.wait()
        resume_env = {"D3CODEC_SYNC_DEBUG": "warn"} if not args.dry else {}
        seconds, output = run([*[f for f in flags if f != "--restart"]], env=resume_env)
        return {
            "killed_mid_run": killed,
            "checkpoint_found": checkpoint.exists() or killed,
            "resumed_seconds": round(seconds, 1),
            "resumed": "resuming from" in output,
            "sync_warnings": output.count("called a synchronizing CUDA operation"),
        }

    check.step("kill and resume D3", kill_and_resume)

    def two_workers():
        seconds, _ = run(
            [
                "compress",
                "d3",
                *common,
                *budget["d3"],
                *quick["d3"],
                "--subtasks",
                "2",
                "--workers",
                "2",
                "--device",
                gpu,
                "-o",
                str(out / "d3-workers.d3"),
            ]
        )
        return {"seconds": round(seconds, 1)}

    check.step("two D3 workers on one GPU", two_workers)

    if not args.dry:

        def chunk_memory():
            from d3codec.methods.d3.labels import decoder_activation_bytes
            from d3codec.methods.d3.layout import GroupPlan
            from d3codec.methods.matching import memory_sized_chunk
            from d3codec.nn.models import ConvNet

            g = GroupPlan(0, 200, 64, 161, 256, "tapered")
            shape, classes, m, r, width = (3, 64, 64), 4, 64, 128, 128
            decoder = g.decoder(shape).cuda()
            net = ConvNet(3, 200, 64, width=width).cuda().requires_grad_(False)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            z = torch.randn(classes * m, 64, device="cuda")
            features = net.embed(decoder(z))
            with torch.no_grad():
                real = net.embed(torch.rand(classes * r, 3, 64, 64, device="cuda"))
            loss = (features.view(classes, m, -1).mean(1) - real.view(classes, r, -1).mean(1)).pow(2).sum()
            loss.backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            per_class = (1 << 40) // memory_sized_chunk(
                10**6, m, r, shape, width, 1 << 40, decoder_activation_bytes(g, shape)
            )
            return {
                "measured_bytes_per_class": peak // classes,
                "estimated_bytes_per_class": per_class,
                "estimate_over_measured": round(per_class / max(1, peak // classes), 2),
            }

        check.step("D3 chunk memory at 64 px", chunk_memory)

    def expand_and_eval():
        archive = out / f"dm-{gpu.replace(':', '')}.d3"
        start = time.time()
        run(["expand", str(archive), "-o", str(out / "expanded"), "--device", gpu])  # DM: its stored images
        expand_s = time.time() - start
        from d3codec import evaluate
        from d3codec.data.sources import load_dataset

        start = time.time()  # in this process: the folder's test split is its val/, read at the archive's resolution
        real = load_dataset(str(data / "train"), resolution=int(resolution))
        real.test = load_dataset(str(data / "val"), resolution=int(resolution)).train
        result = evaluate(archive, dataset=real, device=gpu, epochs=2, runs=1)
        return {
            "expand_seconds": round(expand_s, 1),
            "eval_seconds": round(time.time() - start, 1),
            "accuracy": result.rows[0].mean,
        }

    check.step("expand and evaluate on the device", expand_and_eval)

    device_name = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available() and not args.dry
        else platform.processor() or platform.machine()
    )
    report = {
        "device": device_name,
        "dry": args.dry,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": check.rows,
    }
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# CUDA check ({'dry run on the CPU' if args.dry else device_name})",
        "",
        f"`python benchmarks/gpu_check.py OUT{' --dry' if args.dry else ''}`, torch {torch.__version__}, "
        f"{report['date']}.",
        "",
        "| step | ok | seconds | result |",
        "|---|---|---|---|",
    ]
    for row in check.rows:
        detail = {k: v for k, v in row.items() if k not in ("step", "ok", "seconds", "trace")}
        lines.append(
            f"| {row['step']} | {'yes' if row['ok'] else 'NO'} | {row['seconds']} | "
            f"{json.dumps(detail)[:600].replace('|', '/')} |"
        )
    (out / "RESULTS-cuda.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(row["ok"] for row in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
