"""DD-Ranking's metrics: how much of a distilled set's accuracy its images carry, rather than its labels.

Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation" (2025, arXiv:2505.13300,
Sec. 3; the ``ddranking`` package 0.2.0), with accuracies as fractions:

- hard-label recovery  HLR = Acc(full real training set, hard labels) − Acc(distilled images, hard labels):
  what is left to recover with hard labels alone (lower is better);
- improvement over random  IOR = Acc(distilled, its own labels) − Acc(random real, the same labels): what
  the distillation adds over real images trained the same way (higher is better);
- label-robust score  LRS = (e^α − e^−1) / (e − e^−1), α = w·IOR − (1 − w)·HLR, w = 0.5, in [0, 1]
  (reported ×100).

Our one departure: DD-Ranking's random real images are as many per class as the distilled set holds; ours
fill the same bytes (the budget, less the labeller's bytes where the archive has one), the comparison a
user of a fixed budget faces. The full-data accuracy is measured once per dataset and student model by
benchmarks/full_data.py and kept in FULL_DATA_ACCURACY with the command that gave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (dataset, student model) → (final-epoch test accuracy, how it was measured); from benchmarks/full-data.json
FULL_DATA_ACCURACY: dict[tuple[str, str], tuple[float, str]] = {
    # 8 epochs (what a 2-core CPU allowed: 56 min); longer training reaches about 93.5 % in the field's reports
    ("fashion-mnist", "convnet3"): (
        0.9108,
        "python benchmarks/full_data.py --epochs 8 (2026-12-06, Intel Xeon, 1 "
        "thread, protocol of d3codec.evaluation.students: DSA, SGD, final epoch)",
    ),
}

LRS_WEIGHT = 0.5  # DD-Ranking's w


def label_robust_score(hlr: float, ior: float, weight: float = LRS_WEIGHT) -> float:
    """LRS in [0, 1] from HLR and IOR (fractions in [-1, 1])."""
    alpha = weight * ior - (1 - weight) * hlr
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


@dataclass(frozen=True)
class Ranking:
    """DD-Ranking's metrics of one archive. Accuracies and metrics are fractions; None where not measured.

    Attributes:
        full_data: Acc(full real, hard); hard: Acc(archive, hard); labelled: Acc(archive, its labels);
        random: Acc(random real in the same bytes, the same labels); labels: what "the same labels" were.
    """

    full_data: float | None
    hard: float
    labelled: float
    random: float
    labels: str

    @property
    def hlr(self) -> float | None:
        return None if self.full_data is None else self.full_data - self.hard

    @property
    def ior(self) -> float:
        return self.labelled - self.random

    @property
    def lrs(self) -> float | None:
        return None if self.hlr is None else label_robust_score(self.hlr, self.ior)

    def to_json(self) -> dict:
        return {
            "full_data": self.full_data,
            "hard": self.hard,
            "labelled": self.labelled,
            "random": self.random,
            "labels": self.labels,
            "hlr": self.hlr,
            "ior": self.ior,
            "lrs": self.lrs,
        }

    def summary(self) -> str:
        hlr = "not measured (no full-data accuracy for this dataset and model)"
        if self.hlr is not None and self.full_data is not None:
            hlr = f"{100 * self.hlr:.2f} points ({100 * self.full_data:.2f} % full data − {100 * self.hard:.2f} % hard)"
        lrs = "" if self.lrs is None else f"; LRS {100 * self.lrs:.2f}"
        return (
            f"DD-Ranking: HLR {hlr}; IOR {100 * self.ior:+.2f} points ({100 * self.labelled:.2f} % − "
            f"{100 * self.random:.2f} % random real, {self.labels}){lrs}"
        )
