"""BPTT dataset distillation (Wang et al. 2018) on tiny data: its gradient, its schedule, its budget."""

import pytest
import torch
import torch.nn.functional as F

from d3codec import D3Dataset
from d3codec.encode.pipeline import compress
from d3codec.encode.seeds import stream_seed
from d3codec.errors import D3BudgetError, D3FormatError
from d3codec.evaluation import students as evaluate
from d3codec.format.container import D3Reader, Section, encode_archive
from d3codec.methods.pixel import BPTTEncoder, unrolled_gradients
from d3codec.nn.models import build_model
from d3codec.nn.schedule import gd_step, init_parameters, step_batches


def tiny_bptt(**kw):
    options = dict(iterations=60, real_per_class=8, lr_decay_every=None, initial_step_size=0.1)
    return BPTTEncoder.from_options("fast", **{**options, **kw})


@pytest.mark.parametrize("network", ["lenet", "convnet3"])
def test_unrolled_gradients_equal_autograd_through_the_whole_unroll(network):
    torch.manual_seed(0)
    net = build_model(network, 1, 3, 16, width=8)
    theta0 = {k: v.detach() for k, v in net.named_parameters()}
    steps, epochs = 2, 2
    images = torch.randn(steps, 6, 1, 16, 16)
    labels = torch.arange(3).repeat_interleave(2)
    raw = torch.randn(steps * epochs) * 0.3 - 2
    x_real, y_real = torch.randn(12, 1, 16, 16), torch.randint(0, 3, (12,))
    loss, d_images, d_raw = unrolled_gradients(net, theta0, images, labels, raw, epochs, x_real, y_real)

    # reference: one autograd graph through all four steps
    x, rho = images.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    params = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
    for t in range(steps * epochs):
        params = gd_step(net, params, x[t % steps], labels, F.softplus(rho)[t], create_graph=True)
    reference = F.cross_entropy(torch.func.functional_call(net, params, (x_real,)), y_real)
    want_images, want_raw = torch.autograd.grad(reference, [x, rho])
    assert loss == pytest.approx(reference.item(), rel=1e-6)
    assert want_images.abs().max() > 1e-5 and want_raw.abs().max() > 1e-5  # a gradient worth comparing
    torch.testing.assert_close(d_images, want_images, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(d_raw, want_raw, rtol=1e-4, atol=1e-7)


def test_step_sizes_are_learned_and_replaying_the_stored_schedule_reproduces_the_end_accuracy(tiny_real, tmp_path):
    out = tmp_path / "fixed.d3"
    result = compress(
        tiny_real, out, encoder=tiny_bptt(images_per_class=2, inner_epochs=2), budget=200_000, progress=False
    )
    ds = D3Dataset(out)
    schedule = ds.schedule
    assert (schedule.network, schedule.init, schedule.steps, schedule.epochs) == ("lenet", "fixed", 2, 2)
    assert schedule.lrs.shape == (4,) and (schedule.lrs - 0.02).abs().min() > 1e-3  # moved from the start
    assert len(set(schedule.lrs.tolist())) == 4  # each step learns its own size

    # θ₀ is the network's initialisation from the run's "bptt" stream (d3codec.encode.seeds), rounded to float16,
    # as stored
    drawn = init_parameters("lenet", tiny_real.image_shape, 3, stream_seed(0, "bptt"))
    assert set(schedule.theta0) == set(drawn)
    assert all(torch.equal(schedule.theta0[k], drawn[k].half().float()) for k in drawn)

    test_x, test_y = evaluate.test_split(tiny_real)
    replayed = evaluate.test_accuracy(
        schedule.replay(ds.images, ds.labels, 3, ds.mean, ds.std), test_x, test_y, ds.mean, ds.std, torch.device("cpu")
    )
    assert replayed == result.stats["end_test_accuracy"]
    assert replayed > 0.6  # the tiny classes are separable: 60 iterations of BPTT find it (chance is 1/3)


def test_random_init_stores_no_theta0_and_works_from_unseen_initialisations(tiny_real, tmp_path):
    fixed, random = tmp_path / "f.d3", tmp_path / "r.d3"
    compress(tiny_real, fixed, encoder=tiny_bptt(iterations=2, images_per_class=1), budget=200_000, progress=False)
    result = compress(
        tiny_real, random, encoder=tiny_bptt(images_per_class=1, init="random"), budget=200_000, progress=False
    )
    ds = D3Dataset(random)
    assert ds.schedule.init == "random" and ds.schedule.theta0 is None
    # θ₀ of LeNet (15 626 parameters at 16×16) as float16 is the difference in size
    assert fixed.stat().st_size - random.stat().st_size > 15_626 * 2 * 0.8
    test_x, test_y = evaluate.test_split(tiny_real)
    students = [ds.schedule.replay(ds.images, ds.labels, 3, ds.mean, ds.std, seed) for seed in range(3)]
    accuracies = [evaluate.test_accuracy(net, test_x, test_y, ds.mean, ds.std, torch.device("cpu")) for net in students]
    assert accuracies == result.stats["end_test_accuracy"]  # the end of distillation measured student seeds 0, 1, 2
    first, second = (dict(net.named_parameters())["features.0.weight"] for net in students[:2])
    assert not torch.equal(first, second)  # each seed starts from its own θ₀


def test_fixed_init_budget_counts_theta0_and_refuses_with_the_budget_it_needs(tiny_real, tmp_path):
    encoder = tiny_bptt(images_per_class=1, iterations=1)
    with pytest.raises(D3BudgetError) as caught:
        compress(tiny_real, tmp_path / "x.d3", encoder=encoder, budget=20_000, progress=False)
    assert "θ₀ of lenet" in str(caught.value) and "`init` random" in str(caught.value)
    needed = caught.value.min_budget
    assert needed > 15_626 * 2 and not (tmp_path / "x.d3").exists()
    result = compress(tiny_real, tmp_path / "x.d3", encoder=encoder, budget=needed, progress=False)
    assert result.file_bytes <= needed
    # random init stores no θ₀, so the same images fit in the small budget
    compress(
        tiny_real,
        tmp_path / "r.d3",
        encoder=tiny_bptt(images_per_class=1, iterations=1, init="random"),
        budget=20_000,
        progress=False,
    )


def test_filling_the_budget_keeps_a_multiple_of_the_steps(tiny_real, tmp_path):
    result = compress(
        tiny_real,
        tmp_path / "x.d3",
        encoder=tiny_bptt(iterations=1, init="random", inner_steps=4),
        budget=6_000,
        progress=False,
    )
    n = result.plan.images_per_class
    assert n >= 4 and n % 4 == 0 and result.file_bytes <= 6_000
    with pytest.raises(ValueError, match="must divide `images_per_class`"):
        compress(
            tiny_real,
            tmp_path / "y.d3",
            encoder=tiny_bptt(images_per_class=3, inner_steps=2),
            budget=9_000,
            progress=False,
        )


def test_step_batches_split_every_class_evenly():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert [b.tolist() for b in step_batches(labels, 2, 2)] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    with pytest.raises(ValueError, match="class 2 has 0 images"):
        step_batches(labels, 2, 3)


def _rewrite_schedule(path, change_meta=None, change_tensors=None) -> bytes:
    reader = D3Reader(path)
    meta = reader.read_json("meta")
    tensors = reader.read_tensors("schedule")
    if change_meta:
        change_meta(meta["params"])
    if change_tensors:
        change_tensors(tensors)
    return encode_archive(
        [
            Section.json("meta", meta),
            Section.tensors("images", reader.read_tensors("images")),
            Section.tensors("schedule", tensors),
        ]
    )


@pytest.mark.parametrize(
    "meta_change,tensor_change,message",
    [
        (None, lambda t: t.update(step_sizes=-t["step_sizes"]), "finite and positive"),
        (None, lambda t: t.update(step_sizes=t["step_sizes"] * float("nan")), "not finite"),
        (None, lambda t: t.pop("step_sizes"), "step_sizes"),
        (None, lambda t: t.update({"theta0.classifier.0.weight": torch.zeros(5, 5)}), "theta0.classifier.0.weight"),
        (None, lambda t: t.update({"extra": torch.zeros(1)}), "unexpected tensor 'extra'"),
        (None, lambda t: t.update(step_sizes=t["step_sizes"].double()), "float32 or float16"),
        (lambda p: p.update(inner_epochs=10**9), None, "from 1 to 100000"),
        (lambda p: p.update(inner_steps="2"), None, "inner_steps' must be an integer"),
        (lambda p: p.update(inner_steps=2.0), None, "inner_steps' must be an integer"),
        (lambda p: p.update(network="alexnet"), None, "network"),
        (lambda p: p.update(init="random"), None, "unexpected tensor 'theta0"),  # θ₀ stored, yet init says random
        (lambda p: p.update(inner_steps=5, inner_epochs=2), None, "split into the schedule's steps"),
    ],
)
def test_hostile_schedules_raise_d3formaterror(tiny_real, tmp_path, meta_change, tensor_change, message):
    out = tmp_path / "f.d3"
    compress(tiny_real, out, encoder=tiny_bptt(iterations=1, images_per_class=2), budget=200_000, progress=False)
    with pytest.raises(D3FormatError, match=message):
        D3Dataset(_rewrite_schedule(out, meta_change, tensor_change))
