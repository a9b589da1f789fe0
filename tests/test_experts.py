"""The expert pool (d3codec.nn.experts) and matching through it (DANCE's middle encoders and calibration)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_real

import d3codec
from d3codec.data.real import ClassSampler, Normalisation
from d3codec.errors import D3Error
from d3codec.methods.matching import CalibrationTerm, DistributionMatcher, FeatureTerm, MatchingBatch, matching_experts
from d3codec.methods.pixel import DMEncoder
from d3codec.nn import experts as experts_module
from d3codec.nn.augment import DSA
from d3codec.nn.experts import ExpertSpec, expert_pool, pool_file
from d3codec.nn.losses import mean_embedding_loss

SPEC = ExpertSpec(count=2, epochs=2, width=8)


def test_pool_is_trained_once_then_read_from_its_cache(tiny_real, tmp_path, monkeypatch):
    pool = expert_pool(tiny_real, SPEC, tmp_path)
    assert len(pool.experts) == 2 and pool.trained_seconds > 0
    assert all(len(e.states) == 3 for e in pool.experts)  # θ₀, θ₁, θ₂
    first, last = pool.experts[0].states[0], pool.experts[0].states[-1]
    assert any(not torch.equal(first[k], last[k]) for k in first)  # training moved the weights
    assert not torch.equal(
        pool.experts[0].states[0]["classifier.weight"], pool.experts[1].states[0]["classifier.weight"]
    )  # experts differ by their seeds

    def no_training(*args, **kwargs):
        raise AssertionError("a cached expert was trained again")

    monkeypatch.setattr(experts_module, "train_expert", no_training)
    again = expert_pool(tiny_real, SPEC, tmp_path)
    assert again.trained_seconds == 0
    for a, b in zip(pool.experts, again.experts):
        assert all(torch.equal(a.states[e][k], b.states[e][k]) for e in range(3) for k in a.states[e])


def test_a_damaged_cached_expert_is_refused_with_its_path(tiny_real, tmp_path):
    expert_pool(tiny_real, ExpertSpec(count=1, epochs=1, width=8), tmp_path)
    path = pool_file(tmp_path, tiny_real, ExpertSpec(count=1, epochs=1, width=8), 0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(D3Error, match="delete"):
        expert_pool(tiny_real, ExpertSpec(count=1, epochs=1, width=8), tmp_path)


def test_middle_encoder_lies_between_an_experts_first_and_last_weights(tiny_real, tmp_path):
    pool = expert_pool(tiny_real, SPEC, tmp_path)
    torch.manual_seed(3)
    middle, trained = pool.middle_encoder(torch.device("cpu"))
    torch.manual_seed(3)
    again, _ = pool.middle_encoder(torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(middle.parameters(), again.parameters()))  # same seed, same draw
    name = "classifier.weight"
    ends = [(e.states[0][name], e.states[-1][name]) for e in pool.experts]
    found = [k for k, (a, b) in enumerate(ends) if torch.equal(trained.state_dict()[name], b)]
    assert len(found) == 1
    a, b = ends[found[0]]
    w = middle.state_dict()[name]
    assert torch.all(w >= torch.minimum(a, b) - 1e-6) and torch.all(w <= torch.maximum(a, b) + 1e-6)
    assert not any(p.requires_grad for p in middle.parameters())


def test_calibration_term_is_the_experts_cross_entropy_on_the_synthetic_classes(tiny_real, tmp_path):
    pool = expert_pool(tiny_real, SPEC, tmp_path)
    _, expert = pool.middle_encoder(torch.device("cpu"))
    synthetic = torch.randn(2, 4, 1, 16, 16, requires_grad=True)
    batch = MatchingBatch(synthetic, torch.randn(2, 5, 1, 16, 16), expert, expert, [2, 0])
    loss = CalibrationTerm(0.5)(batch)
    logits = expert(synthetic.flatten(0, 1))
    want = 0.5 * (
        torch.nn.functional.cross_entropy(logits[:4], torch.full((4,), 2))
        + torch.nn.functional.cross_entropy(logits[4:], torch.zeros(4, dtype=torch.long))
    )
    assert torch.allclose(loss, want)
    loss.backward()
    assert synthetic.grad is not None and synthetic.grad.abs().sum() > 0
    assert CalibrationTerm(1.0)(MatchingBatch(synthetic, synthetic, expert)).item() == 0  # no expert: no term


def test_matching_names_are_checked(tiny_real):
    assert matching_experts("dm", tiny_real, 1, 1, 8, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="dm, dance"):
        matching_experts("mtt", tiny_real, 1, 1, 8, torch.device("cpu"))


def dance_encoder(iterations: int) -> DMEncoder:
    return DMEncoder.from_options(
        "fast",
        iterations=iterations,
        real_per_class=8,
        embed_width=8,
        matching="dance",
        expert_count=2,
        expert_epochs=2,
        images_per_class=2,
    )


def dance_loss(matcher: DistributionMatcher, synthetic: torch.Tensor, terms, seeds) -> float:
    """The objective averaged over fixed draws (networks, real batches), without stepping."""
    total = 0.0
    for seed in seeds:
        torch.manual_seed(seed)
        total += matcher.step(lambda chunk: synthetic[list(chunk)], terms, torch.Generator().manual_seed(seed))
    synthetic.grad = None
    return total / len(seeds)


def test_dance_objective_falls_as_synthetic_images_learn(tiny_real, tmp_path):
    pool = expert_pool(tiny_real, SPEC, tmp_path)
    normalise = Normalisation.of(tiny_real, torch.device("cpu"))
    sampler = ClassSampler(tiny_real, [0, 1, 2], 20, torch.Generator().manual_seed(0))
    matcher = DistributionMatcher((1, 16, 16), 3, sampler.sample, 8, normalise, DSA(), 8, 3, torch.device("cpu"), pool)
    terms = [FeatureTerm(mean_embedding_loss), CalibrationTerm(1.0)]
    synthetic = torch.randn(3, 4, 1, 16, 16).requires_grad_(True)  # (K, m, C, H, W) noise, far from the data
    before = dance_loss(matcher, synthetic, terms, range(100, 105))
    optimiser, gen = torch.optim.SGD([synthetic], lr=0.5, momentum=0.5), torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(30):
        optimiser.zero_grad()
        matcher.step(lambda chunk: synthetic[list(chunk)], terms, gen)
        optimiser.step()
    assert dance_loss(matcher, synthetic, terms, range(100, 105)) < 0.75 * before


def test_dm_through_dance_reuses_the_pool_and_is_deterministic(tiny_real, tmp_path, monkeypatch):
    monkeypatch.setenv("D3CODEC_EXPERTS", str(tmp_path / "experts"))
    results = {}
    for name in ("first", "again"):
        results[name] = d3codec.compress(
            tiny_real, tmp_path / f"{name}.d3", budget=20_000, encoder=dance_encoder(5), progress=False
        )
    assert len(list((tmp_path / "experts").iterdir())) == 2
    assert results["first"].stats["expert_seconds"] > 0
    assert results["again"].stats["expert_seconds"] == 0  # the pool came from the cache the first run wrote
    first, ds = d3codec.D3Dataset(tmp_path / "first.d3"), d3codec.D3Dataset(tmp_path / "again.d3")
    assert torch.equal(first.images, ds.images)  # the same seed and pool give the same images (stats differ)
    assert ds.images.shape == (6, 1, 16, 16) and ds.meta["params"]["config"]["matching"] == "dance"


def test_compiled_matching_takes_the_same_steps_as_eager(tiny_real):
    """One kept module, its weights replaced each iteration, compiled once: the same draws and losses."""
    normalise = Normalisation.of(tiny_real, torch.device("cpu"))
    runs = {}
    for compile_ in (False, True):
        sampler = ClassSampler(tiny_real, [0, 1, 2], 20, torch.Generator().manual_seed(0))
        matcher = DistributionMatcher(
            (1, 16, 16), 3, sampler.sample, 4, normalise, DSA(), 8, 3, torch.device("cpu"), compile=compile_
        )
        synthetic = torch.randn(3, 2, 1, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        optimiser, gen = torch.optim.SGD([synthetic], lr=0.1), torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        losses = []
        for _ in range(3):
            optimiser.zero_grad()
            losses.append(matcher.step(lambda chunk: synthetic[list(chunk)], [FeatureTerm(mean_embedding_loss)], gen))
            optimiser.step()
        runs[compile_] = (losses, synthetic.detach())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    assert torch.allclose(runs[True][1], runs[False][1], atol=1e-5)


def test_a_pool_is_cached_per_dataset_content_not_only_its_name(tiny_real, tmp_path):
    other = make_tiny_real()
    other.train_images[0] = 255 - other.train_images[0]  # the same name, shape and size; other pixels
    assert pool_file(tmp_path, tiny_real, SPEC, 0) != pool_file(tmp_path, other, SPEC, 0)
    assert pool_file(tmp_path, tiny_real, SPEC, 0) == pool_file(tmp_path, make_tiny_real(), SPEC, 0)


def test_d3_and_d2m_match_through_the_same_cached_pool(tiny_real, tmp_path, monkeypatch):
    """--matching dance in D3 (its subtasks' classes read on the experts' dataset-wide outputs) and in D2M."""
    import test_d2m
    import test_d3

    monkeypatch.setenv("D3CODEC_EXPERTS", str(tmp_path / "experts"))
    dance = {"matching": "dance", "expert_count": 1, "expert_epochs": 1}
    d3 = d3codec.compress(
        tiny_real, tmp_path / "d3.d3", budget=20_000, progress=False, encoder=test_d3.tiny_encoder(subtasks=2, **dance)
    )
    pool = list((tmp_path / "experts").iterdir())
    assert len(pool) == 1 and d3.params["config"]["matching"] == "dance"
    d2m = d3codec.compress(
        tiny_real, tmp_path / "d2m.d3", budget=30_000, progress=False, encoder=test_d2m.tiny_encoder(**dance)
    )
    assert list((tmp_path / "experts").iterdir()) == pool  # the same width and recipe: the same expert, reused
    assert d2m.params["config"]["matching"] == "dance"
    for name in ("d3.d3", "d2m.d3"):
        assert torch.isfinite(d3codec.D3Dataset(tmp_path / name).images).all()
