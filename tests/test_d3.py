"""D3 on tiny data: the budget rule, the stored decoder, sampling, soft labels, merging, subtasks."""

import json

import pytest
import torch

from d3codec import D3Dataset
from d3codec.data.real import RealData, TensorImages
from d3codec.encode.pipeline import base_meta, compress, plan_archive
from d3codec.errors import D3BudgetError, D3Error, D3FormatError
from d3codec.format.container import D3Reader, Section, encode_archive
from d3codec.format.weights import dequantise_state, quantise_state
from d3codec.methods import DatasetSpec
from d3codec.methods.d3 import (
    D3Config,
    D3Encoder,
    decoder_shapes,
    dequantise_priors,
    fit_decoder,
    pca_latents,
    quantise_priors,
    split_classes,
)
from d3codec.methods.d3.merge import merge_archives
from d3codec.nn.models import Decoder
from d3codec.nn.teacher import load_teacher, save_teacher, train_teacher

CPU = torch.device("cpu")


def tiny_encoder(**kw):
    options = dict(
        iterations=3,
        init_iterations=5,
        real_per_class=6,
        synthetic_per_class=4,
        embed_width=8,
        teacher_epochs=1.0,
        teacher_width=8,
    )
    options.update(kw)
    return D3Encoder.from_options("fast", **options)


def plan(encoder, real, budget):
    spec = DatasetSpec.of(real)
    return plan_archive(encoder, spec, budget, base_meta(spec, "d3", budget, None, 0, "2026-01-01T00:00:00Z"))


def renamed(real: RealData, prefix: str) -> RealData:
    """The same images under other class names (a disjoint set of classes)."""
    return RealData(
        real.name,
        [prefix + c for c in real.classes],
        real.image_shape,
        real.mean,
        real.std,
        real.train_targets,
        real.train,
        real.test,
        real.train_images,
    )


def test_plan_fills_the_budget_and_refuses_too_small_with_a_budget_that_works(tiny_real):
    enc = tiny_encoder()
    small, large = plan(enc, tiny_real, 12_000), plan(enc, tiny_real, 60_000)
    assert small.max_bytes <= 12_000 and large.max_bytes <= 60_000
    assert large.groups[0].priors_per_class > small.groups[0].priors_per_class
    assert large.groups[0].decoder_width >= small.groups[0].decoder_width
    # one prior more would not have fitted: the bound grows by the same step as with a fixed count
    p, w = large.groups[0].priors_per_class, large.groups[0].decoder_width
    fixed = lambda n: plan(tiny_encoder(priors_per_class=n, decoder_width=w), tiny_real, 10**6).max_bytes  # noqa: E731
    assert large.max_bytes + fixed(p + 1) - fixed(p) > 60_000
    with pytest.raises(D3BudgetError, match="priors per class need"):
        plan(tiny_encoder(priors_per_class=p + 2, decoder_width=w), tiny_real, 60_000)
    with pytest.raises(D3BudgetError) as e:
        plan(enc, tiny_real, 500)
    assert e.value.min_budget > 500 and str(e.value.min_budget) in str(e.value)
    assert plan(enc, tiny_real, e.value.min_budget).groups[0].priors_per_class == 1


def test_pca_latents_follow_the_principal_axes_and_pad_short_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen) @ torch.tensor([[3.0, 0, 0, 0], [0, 0.5, 0, 0]])  # (40, 4), 2 axes used
    z = pca_latents(x, 3, gen)
    assert z.shape == (40, 3) and abs(float(z.std()) - 1) < 1e-5
    # the first latent is the large axis (up to sign), the third is padding noise well below it
    corr = torch.corrcoef(torch.stack([z[:, 0], x[:, 0]]))[0, 1]
    assert abs(float(corr)) > 0.999 and float(z[:, 2].abs().max()) < 0.1 * float(z[:, 0].abs().max())
    assert pca_latents(torch.rand(2, 16), 8, gen).shape == (2, 8)  # fewer images than latent dimensions


