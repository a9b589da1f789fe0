"""The matching losses: zero for matching batches, growing with the mismatch, finite gradients."""

import torch

from d3codec.nn.losses import mean_embedding_loss, mmd_rbf, squared_distances


def test_mmd_is_zero_for_the_same_set_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=gen)
    assert abs(float(mmd_rbf(x, x))) < 1e-5
    small, large = mmd_rbf(x + 0.5, x), mmd_rbf(x + 3.0, x)
    assert 0 < small < large


def test_mmd_sees_a_difference_in_spread_that_the_mean_term_misses():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(400, 4, generator=gen)
    narrow = 0.2 * torch.randn(400, 4, generator=gen)
    assert mean_embedding_loss(narrow, real) < 0.05
    assert mmd_rbf(narrow, real) > 10 * mmd_rbf(torch.randn(400, 4, generator=gen), real)


def test_gradients_are_finite_at_zero_distance():
    x = torch.randn(5, 3, requires_grad=True)
    mmd_rbf(x, x.detach().clone()).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(squared_distances(x, x).diagonal(), torch.zeros(5), atol=1e-5)
