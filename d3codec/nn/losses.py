"""Distribution-matching losses on network features, shared by the distillation methods.

Each takes a synthetic and a real batch of one class, (n, D) and (m, D) float32 (features, or a
teacher's logits), and returns a scalar that is zero when the two batches match in the sense of
the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MMD_BANDWIDTHS = (1.0, 2.0, 4.0, 8.0, 16.0)


def mean_embedding_loss(synthetic: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """‖mean(real) − mean(synthetic)‖², DM's per-class term (Zhao & Bilen 2023, Eq. 4)."""
    return ((real.mean(0) - synthetic.mean(0)) ** 2).sum()


def mmd_rbf(synthetic: torch.Tensor, real: torch.Tensor, bandwidths=MMD_BANDWIDTHS) -> torch.Tensor:
    """Squared maximum mean discrepancy with a mixture of RBF kernels (biased V-statistic).

    k(a, b) = Σ_σ exp(−‖a − b‖² / (2σ²)) over ``bandwidths`` σ, as in the D3 authors' code
    (Qin et al. 2024, Sec. 3.2, the MMD term of Eq. 6), on features as the network gives them.

    Args: synthetic (n, D), real (m, D) float32. Returns: scalar ≥ 0 (up to rounding).
    """
    x, y = synthetic, real
    xx, yy, xy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    total = x.new_zeros(())
    for sigma in bandwidths:
        gamma = 1.0 / (2 * sigma**2)
        total = (
            total + torch.exp(-gamma * xx).mean() + torch.exp(-gamma * yy).mean() - 2 * torch.exp(-gamma * xy).mean()
        )
    return total


def prediction_matching_loss(
    teacher_real: torch.Tensor, teacher_synthetic: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """τ² · KL(mean_i softmax(a_i / τ) ‖ mean_j softmax(b_j / τ)): a teacher's mean prediction on real
    images of a class against its mean prediction on synthetic ones (D2M's prediction matching,
    Sajedi et al. 2024, on class means because the two batches are not paired; τ² as in Hinton et
    al. 2015 keeps the gradient's scale independent of τ).

    Args: teacher_real (m, K) and teacher_synthetic (n, K) float32 logits. Returns: scalar ≥ 0.
    """
    p = F.softmax(teacher_real / temperature, 1).mean(0)  # (K,)
    q = F.softmax(teacher_synthetic / temperature, 1).mean(0)  # (K,)
    return temperature**2 * (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum()


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) ‖a_i − b_j‖² for a (n, D), b (m, D); smooth at zero distance, unlike cdist's square root."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)