def test_warm_start_fits_the_decoder_to_its_targets():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    targets = torch.rand(12, 1, 8, 8, generator=gen).round()  # (N, C, H, W) binary noise: nothing to guess
    decoder = Decoder(6, (1, 8, 8), 16)
    latents = torch.nn.Parameter(pca_latents(targets.view(12, -1), 6, gen))
    error = lambda: float(torch.nn.functional.mse_loss(decoder(latents), targets).detach())  # noqa: E731
    before = error()
    fit_decoder(decoder, latents, targets, D3Config(init_iterations=300, init_batch=12), gen, progress=False)
    after = error()
    assert after < 0.25 * before


def test_split_classes_is_contiguous_and_balanced():
    assert split_classes(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_classes(1000, 5)[1] == (200, 400)
    with pytest.raises(ValueError, match="between 1 and the number of classes"):
        split_classes(3, 4)


def test_int8_decoder_storage_is_close_and_shapes_are_checked():
    torch.manual_seed(0)
    dec = Decoder(16, (1, 28, 28), 8)
    state = dec.state_dict()
    shapes = decoder_shapes(16, (1, 28, 28), 8)
    assert shapes == {k: tuple(v.shape) for k, v in state.items()}
    stored = quantise_state(state, "g0.", "int8")
    assert stored["g0.fc.weight"].dtype == torch.int8 and stored["g0.fc.weight.scale"].dtype == torch.float16
    back = dequantise_state(stored, "g0.", shapes, "int8", "decoder")
    for k, v in state.items():  # per-channel int8: error at most half a step of that channel's scale
        step = v.flatten(1).abs().amax(1) / 127 if v.dim() >= 2 else v.abs().max() * 1e-3 + 1e-3
        err = (back[k] - v).flatten(1).abs().amax(1) if v.dim() >= 2 else (back[k] - v).abs().max()
        assert (err <= step * 0.51 + 1e-6).all(), k
    del stored["g0.out.bias"]
    with pytest.raises(D3FormatError, match="g0.out.bias"):
        dequantise_state(stored, "g0.", shapes, "int8", "decoder")


def test_int8_priors_are_close_to_the_float_ones_and_checked():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 5, 4, generator=gen) * torch.tensor([1.0, 0.1, 3.0, 0.5])  # (K, P, Z), scales per dim
    logvar = -4 + torch.randn(3, 5, 4, generator=gen)
    stored = quantise_priors(mean, logvar, "g0.", "int8")
    assert stored["g0.mean"].dtype == torch.int8 and stored["g0.mean.scale"].shape == (4,)
    mu, lv = dequantise_priors(stored, "g0.", (3, 5, 4), "int8")
    for back, value in ((mu, mean), (lv, logvar)):  # at most half a step of each latent dimension's scale
        step = value.abs().flatten(0, 1).amax(0) / 127  # (Z,)
        assert ((back - value).abs().flatten(0, 1).amax(0) <= 0.51 * step + 1e-6).all()
    stored["g0.logvar.scale"] = torch.ones(3, dtype=torch.float16)
    with pytest.raises(D3FormatError, match="g0.logvar"):
        dequantise_priors(stored, "g0.", (3, 5, 4), "int8")
    with pytest.raises(D3FormatError, match="must be float16, not int8"):  # int8 tensors under a float16 label
        dequantise_priors(stored, "g0.", (3, 5, 4), "float16")


def test_int8_priors_hold_more_per_class_in_the_same_bytes(tiny_real, tmp_path):
    half = plan(tiny_encoder(prior_dtype="float16"), tiny_real, 16_000).groups[0].priors_per_class
    out = tmp_path / "q.d3"
    result = compress(tiny_real, out, encoder=tiny_encoder(prior_dtype="int8"), budget=16_000, progress=False)
    assert out.stat().st_size == result.file_bytes <= 16_000
    p = result.plan.groups[0].priors_per_class
    assert p > half
    ds = D3Dataset(out, samples_per_class=4, seed=0)
    assert ds.meta["params"]["groups"][0]["prior_dtype"] == "int8" and ds.images.shape == (12, 1, 16, 16)
    assert D3Reader(out).read_tensors("priors")["g0.mean"].dtype == torch.int8


def test_more_priors_than_real_images_start_apart_and_are_stored_apart(tiny_real, tmp_path):
    out = tmp_path / "many.d3"  # 60 priors a class from 20 real images a class, barely fitted (as the rehearsal's)
    encoder = tiny_encoder(priors_per_class=60, iterations=0, init_iterations=1, init_batch=8)
    compress(tiny_real, out, encoder=encoder, budget=10**6, progress=False)
    with D3Reader(out) as reader:
        means = reader.read_tensors("priors")["g0.mean"]  # (K, P, Z) int8
    assert means.shape[1] == 60
    for c in range(3):  # without the jitter, 20 distinct rows a class: the repeats stayed equal through GLO
        assert len(torch.unique(means[c], dim=0)) > 50


