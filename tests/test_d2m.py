"""D2M on tiny data: the budget rule, the generator section, any-IPC sampling, resumable pre-training."""

import pytest
import torch

from d3codec import D3Dataset
from d3codec.encode.checkpoint import Checkpoint
from d3codec.encode.pipeline import base_meta, compress, plan_archive
from d3codec.errors import D3BudgetError, D3Error, D3FormatError
from d3codec.format import noise
from d3codec.format.container import D3Reader, Section, encode_archive
from d3codec.methods import DatasetSpec, d2m
from d3codec.methods.d2m import ConditionalGenerator, D2MEncoder, load_generator, save_generator
from d3codec.nn.losses import prediction_matching_loss
from d3codec.nn.models import ConvNet
from d3codec.nn.teacher import Teacher

CPU = torch.device("cpu")


def tiny_encoder(checkpoint=None, generator=None, **kw):
    options = dict(
        pretrain_iterations=6,
        pretrain_batch=8,
        disc_width=4,
        checkpoint_every=2,
        iterations=2,
        synthetic_per_class=4,
        real_per_class=6,
        embed_width=8,
        teacher_epochs=1.0,
        teacher_width=8,
        noise_dim=4,
        embed_dim=4,
    )
    options.update(kw)
    return D2MEncoder.from_options("fast", None, generator, checkpoint, **options)


def plan(encoder, real, budget, ipc=None):
    spec = DatasetSpec.of(real)
    return plan_archive(encoder, spec, budget, base_meta(spec, "d2m", budget, ipc, 0, "2026-01-01T00:00:00Z"))


def test_plan_takes_the_widest_generator_that_fits_and_refuses_with_a_budget_that_works(tiny_real):
    enc = tiny_encoder()
    small, large = plan(enc, tiny_real, 8_000), plan(enc, tiny_real, 40_000)
    assert small.max_bytes <= 8_000 and large.max_bytes <= 40_000
    assert large.generator_width > small.generator_width
    wider = d2m.GENERATOR_WIDTHS[d2m.GENERATOR_WIDTHS.index(large.generator_width) + 1]
    assert plan(tiny_encoder(generator_width=wider), tiny_real, 10**6).max_bytes > 40_000
    with pytest.raises(D3BudgetError) as e:
        plan(enc, tiny_real, 800)
    assert e.value.min_budget > 800 and str(e.value.min_budget) in str(e.value)
    assert plan(enc, tiny_real, e.value.min_budget).generator_width == d2m.GENERATOR_WIDTHS[0]
    assert plan(enc, tiny_real, 40_000, ipc=25).samples_per_class == 25
    assert plan(enc, tiny_real, 40_000, ipc=1).samples_per_class == 10  # at least 10 by default


def test_archive_holds_only_the_generator_and_draws_any_count_deterministically(tiny_real, tmp_path):
    out = tmp_path / "g.d3"
    result = compress(tiny_real, out, encoder=tiny_encoder(), budget=12_000, progress=False)
    assert out.stat().st_size == result.file_bytes <= 12_000
    with D3Reader(out) as r:
        assert [s.name for s in r.sections] == ["meta", "generator"]
        stored = r.read_tensors("generator")
    assert stored["fc.weight"].dtype == torch.int8 and stored["embedding.weight"].shape == (3, 4)
    meta = D3Dataset(out).meta
    assert meta["params"]["stats"]["pretrain_seconds"] > 0 and "finetune_seconds" in meta["params"]["stats"]

    a = D3Dataset(out, samples_per_class=7, seed=3)
    assert len(a) == 21 and a.images.shape == (21, 1, 16, 16) and a.soft_labels is None
    assert a.labels.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, D3Dataset(out, samples_per_class=7, seed=3).images)
    assert not torch.equal(a.images, D3Dataset(out, samples_per_class=7, seed=4).images)
    assert len(D3Dataset(out, samples_per_class=1)) == 3
    assert len(D3Dataset(out)) == 3 * meta["params"]["samples_per_class"]
    fresh, labels, _ = a.draw(2, seed=9)
    assert fresh.shape == (6, 1, 16, 16) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(a.images, D3Dataset(out, samples_per_class=7, seed=3).images)  # draw leaves them be


