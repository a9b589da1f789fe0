"""Distribution-matching losses on network features, shared by the distillation methods.

Both take features of a synthetic and a real batch of one class, (n, D) and (m, D) float32, and
return a scalar that is zero when the two batches match in the sense of the loss.
"""

from __future__ import annotations

import torch

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
        gamma = 1.0 / (2 * sigma ** 2)
        total = total + torch.exp(-gamma * xx).mean() + torch.exp(-gamma * yy).mean() \
            - 2 * torch.exp(-gamma * xy).mean()
    return total



def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) ‖a_i − b_j‖² for a (n, D), b (m, D); smooth at zero distance, unlike cdist's square root."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)