def test_archives_without_a_prior_dtype_read_as_float16(tiny_real, tmp_path):
    out = tmp_path / "f.d3"
    compress(tiny_real, out, encoder=tiny_encoder(prior_dtype="float16"), budget=14_000, progress=False)

    def older(meta):  # written before prior_dtype existed
        for group in meta["params"]["groups"]:
            del group["prior_dtype"]

    a, b = D3Dataset(out, samples_per_class=3), D3Dataset(_rewrite(out, meta_change=older), samples_per_class=3)
    assert torch.equal(a.images, b.images)


def test_compress_samples_any_count_deterministically_with_soft_labels(tiny_real, tmp_path):
    out = tmp_path / "t.d3"
    result = compress(tiny_real, out, encoder=tiny_encoder(), budget=16_000, seed=0, progress=False)
    assert out.stat().st_size == result.file_bytes <= 16_000
    p = result.params["groups"][0]["priors_per_class"]  # what the file holds: the plan's, and what filled it
    assert p >= result.plan.groups[0].priors_per_class
    default = D3Dataset(out)
    assert len(default) == 3 * p and default.images.shape[1:] == (1, 16, 16)
    a, b = D3Dataset(out, samples_per_class=7, seed=1), D3Dataset(out, samples_per_class=7, seed=1)
    c = D3Dataset(out, samples_per_class=7, seed=2)
    assert len(a) == 21 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    assert a.labels.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    soft = a.soft_labels
    assert soft.shape == (21, 3) and torch.allclose(soft.sum(1), torch.ones(21), atol=2e-3)
    hard = D3Dataset(out, samples_per_class=2, targets="hard")
    assert hard.soft_labels is None and isinstance(hard[0][1], int)


def test_a_group_fills_the_room_its_priors_compression_left_with_priors_fitted_to_real_images(
    tiny_real, tmp_path, monkeypatch
):
    import d3codec.methods.d3.fill as fill
    import d3codec.methods.d3.group as encoder_module

    monkeypatch.setattr(encoder_module, "FILL_WORK_SHARE", 1e9)  # the room, not the work, bounds it here
    budget = 16_000
    filled = compress(tiny_real, tmp_path / "f.d3", encoder=tiny_encoder(), budget=budget, seed=0, progress=False)
    monkeypatch.setattr(fill, "FILL_MARGIN", 0.0)  # no room: the archive as planned
    planned = compress(tiny_real, tmp_path / "p.d3", encoder=tiny_encoder(), budget=budget, seed=0, progress=False)
    p, added = planned.params["groups"][0]["priors_per_class"], filled.params["groups"][0]["stats"]
    assert added["added_priors_per_class"] > 0 and "added_priors_per_class" not in planned.params["groups"][0]["stats"]
    assert filled.params["groups"][0]["priors_per_class"] == p + added["added_priors_per_class"]
    assert planned.file_bytes < 0.8 * budget and 0.88 * budget <= filled.file_bytes <= budget  # patterns compress well
    with D3Reader(tmp_path / "f.d3") as f, D3Reader(tmp_path / "p.d3") as q:
        for section in ("priors", "prior_labels"):
            new, old = f.read_tensors(section), q.read_tensors(section)
            for key in old:  # the planned priors stay as they were, int8 values, scales and labels
                assert torch.equal(new[key][:, :p] if new[key].dim() == 3 else new[key], old[key]), key
    ds = D3Dataset(tmp_path / "f.d3", samples_per_class=p + 3)
    assert torch.isfinite(ds.images).all() and torch.allclose(ds.soft_labels.sum(1), torch.ones(len(ds)), atol=2e-3)


def test_soft_labels_off_stores_no_label_section(tiny_real, tmp_path):
    out = tmp_path / "n.d3"
    compress(tiny_real, out, encoder=tiny_encoder(soft_labels=False), budget=16_000, progress=False)
    assert "prior_labels" not in D3Reader(out)
    assert D3Dataset(out).soft_labels is None
    with pytest.raises(ValueError, match="no soft labels"):
        D3Dataset(out, targets="soft")


