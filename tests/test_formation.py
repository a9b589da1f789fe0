"""Formations (IDC's lowres, FreD's dct): linear maps from stored codes to images that DM distils through."""

import pytest
import torch

from d3codec import D3Dataset
from d3codec.encode.pipeline import compress
from d3codec.errors import D3FormatError
from d3codec.format.container import D3Reader, Section, encode_archive
from d3codec.methods.pixel import DMEncoder
from d3codec.methods.pixel.formation import PIXELS, Formation, dct_basis, parse_formation

SHAPE = (3, 16, 16)


def test_the_dct_basis_is_orthonormal_and_dct_codes_round_trip():
    basis = dct_basis(16, 16, torch.zeros(1))
    assert torch.allclose(basis @ basis.T, torch.eye(16), atol=1e-5)
    dct = Formation("dct", 2)
    codes = torch.randn(4, *dct.code_shape(SHAPE))
    assert torch.allclose(dct.encode(dct.decode(codes, SHAPE)), codes, atol=1e-5)  # decode is injective
    full = Formation("dct", 2)
    x = torch.rand(2, *SHAPE)
    # a projection: encoding what a code decodes to gives the code, and the residual is orthogonal to it
    projected = full.decode(full.encode(x), SHAPE)
    assert abs(float(((x - projected) * projected).sum())) < 1e-3