def test_soft_labels_store_the_teacher_in_the_budget_and_label_every_draw(tiny_real, tmp_path):
    hard, soft = plan(tiny_encoder(), tiny_real, 26_000), plan(tiny_encoder(soft_labels=True), tiny_real, 26_000)
    assert soft.teacher_width == 8 and hard.teacher_width is None
    assert soft.generator_width < hard.generator_width  # the teacher's bytes come out of the generator's
    out = tmp_path / "s.d3"
    result = compress(
        tiny_real, out, encoder=tiny_encoder(soft_labels=True, label_temperature=2.0), budget=26_000, progress=False
    )
    assert out.stat().st_size == result.file_bytes <= soft.max_bytes <= 26_000
    with D3Reader(out) as r:
        assert [(s.name, s.critical) for s in r.sections] == [("meta", True), ("generator", True), ("teacher", False)]
        stored = r.read_tensors("teacher")
    assert stored["classifier.weight"].dtype == torch.int8 and stored["classifier.weight"].shape[0] == 3

    ds = D3Dataset(out, samples_per_class=5, seed=2)
    assert ds.meta["params"]["teacher_width"] == 8 and ds.meta["params"]["label_temperature"] == 2.0
    assert ds.soft_labels.shape == (15, 3) and ds.soft_labels.dtype == torch.float32
    teacher = ConvNet(1, 3, 16, width=8)  # the stored teacher, dequantised by hand: what the labels must be
    teacher.load_state_dict(
        {
            n: stored[n].float() * stored[f"{n}.scale"].float().view(-1, *[1] * (v.dim() - 1))
            if v.dim() >= 2
            else stored[n].float()
            for n, v in teacher.state_dict().items()
        }
    )
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(teacher((ds.images - mean) / std) / 2.0, dim=1)
    assert torch.allclose(ds.soft_labels, expected, atol=1e-5)
    # the teacher is the archive's labeller (spec/FORMAT.md §5.8's first case): d3 eval labels online with it
    assert ds.labeller is not None and torch.allclose(ds.labeller(ds.images), expected, atol=1e-5)
    images, labels, fresh = ds.draw(4, seed=7)  # fresh draws are labelled too
    assert fresh.shape == (12, 3) and torch.allclose(fresh.sum(1), torch.ones(12))
    assert D3Dataset(out, targets="hard").soft_labels is None and isinstance(ds[0][1], torch.Tensor)


def test_soft_labels_that_do_not_fit_are_refused_naming_the_fix(tiny_real):
    with pytest.raises(D3BudgetError, match="turn `soft_labels` off") as e:
        plan(tiny_encoder(soft_labels=True, teacher_width=64, generator_width=4), tiny_real, 20_000)
    assert e.value.min_budget > 20_000
    assert (
        plan(
            tiny_encoder(soft_labels=True, teacher_width=64, generator_width=4), tiny_real, e.value.min_budget
        ).teacher_width
        == 64
    )


def test_a_given_teacher_is_stored_only_if_it_labels_every_class_in_order(tiny_real):
    c, h = tiny_real.image_shape[0], tiny_real.image_shape[1]
    ordered = Teacher(ConvNet(c, 3, h, width=6), [0, 1, 2], [0, 1, 2])
    enc = D2MEncoder.from_options("fast", ordered, soft_labels=True, noise_dim=4, embed_dim=4)
    assert plan(enc, tiny_real, 30_000).teacher_width == 6
    shuffled = Teacher(ordered.net, [0, 1, 2], [2, 0, 1])
    with pytest.raises(D3Error, match="turn `soft_labels` off"):
        plan(D2MEncoder.from_options("fast", shuffled, soft_labels=True, noise_dim=4, embed_dim=4), tiny_real, 30_000)