def test_warm_start_only_writes_an_archive_without_a_final_loss(tiny_real, tmp_path):
    out = tmp_path / "w.d3"
    compress(tiny_real, out, encoder=tiny_encoder(iterations=0), budget=16_000, progress=False)
    stats = D3Dataset(out).meta["params"]["groups"][0]["stats"]
    assert "final_loss" not in stats and stats["distill_seconds"] >= 0


def test_soft_labels_are_a_stage_of_the_progress_and_their_seconds_count(tiny_real, tmp_path, capsys):
    """At ImageNet's plan, labelling the prior means is most of a subtask's time: it has its own bar, and the
    group's distill_seconds include it."""
    out = tmp_path / "s.d3"
    compress(tiny_real, out, encoder=tiny_encoder(), budget=16_000, progress=True)
    log = capsys.readouterr().err
    assert "D3 soft labels (4/4)" in log and "D3 matching (3/4)" in log
    stats = D3Dataset(out).meta["params"]["groups"][0]["stats"]
    assert 0 <= stats["label_seconds"] <= stats["distill_seconds"]


def test_label_means_fills_preallocated_rows_batch_by_batch_as_one_pass_would():
    from d3codec.data.real import Normalisation
    from d3codec.methods.d3.labels import label_means
    from d3codec.nn.teacher import untrained_teacher

    torch.manual_seed(0)
    decoder = Decoder(8, (1, 8, 8), 8).eval()
    teacher = untrained_teacher((1, 8, 8), [0, 1, 2, 3], width=4)
    norm = Normalisation([0.5], [0.25])
    means = torch.randn(23, 8)
    whole = teacher.probabilities(norm(decoder(means)), 2.0)  # (23, 4) in one pass
    (rows,) = label_means(decoder, teacher, means, norm, 2.0, None, rows=5, progress=False)
    values, indices = label_means(decoder, teacher, means, norm, 2.0, 2, rows=5, progress=False)
    assert torch.allclose(rows, whole, atol=1e-6)
    top = whole.topk(2, dim=-1)
    assert values.shape == indices.shape == (23, 2) and indices.dtype == torch.int64
    assert torch.equal(indices, top.indices) and torch.allclose(values, top.values, atol=1e-6)


def test_pixel_archives_refuse_sampling_options(tiny_real, tmp_path):
    from d3codec.methods.pixel import DMEncoder

    out = tmp_path / "p.d3"
    compress(
        tiny_real,
        out,
        encoder=DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8),
        budget=6_000,
        progress=False,
    )
    with pytest.raises(ValueError, match="samples per class applies to sampled archives"):
        D3Dataset(out, samples_per_class=3)


def test_merge_expands_to_the_union_of_its_parts(tiny_real, tmp_path):
    first, second = tmp_path / "a.d3", tmp_path / "b.d3"
    compress(tiny_real, first, encoder=tiny_encoder(), budget=14_000, seed=0, progress=False)
    compress(
        renamed(tiny_real, "x_"),
        second,
        encoder=tiny_encoder(subtasks=2, soft_labels=True),
        budget=20_000,
        seed=5,
        progress=False,
    )
    merged = tmp_path / "m.d3"
    result = merge_archives([first, second], merged)
    assert result.budget == 34_000 and merged.stat().st_size <= 34_000 and result.classes == 6
    whole = D3Dataset(merged, samples_per_class=4, seed=3)
    parts = [D3Dataset(p, samples_per_class=4, seed=3) for p in (first, second)]
    assert whole.classes == parts[0].classes + parts[1].classes
    assert torch.equal(whole.images, torch.cat([parts[0].images, parts[1].images]))
    assert whole.labels.tolist() == parts[0].labels.tolist() + [y + 3 for y in parts[1].labels.tolist()]
    # soft labels: each part's block in place, nothing across parts
    assert torch.equal(whole.soft_labels[:12, :3], parts[0].soft_labels) and whole.soft_labels[:12, 3:].abs().sum() == 0
    assert torch.equal(whole.soft_labels[12:, 3:], parts[1].soft_labels)


