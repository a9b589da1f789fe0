"""DM pixel distillation on tiny data: it learns, it is reproducible, it stores what it planned."""

import torch

from d3codec import D3Dataset
from d3codec.encode.pipeline import base_meta, compress
from d3codec.format.container import D3Reader, encode_archive
from d3codec.methods import DatasetSpec
from d3codec.methods.pixel import DMEncoder


def tiny_encoder(iterations=15, **kw):
    return DMEncoder.from_options("fast", iterations=iterations, real_per_class=8, embed_width=16, **kw)


def _plan(encoder, real, budget):
    spec = DatasetSpec.of(real)
    meta = base_meta(spec, "pixel", budget, None, 0, "2026-01-01T00:00:00Z")
    return encoder.plan(spec, budget, lambda m: {**meta, "params": m})


def _images(encoded) -> torch.Tensor:
    return D3Reader(encode_archive(encoded.sections)).read_tensors("images")["images"]


def test_dm_moves_pixels_and_lowers_the_matching_loss(tiny_real):
    long = tiny_encoder(iterations=40, storage_dtype="float32", images_per_class=2)
    short = tiny_encoder(iterations=1, storage_dtype="float32", images_per_class=2)
    plan = _plan(long, tiny_real, 100_000)
    trained = long.distill(tiny_real, plan, device=torch.device("cpu"), seed=0, progress=False)
    start = short.distill(tiny_real, plan, device=torch.device("cpu"), seed=0, progress=False)
    assert trained.stats["final_loss"] < start.stats["final_loss"]
    # both start from the same real images (same seed): the difference is what DM learned
    assert (_images(trained) - _images(start)).abs().max() > 0.01


def test_same_seed_same_images_other_seed_other_images(tiny_real, tmp_path):
    paths = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        compress(tiny_real, tmp_path / f"{name}.d3", encoder=tiny_encoder(), budget=6_000, seed=seed, progress=False)
        paths.append(D3Dataset(tmp_path / f"{name}.d3").images)
    assert torch.equal(paths[0], paths[1])
    assert not torch.equal(paths[0], paths[2])


def test_archive_holds_the_planned_images_with_labels_in_class_order(tiny_real, tmp_path):
    result = compress(tiny_real, tmp_path / "p.d3", encoder=tiny_encoder(iterations=3), budget=5_000, progress=False)
    ds = D3Dataset(tmp_path / "p.d3")
    n = ds.meta["params"]["images_per_class"]  # what was kept of the plan: single images trimmed to fit
    counts = ds.labels.bincount().tolist()
    assert result.plan.images_per_class >= n >= 2 and len(ds) == sum(counts) == ds.meta["params"].get("images", 3 * n)
    assert ds.labels.tolist() == sorted(ds.labels.tolist()) and max(counts) == n and min(counts) >= n - 1
    assert counts == sorted(counts, reverse=True)  # the last classes lose their last image first
    assert ds.meta["params"]["objective"] == "dm"
    assert -0.5 < float(ds.images.min()) and float(ds.images.max()) < 1.5


def test_uint8_storage_error_is_within_half_a_step(tiny_real):
    from d3codec.format.storage import decode_images, encode_images

    images = torch.rand(6, 1, 16, 16) * 1.4 - 0.2
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    decoded, got_labels = decode_images(encode_images(images, labels, 3, "uint8"), 3, (1, 16, 16))
    step = (images.max() - images.min()) / 255
    assert torch.equal(got_labels, labels)
    assert (decoded - images).abs().max() <= step / 2 + 1e-6
