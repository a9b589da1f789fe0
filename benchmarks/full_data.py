"""The full-data reference of DD-Ranking's hard-label recovery: one ConvNet-3 trained on the whole
real training split with hard labels, by the evaluation protocol (SGD, DSA, lr × 0.1 at half the
epochs), final-epoch test accuracy. Run once per dataset and model; the result goes to
benchmarks/full-data.json, which d3codec.evaluation.ranking reads (FULL_DATA_ACCURACY is copied from it).

    OMP_NUM_THREADS=1 python benchmarks/full_data.py --epochs 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hardware import cpu_name

from d3codec.data.sources import load_dataset
from d3codec.evaluation import students


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="convnet3")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("full-data.json")))
    args = parser.parse_args()
    real = load_dataset(args.dataset)
    images = torch.cat([real.images_at(real.class_indices(c)) for c in range(real.num_classes)])
    labels = torch.cat([torch.full((len(real.class_indices(c)),), c) for c in range(real.num_classes)])
    test_x, test_y = students.test_split(real)
    config = students.StudentConfig(model=args.model, epochs=args.epochs)
    accuracy, seconds = students.train_student(
        images,
        labels,
        real.num_classes,
        real.mean,
        real.std,
        (test_x, test_y),
        config,
        seed=args.seed,
        progress="full data",
    )
    row = {
        "dataset": real.name,
        "model": args.model,
        "images": len(images),
        "epochs": args.epochs,
        "accuracy": round(accuracy, 4),
        "seconds": round(seconds, 1),
        "seed": args.seed,
        "command": "python " + " ".join(sys.argv),
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    rows = [r for r in rows if (r["dataset"], r["model"]) != (row["dataset"], row["model"])] + [row]
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