def test_merge_refuses_overlaps_other_shapes_and_pixel_archives(tiny_real, tmp_path):
    a = tmp_path / "a.d3"
    compress(tiny_real, a, encoder=tiny_encoder(), budget=14_000, progress=False)
    with pytest.raises(D3Error, match="class 'a' is in archives 1 and 2"):
        merge_archives([a, a], tmp_path / "m.d3")
    other = RealData(
        "tiny",
        ["p", "q", "r"],
        (1, 12, 12),
        tiny_real.mean,
        tiny_real.std,
        tiny_real.train_targets,
        TensorImages(tiny_real.train_images[:, :, :12, :12].contiguous(), tiny_real.train_targets),
        train_images=tiny_real.train_images[:, :, :12, :12].contiguous(),
    )
    b = tmp_path / "b.d3"
    compress(other, b, encoder=tiny_encoder(), budget=20_000, progress=False)
    with pytest.raises(D3Error, match="image_shape"):
        merge_archives([a, b], tmp_path / "m.d3")
    with pytest.raises(D3BudgetError):
        merge_archives([a], tmp_path / "m.d3", budget=100)
    assert not (tmp_path / "m.d3").exists()


def _rewrite(path, meta_change=None, tensors_change=None):
    """The archive at ``path`` re-encoded with its metadata or one section's tensors altered."""
    reader = D3Reader(path)
    meta = reader.read_json("meta")
    if meta_change:
        meta_change(meta)
    sections = [Section.json("meta", meta)]
    for info in reader.sections[1:]:
        tensors = reader.read_tensors(info.name)
        if tensors_change:
            tensors_change(info.name, tensors)
        sections.append(Section.tensors(info.name, tensors))
    return encode_archive(sections)


def test_hostile_d3_archives_raise_format_errors(tiny_real, tmp_path):
    out = tmp_path / "t.d3"
    compress(tiny_real, out, encoder=tiny_encoder(), budget=14_000, progress=False)

    def huge_latent(meta):
        meta["params"]["groups"][0]["latent_dim"] = 4000

    def gap(meta):
        meta["params"]["groups"][0]["classes"] = [1, 3]

    def nan_prior(name, tensors):  # int8 priors (the default): a non-finite scale
        if name == "priors":
            tensors["g0.mean.scale"][0] = float("inf")

    def drop_scale(name, tensors):
        if name == "priors":
            del tensors["g0.logvar.scale"]

    def negative_label(name, tensors):
        if name == "prior_labels":
            tensors["g0"][0, 0, 0] = -1

    def drop_weight(name, tensors):
        if name == "decoder":
            del tensors["g0.fc.weight"]

    for change in (
        dict(meta_change=huge_latent),
        dict(meta_change=gap),
        dict(tensors_change=nan_prior),
        dict(tensors_change=drop_scale),
        dict(tensors_change=negative_label),
        dict(tensors_change=drop_weight),
    ):
        with pytest.raises(D3FormatError):
            D3Dataset(_rewrite(out, **change))


def test_teacher_round_trips_through_safetensors(tiny_real, tmp_path):
    teacher, _ = train_teacher(tiny_real, [0, 1, 2], epochs=1, width=8)
    path = tmp_path / "teacher.safetensors"
    save_teacher(teacher, path, tiny_real.image_shape)
    loaded = load_teacher(path, tiny_real.image_shape, 3)
    x = torch.randn(4, 1, 16, 16)
    assert torch.allclose(loaded.probabilities(x), teacher.probabilities(x))
    assert loaded.restricted([2, 0]).probabilities(x).shape == (4, 2)
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(D3Error, match="safetensors"):
        load_teacher(tmp_path / "bad.safetensors", tiny_real.image_shape, 3)
    with pytest.raises(D3Error, match="outputs do not match"):
        load_teacher(path, tiny_real.image_shape, 2)


def test_a_given_teacher_replaces_training_one(tiny_real, tmp_path):
    teacher, _ = train_teacher(tiny_real, [0, 1, 2], epochs=1, width=8)
    enc = tiny_encoder(subtasks=3)
    enc.teacher = teacher
    out = tmp_path / "t.d3"
    compress(tiny_real, out, encoder=enc, budget=30_000, progress=False)
    groups = json.loads(json.dumps(D3Reader(out).read_json("meta")["params"]["groups"]))
    assert len(groups) == 3 and all("teacher_accuracy" not in g["stats"] for g in groups)
    # one class per group: every soft label is certain
    assert torch.allclose(D3Dataset(out).soft_labels.max(1).values, torch.ones(1))