@pytest.mark.parametrize("pretraining", ["gan", "vae"])
def test_pretraining_resumes_after_a_kill_and_ends_as_an_uninterrupted_run(
    tiny_real, tmp_path, monkeypatch, pretraining
):
    enc_plan = plan(tiny_encoder(), tiny_real, 12_000)
    normalise = lambda x: (x - 0.3) / 0.35  # noqa: E731

    def pretrained(checkpoint):
        torch.manual_seed(0)  # as distill() seeds before building the generator
        g = d2m.build_generator(enc_plan, 3, tiny_real.image_shape)
        tiny_encoder(checkpoint, pretraining=pretraining).pretrain(
            g, tiny_real, enc_plan, normalise, device=CPU, seed=0, progress=False
        )
        return g.state_dict()

    uninterrupted = pretrained(None)

    class Killed(Exception):
        pass

    saves = []
    real_save = Checkpoint.save

    def save_then_die(self, iteration, *args, **kw):
        real_save(self, iteration, *args, **kw)
        saves.append(iteration)
        if len(saves) == 2:  # killed right after the checkpoint at iteration 4 of 6
            raise Killed

    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        pretrained(ckpt)
    assert saves == [2, 4]
    monkeypatch.setattr(Checkpoint, "save", real_save)
    torch.manual_seed(1234)  # the resumed process starts with other random state
    resumed = pretrained(ckpt)
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)

    # a checkpoint of another run (another seed or pre-training) is refused with the fix, not silently reused
    g = d2m.build_generator(enc_plan, 3, tiny_real.image_shape)
    with pytest.raises(D3Error, match="delete it"):
        tiny_encoder(ckpt, pretraining=pretraining).pretrain(
            g, tiny_real, enc_plan, normalise, device=CPU, seed=1, progress=False
        )
    other = "vae" if pretraining == "gan" else "gan"
    with pytest.raises(D3Error, match="delete it"):
        tiny_encoder(ckpt, pretraining=other).pretrain(
            g, tiny_real, enc_plan, normalise, device=CPU, seed=0, progress=False
        )
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(D3Error, match="not readable"):
        tiny_encoder(tmp_path / "junk.ckpt").pretrain(
            g, tiny_real, enc_plan, normalise, device=CPU, seed=0, progress=False
        )


def test_vae_pretraining_learns_to_reconstruct(tiny_real):
    enc = tiny_encoder(
        pretraining="vae", pretrain_iterations=150, pretrain_batch=16, lr_pretrain=3e-3, disc_width=8, kl_weight=0.1
    )
    enc_plan = plan(enc, tiny_real, 12_000)
    normalise = lambda x: (x - 0.3) / 0.35  # noqa: E731
    torch.manual_seed(0)
    g = d2m.build_generator(enc_plan, 3, tiny_real.image_shape)
    x = tiny_real.images_at(torch.arange(24))
    noise = torch.zeros(24, enc_plan.noise_dim)

    def error():  # how far the class's generated image at z = 0 is from real images of the class
        with torch.no_grad():
            return ((g(noise, tiny_real.train_targets[:24]) - x) ** 2).mean().item()

    before = error()
    enc.pretrain(g, tiny_real, enc_plan, normalise, device=CPU, seed=0, progress=False)
    assert error() < 0.3 * before