def ranked(factor: int = 2, seed: int = 0) -> Formation:
    """A dct-variance formation fitted on images whose variance sits in the high frequencies of one row."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(64, *SHAPE, generator=gen) * 0.1
    x[:, :, :, ::2] += torch.rand(64, 3, 1, 1, generator=gen)  # stripes: the highest horizontal frequency varies
    return parse_formation("dct-variance", factor).fitted(x)


def test_variance_selection_keeps_the_dc_and_the_coefficients_that_vary_most():
    formation = ranked()
    assert formation.kind == "dct" and formation.mask is not None and len(formation.mask) == 3
    where = formation.positions(SHAPE)  # (C, 16·16 / 4)
    h, w = SHAPE[1:]
    assert where.shape == (3, (h // 2) * (w // 2)) and bool((where[:, 0] == 0).all())  # the DC first, in every channel
    assert bool((where == w - 1).any(dim=1).all())  # (0, W−1): the stripes' frequency, outside the low square
    x = torch.rand(5, *SHAPE)
    codes = formation.encode(x)
    assert codes.shape == (5, 3, h // 2, w // 2)
    assert torch.allclose(formation.encode(formation.decode(codes, SHAPE)), codes, atol=1e-5)  # a projection
    with pytest.raises(ValueError, match="fit it to the real data"):
        parse_formation("dct-variance").encode(x)
    assert parse_formation("dct").fitted(x) == Formation("dct", 2)  # nothing to fit without a mask


@pytest.mark.parametrize("formation", [Formation("lowres", 2), Formation("lowres", 4), Formation("dct", 2), ranked()])
def test_denormalised_codes_decode_to_the_denormalised_images(formation):
    mean, std = torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    codes = torch.randn(3, *formation.code_shape(SHAPE))
    pixel_codes = formation.denormalise(codes.clone(), mean, std, SHAPE)
    assert torch.allclose(formation.decode(pixel_codes, SHAPE), formation.decode(codes, SHAPE) * std + mean, atol=1e-5)


def test_lowres_keeps_constants_and_upsamples_to_full_size():
    lowres = Formation("lowres", 4)
    assert lowres.code_shape(SHAPE) == (3, 4, 4) and lowres.gain == 16
    images = lowres.decode(torch.full((2, 3, 4, 4), 0.7), SHAPE)
    assert images.shape == (2, *SHAPE) and torch.allclose(images, torch.full_like(images, 0.7))


def test_bad_formations_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="one of pixels, lowres, dct"):
        parse_formation("wavelet")
    with pytest.raises(ValueError, match="applies to the lowres and dct"):
        parse_formation("pixels", 2)
    with pytest.raises(ValueError, match="must divide the image side"):
        Formation("lowres", 3).check(SHAPE)
    assert parse_formation("pixels") is PIXELS and parse_formation("dct") == Formation("dct", 2)


@pytest.mark.parametrize("kind", ["lowres", "dct", "dct-variance"])
def test_dm_through_a_formation_stores_codes_and_reads_back_full_images(tiny_real, tmp_path, kind):
    encoder = DMEncoder.from_options("fast", iterations=3, real_per_class=8, embed_width=16, formation=kind)
    result = compress(tiny_real, tmp_path / "f.d3", encoder=encoder, budget=6_000, progress=False)
    pixels = compress(
        tiny_real,
        tmp_path / "p.d3",
        encoder=DMEncoder.from_options("fast", iterations=3, real_per_class=8, embed_width=16),
        budget=6_000,
        progress=False,
    )
    ds = D3Dataset(tmp_path / "f.d3")
    c, h, w = tiny_real.image_shape
    codes = D3Reader(tmp_path / "f.d3").read_tensors("images")["images"]
    assert tuple(codes.shape[1:]) == (c, h // 2, w // 2)
    stored = dict(ds.meta["params"]["formation"])
    assert ds.images.shape == (len(codes), c, h, w) and stored.pop("kind") == kind.removesuffix("-variance")
    mask = stored.pop("mask", None)
    assert stored == {"factor": 2} and (mask is not None) == (kind == "dct-variance")
    assert mask is None or len(mask) == c
    # four times smaller codes: well over twice the images of the pixel archive in the same budget
    assert result.plan.images_per_class > 2 * pixels.plan.images_per_class
    assert (tmp_path / "f.d3").stat().st_size <= 6_000


def _with_formation(path, formation) -> bytes:
    reader = D3Reader(path)
    meta = reader.read_json("meta")
    meta["params"]["formation"] = formation
    return encode_archive([Section.json("meta", meta), Section.tensors("images", reader.read_tensors("images"))])


@pytest.mark.parametrize(
    "formation,message",
    [
        ({"kind": "wavelet", "factor": 2}, "kind"),
        ({"kind": "lowres", "factor": 3}, "must divide"),
        ({"kind": "lowres", "factor": 10**9}, "factor"),
        ({"kind": "dct", "factor": 2.0}, "must be an integer"),
        ({"kind": "dct"}, "kind and factor"),
        ("dct", "kind and factor"),
        ({"kind": "dct", "factor": 4}, "images have shape"),  # codes stored for factor 2
        ({"kind": "pixels", "factor": 2}, "needs a factor of 1"),
        ({"kind": "lowres", "factor": 2, "mask": ["ff" * 32]}, "belongs to a dct"),
        ({"kind": "dct", "factor": 2, "mask": "ff"}, "list of hex strings"),
        ({"kind": "dct", "factor": 2, "mask": [{"a": 1}]}, "list of hex strings"),
        ({"kind": "dct", "factor": 2, "mask": ["ff" * 8 + "00" * 24, "ff" * 8 + "00" * 24]}, "names 2 channels"),
        ({"kind": "dct", "factor": 2, "mask": ["ff" * 8 + "00" * 23]}, "hex digits"),
        ({"kind": "dct", "factor": 2, "mask": ["FF" * 8 + "00" * 24]}, "hex digits"),
        ({"kind": "dct", "factor": 2, "mask": ["ff" * 7 + "00" * 25]}, "exactly 64"),
        ({"kind": "dct", "factor": 2, "mask": None}, "list of hex strings"),
    ],
)
def test_a_bad_formation_in_an_archive_is_a_format_error(tiny_real, tmp_path, formation, message):
    encoder = DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8, formation="dct")
    compress(tiny_real, tmp_path / "f.d3", encoder=encoder, budget=4_000, progress=False)
    with pytest.raises(D3FormatError, match=message):
        D3Dataset(_with_formation(tmp_path / "f.d3", formation))


@pytest.mark.parametrize("kind", ["lowres", "dct", "dct-variance"])
def test_the_spec_alone_forms_the_same_images(tiny_real, tmp_path, kind):
    """tests/spec_reader.py, written from spec/FORMAT.md §5.5, decodes a formation archive as d3codec does."""
    import numpy as np
    import spec_reader

    encoder = DMEncoder.from_options("fast", iterations=2, real_per_class=4, embed_width=8, formation=kind)
    compress(tiny_real, tmp_path / "f.d3", encoder=encoder, budget=5_000, progress=False)
    expanded = spec_reader.read_archive((tmp_path / "f.d3").read_bytes(), None, 0)
    ds = D3Dataset(tmp_path / "f.d3")
    np.testing.assert_allclose(expanded["images"], ds.images.double().numpy(), atol=1e-5)
    assert (expanded["labels"] == ds.labels.numpy()).all()