def test_imagenet_layout_with_five_subtasks_reads_images_lazily(tmp_path):
    """The ImageNet path on a generated JPEG tree: five subtasks, images read from disk, never all held."""
    import numpy as np
    from PIL import Image

    from d3codec.data.real import ClassSampler
    from d3codec.data.sources import load_dataset

    rng = np.random.default_rng(0)
    for c in range(5):
        folder = tmp_path / "train" / f"n0000000{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 50, (40, 48, 3), dtype=np.uint8)
            pixels[:, c * 8 : (c + 1) * 8] = 230  # a class-specific bright band
            Image.fromarray(pixels).save(folder / f"n0000000{c}_{i}.JPEG", quality=90)
    real = load_dataset("imagenet", tmp_path, resolution=32)
    assert real.train_images is None and real.image_shape == (3, 32, 32)  # lazy: on disk

    sampler = ClassSampler(real, [1, 2], cache_per_class=4, generator=torch.Generator().manual_seed(0))
    held = sampler.real  # only the cached subset is in memory
    assert held.train_images.shape == (8, 3, 32, 32) and held.train_targets.tolist() == [1] * 4 + [2] * 4
    assert sampler.sample(0, 9, torch.Generator()).shape == (9, 3, 32, 32)

    out = tmp_path / "in.d3"
    result = compress(real, out, encoder=tiny_encoder(subtasks=5, real_cache_per_class=4), ipc=2, progress=False)
    assert result.budget == 2 * 5 * 3 * 32 * 32 * 4 and out.stat().st_size <= result.budget
    ds = D3Dataset(out, samples_per_class=3)
    assert len(ds) == 15 and ds.classes == [f"n0000000{c}" for c in range(5)]
    assert len(ds.meta["params"]["groups"]) == 5


def test_pca_latents_of_many_images_use_a_subset_and_bounded_batches():
    gen = torch.Generator().manual_seed(0)
    axis = torch.randn(1, 24)
    x = (0.5 + 0.2 * torch.randn(300, 1) * axis / axis.norm() + 0.001 * torch.rand(300, 24)).clamp(0, 1)
    u8 = (x * 255).round().to(torch.uint8)
    whole = pca_latents(u8, 4, torch.Generator().manual_seed(1))
    assert torch.equal(whole, pca_latents(u8.float() / 255, 4, torch.Generator().manual_seed(1)))  # uint8 = its pixels
    parts = pca_latents(u8, 4, gen, max_rows=64)  # axes from 64 random images, projections 64 rows at a time
    assert parts.shape == (300, 4) and torch.isfinite(parts).all()
    # the first latent is the same line, up to sign and scale, whichever images found the axis
    r = torch.corrcoef(torch.stack([whole[:, 0], parts[:, 0]]))[0, 1]
    assert abs(r) > 0.99
    # rows that repeat an image start near its projection (2 distinct images: 2 axes), each a little apart, so
    # that priors of one image do not stay equal (and compress to nothing)
    rows = torch.tensor([5, 7, 5, 5])
    repeated = pca_latents(torch.rand(10, 3), 6, gen, rows=rows)
    apart = (repeated[[2, 3]] - repeated[0]).abs()  # the repeats of image 5 against its first row
    assert (apart[:, :2] > 0).all() and apart.max() < 1.0 and not torch.equal(repeated[2], repeated[3])