def test_a_given_generator_is_fine_tuned_without_pretraining(tiny_real, tmp_path):
    g = ConditionalGenerator(3, 6, 5, 12, (1, 16, 16), "upconv-v1")  # not the default: the file names it
    save_generator(tmp_path / "g.safetensors", g)
    given = load_generator(tmp_path / "g.safetensors", 3, (1, 16, 16))
    assert (given.architecture, given.noise_dim, given.embed_dim, given.width) == ("upconv-v1", 6, 5, 12)
    enc = tiny_encoder(generator=given, iterations=0)
    out = tmp_path / "f.d3"
    compress(tiny_real, out, encoder=enc, budget=20_000, progress=False)
    params = D3Dataset(out).meta["params"]
    assert (params["architecture"], params["noise_dim"], params["embed_dim"], params["generator_width"]) == (
        "upconv-v1",
        6,
        5,
        12,
    )
    with D3Reader(out) as r:  # no fine-tuning: the stored weights are the given ones, int8-rounded
        fc = r.read_tensors("generator")
    scale = fc["fc.weight.scale"].float().view(-1, 1)
    assert torch.allclose(fc["fc.weight"].float() * scale, g.fc.weight, atol=float(scale.max()) / 2 + 1e-6)
    # a pre-training checkpoint does not name its architecture: the shapes decide
    Checkpoint(tmp_path / "c.ckpt", "d2m-pretrain", "f").save(1, {}, {}, torch.Generator(), {"generator": g})
    assert load_generator(tmp_path / "c.ckpt", 3, (1, 16, 16)).architecture == "upconv-v1"
    with pytest.raises(D3Error, match="4 classes"):
        load_generator(tmp_path / "g.safetensors", 4, (1, 16, 16))
    with pytest.raises(D3Error, match="do not fit"):
        load_generator(tmp_path / "g.safetensors", 3, (1, 32, 32))
    with pytest.raises(D3BudgetError, match="the `generator` needs"):
        plan(enc, tiny_real, 3_000)


def test_prediction_matching_is_zero_for_equal_class_means_and_grows_with_the_gap():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert float(prediction_matching_loss(a, a.flip(0))) == pytest.approx(0, abs=1e-6)  # same mean, other order
    near, far = torch.tensor([[1.0, 1.0, 0.5]]), torch.tensor([[0.0, 0.0, 8.0]])
    assert 0 < float(prediction_matching_loss(a, near)) < float(prediction_matching_loss(a, far))
    # τ² scaling: at large τ the loss tends to a finite limit instead of vanishing
    assert float(prediction_matching_loss(a, far, 50.0)) > 0.1 * float(prediction_matching_loss(a, far, 25.0))


def archive_with(tensors, params, minor=1):
    meta = {
        "format": "d3",
        "method": "d2m",
        "dataset": {"name": "t", "classes": ["a", "b"], "image_shape": [1, 8, 8], "mean": [0.5], "std": [0.5]},
        "params": params,
    }
    return encode_archive([Section.json("meta", meta), Section.tensors("generator", tensors)], minor=minor)


def good_params():
    return {
        "architecture": "upconv-v2",
        "noise_dim": 3,
        "embed_dim": 2,
        "generator_width": 8,
        "weight_dtype": "float16",
        "samples_per_class": 4,
    }


def good_tensors(architecture="upconv-v2"):
    g = ConditionalGenerator(2, 3, 2, 8, (1, 8, 8), architecture)
    return {k: v.detach().half().contiguous() for k, v in g.state_dict().items()}


@pytest.mark.parametrize("architecture", list(d2m.GENERATORS))
def test_every_registered_architecture_expands_to_its_generators_images(architecture):
    tensors = good_tensors(architecture)
    g = ConditionalGenerator(2, 3, 2, 8, (1, 8, 8), architecture)
    g.load_state_dict({k: v.float() for k, v in tensors.items()})
    params = {**good_params(), "architecture": architecture}
    # format 1.1: the counter-based noise of spec/FORMAT.md §5.4; 1.0: torch's generator, as before
    noises = {
        1: torch.from_numpy(noise.normal(3, noise.D2M_NOISE, (2, 5, 3))).view(10, 3),
        0: torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(3)).view(10, 3),
    }
    for minor, z in noises.items():
        ds = D3Dataset(archive_with(tensors, params, minor), samples_per_class=5, seed=3)
        with torch.no_grad():
            expected = g(z, torch.arange(2).repeat_interleave(5))
        assert torch.allclose(ds.images, expected, atol=1e-6)
    # 1.1: the first samples of a larger draw are the samples of a smaller one
    larger = D3Dataset(archive_with(tensors, params), samples_per_class=7, seed=3).images.view(2, 7, 1, 8, 8)
    assert torch.allclose(
        larger[:, :5].reshape(10, 1, 8, 8),
        D3Dataset(archive_with(tensors, params), samples_per_class=5, seed=3).images,
        atol=1e-6,
    )
    other = next(a for a in d2m.GENERATORS if a != architecture)  # the name decides the layers
    with pytest.raises(D3FormatError):
        D3Dataset(archive_with(tensors, {**good_params(), "architecture": other}))


