"""DSA: siamese parameters, differentiability, shapes."""

import pytest
import torch

from d3codec.nn.augment import DSA


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_siamese_draw_transforms_real_and_synthetic_batches_alike(family):
    dsa = DSA(strategy=family)
    x = torch.rand(6, 3, 16, 16)
    params = dsa.sample(torch.Generator().manual_seed(3))
    big, small = dsa.apply(x, params), dsa.apply(x[:2], params)
    assert big.shape == x.shape
    assert torch.allclose(big[:2], small, atol=1e-6)  # same parameters whatever the batch size
    assert torch.allclose(big[0], dsa.apply(x[:1], params)[0], atol=1e-6)


def test_every_family_is_differentiable_and_some_change_the_image():
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for family in ["color", "crop", "cutout", "flip", "scale", "rotate"]:
        dsa = DSA(strategy=family)
        for _ in range(3):
            y = dsa.apply(x, dsa.sample(gen))
            (grad,) = torch.autograd.grad(y.sum(), x)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
            changed += not torch.allclose(y, x)
    assert changed >= 12


def test_per_sample_parameters_differ_between_images():
    dsa = DSA(strategy="scale")
    x = torch.rand(1, 1, 16, 16).repeat(8, 1, 1, 1)
    y = dsa.apply(x, dsa.sample(torch.Generator().manual_seed(0), n=8))
    assert not torch.allclose(y[0], y[1])


def test_cutout_zeroes_half_the_side():
    dsa = DSA(strategy="cutout")
    y = dsa.apply(torch.ones(1, 1, 16, 16), {"family": "cutout", "u": torch.tensor([[0.5, 0.5]])})
    assert int((y == 0).sum()) == 64  # an 8×8 square


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown DSA"):
        DSA(strategy="color_warp")