def test_tapered_decoder_halves_its_channels_and_the_spec_reader_decodes_it(tiny_real, tmp_path):
    """A tapered decoder (spec §5.3) costs far fewer multiply-adds at full size; tests/spec_reader.py, written
    from the spec, expands its archive as d3codec does; large images get it by default."""
    import numpy as np
    import spec_reader

    from d3codec.format.limits import network_cost
    from d3codec.nn.models import decoder_stage_widths

    assert decoder_stage_widths("tapered", 256, 4) == [256, 128, 64, 32, 16]
    assert decoder_stage_widths("tapered", 8, 3) == [8, 4, 4, 4]
    cost = {
        arch: network_cost(lambda: Decoder(64, (3, 64, 64), 256, arch), lambda: (torch.zeros(1, 64),), "d").macs
        for arch in ("uniform", "tapered")
    }
    assert cost["tapered"] * 20 < cost["uniform"]  # ImageNet's 64 pixels: the full-size stage dominated

    out = tmp_path / "t.d3"
    compress(
        tiny_real,
        out,
        encoder=tiny_encoder(decoder_architecture="tapered", decoder_width=12),
        budget=40_000,
        progress=False,
    )
    group = D3Dataset(out).meta["params"]["groups"][0]
    assert group["decoder_architecture"] == "tapered" and group["decoder_width"] == 12
    ds = D3Dataset(out, samples_per_class=3)
    expanded = spec_reader.read_archive(out.read_bytes(), 3, 0)
    np.testing.assert_allclose(expanded["images"], ds.images.double().numpy(), atol=1e-5)
    spec = DatasetSpec("big", tuple("abc"), (3, 64, 64), (0.5,) * 3, (0.5,) * 3)
    meta = base_meta(spec, "d3", 10**7, None, 0, "2026-01-01T00:00:00Z")
    planned = tiny_encoder().plan(spec, 10**7, lambda params: {**meta, "params": params})
    assert all(g.decoder_architecture == "tapered" for g in planned.groups)


def test_top_k_soft_labels_keep_the_largest_and_spread_the_rest(tiny_real, tmp_path):
    """Top-k soft labels (spec §5.6): the k largest probabilities and their classes; a reader spreads the rest
    evenly; tests/spec_reader.py reads them as d3codec does; large groups get them by default."""
    import numpy as np
    import spec_reader

    from d3codec.errors import D3FormatError
    from d3codec.methods.d3.layout import dense_labels, stored_labels

    rows = torch.tensor([[[0.7, 0.2, 0.06, 0.04]]])  # (K_g=1, P=1, 4 classes)
    stored = stored_labels(rows, "g0", 2)
    assert stored["g0.indices"].dtype == torch.int16 and stored["g0.indices"].tolist() == [[[0, 1]]]
    dense = dense_labels(stored["g0.values"], stored["g0.indices"], 4, "prior_labels", "g0")
    assert torch.allclose(dense, torch.tensor([[[0.7, 0.2, 0.05, 0.05]]]), atol=1e-3)
    for values, indices in (
        (torch.tensor([[[0.5, 0.6]]]), torch.tensor([[[0, 1]]])),  # sums past 1
        (torch.tensor([[[0.5, 0.1]]]), torch.tensor([[[2, 2]]])),  # a class twice
        (torch.tensor([[[0.5, 0.1]]]), torch.tensor([[[0, 4]]])),
    ):  # a class outside
        with pytest.raises(D3FormatError):
            dense_labels(values.half(), indices.short(), 4, "prior_labels", "g0")

    out = tmp_path / "k.d3"
    compress(tiny_real, out, encoder=tiny_encoder(label_top_k=1), budget=40_000, progress=False)
    ds = D3Dataset(out, samples_per_class=3)
    assert ds.meta["params"]["groups"][0]["label_top_k"] == 1
    assert torch.allclose(ds.soft_labels.sum(1), torch.ones(9), atol=1e-3)
    top = ds.soft_labels.max(1).values
    rest = (1 - top) / 2  # the two other classes of the three share what the top one leaves
    assert torch.allclose(ds.soft_labels.sort(1).values[:, :2], rest.unsqueeze(1).expand(9, 2), atol=1e-3)
    expanded = spec_reader.read_archive(out.read_bytes(), 3, 0)
    np.testing.assert_allclose(expanded["soft_labels"], ds.soft_labels.double().numpy(), atol=1e-5)

    spec = DatasetSpec("big", tuple(f"c{i}" for i in range(40)), (1, 8, 8), (0.5,), (0.5,))
    meta = base_meta(spec, "d3", 10**6, None, 0, "2026-01-01T00:00:00Z")
    planned = tiny_encoder(subtasks=2).plan(spec, 10**6, lambda params: {**meta, "params": params})
    assert [g.label_top_k for g in planned.groups] == [None, None]  # groups of 20: whole rows
    planned = tiny_encoder().plan(spec, 10**6, lambda params: {**meta, "params": params})
    assert planned.groups[0].label_top_k == 10  # a group of 40: its top 10