@pytest.mark.parametrize(
    "change",
    [
        lambda p, t: p.update(architecture="os.system"),
        lambda p, t: p.update(generator_width=10**9),
        lambda p, t: p.update(generator_width=4096),  # allowed by the metadata check; the tensors do not match
        lambda p, t: p.update(noise_dim="3; rm"),
        lambda p, t: p.pop("samples_per_class"),
        lambda p, t: t.update({"fc.weight": torch.zeros(5, 5, dtype=torch.float16)}),
        lambda p, t: t.pop("embedding.weight"),
        lambda p, t: t.update({"out.bias": torch.zeros(1, dtype=torch.int32)}),
    ],
)
def test_hostile_d2m_archives_raise_d3formaterror(change):
    params, tensors = good_params(), good_tensors()
    assert len(D3Dataset(archive_with(tensors, params))) == 8
    change(params, tensors)
    with pytest.raises(D3FormatError):
        D3Dataset(archive_with(tensors, params))


def teacher_tensors(width=4):
    net = ConvNet(1, 2, 8, width=width)
    return {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}


def archive_with_teacher(tensors, params, teacher, image_shape=(1, 8, 8)):
    meta = {
        "format": "d3",
        "method": "d2m",
        "dataset": {"name": "t", "classes": ["a", "b"], "image_shape": list(image_shape), "mean": [0.5], "std": [0.5]},
        "params": params,
    }
    sections = [Section.json("meta", meta), Section.tensors("generator", tensors)]
    return encode_archive(sections + ([Section.tensors("teacher", teacher, critical=False)] if teacher else []))


@pytest.mark.parametrize(
    "change",
    [
        lambda p, t: [p.pop("teacher_width"), p.pop("label_temperature")],  # a section the metadata does not declare
        lambda p, t: p.pop("label_temperature"),
        lambda p, t: t.clear(),  # declared, but no section
        lambda p, t: p.update(teacher_width=8),  # the tensors are of width 4
        lambda p, t: p.update(teacher_width=True),
        lambda p, t: p.update(teacher_width=10**9),
        lambda p, t: p.update(label_temperature=0),
        lambda p, t: p.update(label_temperature="1"),
        lambda p, t: t.update({"classifier.weight": torch.zeros(2, 3, dtype=torch.float16)}),
        lambda p, t: t.update({"features.0.bias": torch.zeros(4, dtype=torch.int64)}),
        "wide images",  # a teacher whose tensors fit an 8×8 ConvNet-3, for 8×16 images
    ],
)
def test_hostile_d2m_teachers_raise_d3formaterror(change):
    params = {**good_params(), "teacher_width": 4, "label_temperature": 1.0}
    teacher = teacher_tensors()
    ds = D3Dataset(archive_with_teacher(good_tensors(), params, teacher))
    assert ds.soft_labels.shape == (8, 2)
    if change == "wide images":
        g = ConditionalGenerator(2, 3, 2, 8, (1, 8, 16))
        data = archive_with_teacher(
            {k: v.detach().half() for k, v in g.state_dict().items()}, params, teacher, image_shape=[1, 8, 16]
        )
    else:
        change(params, teacher)
        data = archive_with_teacher(good_tensors(), params, teacher)
    with pytest.raises(D3FormatError):
        D3Dataset(data)


def test_sample_counts_are_bounded():
    with pytest.raises(ValueError, match="max_bytes"):
        D3Dataset(archive_with(good_tensors(), good_params()), samples_per_class=10**8)