def test_an_optimistic_plan_is_trimmed_prior_by_prior_to_fit(tiny_real, tmp_path, monkeypatch):
    import d3codec.methods.d3.planning as d3_encoder

    honest = plan(tiny_encoder(), tiny_real, 16_000)
    raw = plan(tiny_encoder(fill="raw"), tiny_real, 16_000)
    assert honest.groups[0].priors_per_class > raw.groups[0].priors_per_class  # priors and labels compress
    assert max(honest.max_bytes, raw.max_bytes) <= 16_000  # the guaranteed count's bound, either way

    monkeypatch.setattr(d3_encoder, "PRIOR_STORED_RATIO", 0.1)  # a wildly optimistic estimate
    out = tmp_path / "t.d3"
    result = compress(tiny_real, out, encoder=tiny_encoder(), budget=16_000, progress=False)
    group = result.params["groups"][0]
    planned = result.plan.groups[0].priors_per_class
    assert group["stats"]["planned_priors_per_class"] == planned > group["priors_per_class"] >= 1
    assert 16_000 * 0.9 < out.stat().st_size <= 16_000
    ds = D3Dataset(out)  # reads back with the kept count: one sample per prior
    assert len(ds) == 3 * group["priors_per_class"] and ds.meta["params"]["groups"][0] == group


def test_trimming_takes_priors_from_the_fullest_groups_and_slices_every_prior_tensor():
    from d3codec.methods.d3.layout import first_priors, trimmed_priors

    assert trimmed_priors([5, 5], [2, 3], 4) == [4, 4]  # 3 from the last group, then 2 from the first
    assert trimmed_priors([6, 4], [2, 3], 3) == [4, 4]
    assert trimmed_priors([1, 1], [2, 3], 10) == [1, 1]
    part = {
        "priors": {"g0.mean": torch.zeros(2, 5, 3, dtype=torch.int8), "g0.mean.scale": torch.ones(3)},
        "decoder": {"g0.w": torch.ones(4, 4)},
        "prior_labels": {"g0.values": torch.zeros(2, 5, 1)},
    }
    kept = first_priors(part, 2)
    assert kept["priors"]["g0.mean"].shape == (2, 2, 3) and kept["priors"]["g0.mean.scale"].shape == (3,)
    assert kept["prior_labels"]["g0.values"].shape == (2, 2, 1) and kept["decoder"] is part["decoder"]


def test_a_teacher_in_micro_batches_learns_what_it_learns_in_whole_batches(tiny_real, monkeypatch):
    import d3codec.nn.teacher as teacher_module
    from d3codec.nn.teacher import train_teacher

    whole, acc = train_teacher(tiny_real, [0, 1, 2], epochs=2.0, width=8, batch_size=16, seed=0)
    monkeypatch.setattr(teacher_module, "activation_memory", lambda device: 1)  # one image a forward pass
    micro, micro_acc = train_teacher(tiny_real, [0, 1, 2], epochs=2.0, width=8, batch_size=16, seed=0)
    assert acc == micro_acc
    for (name, a), b in zip(whole.net.state_dict().items(), micro.net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name  # the same gradients, summed in another order


def test_the_fill_adds_at_most_its_share_of_the_groups_work(tiny_real, tmp_path, monkeypatch):
    import d3codec.methods.d3.group as encoder_module
    from d3codec.methods.d3.config import PRESETS
    from d3codec.methods.d3.group import fill_allowance
    from d3codec.methods.d3.layout import GroupPlan

    def group(classes):
        return GroupPlan(0, classes, 64, 807, 256, "tapered")

    assert fill_allowance(PRESETS["rehearsal"], group(200)) == 0  # 2 matching iterations: nothing to spend
    fast = fill_allowance(PRESETS["fast"], group(10))  # 300 iterations of 32 samples, 2 000 warm-start steps of 128
    assert fast == int(0.5 * (300 * 10 * 32 + 2000 * 128) / (20 * 10))
    monkeypatch.setattr(encoder_module, "FILL_WORK_SHARE", 1e9)
    monkeypatch.setattr(encoder_module, "fill_allowance", lambda cfg, g: 1)  # the room holds more (test above)
    one = compress(tiny_real, tmp_path / "one.d3", encoder=tiny_encoder(), budget=16_000, seed=0, progress=False)
    assert one.params["groups"][0]["stats"]["added_priors_per_class"] == 1
