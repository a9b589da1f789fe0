"""Byte accounting: IPC budgets, exact plans, refusals, and real files within their budget."""

import pytest

from d3codec.budget import ipc_budget, ipc_equivalent
from d3codec.encoding import base_meta, compress, plan_archive
from d3codec.errors import D3BudgetError
from d3codec.methods import DatasetSpec
from d3codec.methods.pixel import DMEncoder

FM = DatasetSpec("fashion-mnist", tuple(f"c{i}" for i in range(10)), (1, 28, 28), (0.2861,), (0.353,))


def test_ipc_budgets_match_the_literature_convention():
    assert ipc_budget(1, 10, (1, 28, 28)) == 31_360
    assert ipc_budget(10, 10, (1, 28, 28)) == 313_600
    assert ipc_budget(50, 10, (1, 28, 28)) == 1_568_000
    assert ipc_budget(2, 1000, (3, 64, 64)) == 98_304_000
    assert ipc_equivalent(313_600, 10, (1, 28, 28)) == 10


def plan(budget, **options):
    encoder = DMEncoder.from_options("fast", **options)
    return plan_archive(encoder, FM, budget, base_meta(FM, "pixel", budget, None, 0, "2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("budget", [31_360, 313_600, 1_568_000])
def test_plan_fills_the_budget_and_one_more_image_would_not_fit(budget):
    p = plan(budget)
    assert p.storage_dtype == "uint8" and p.max_bytes <= budget
    bigger = plan(10 ** 8, images_per_class=p.images_per_class + 1)
    assert bigger.max_bytes > budget  # maximal: the next count passes the budget
    assert p.max_bytes > 0.9 * budget or budget < 40_000  # fills most of it


def test_float_dtypes_hold_fewer_images():
    n8, n16, n32 = (plan(313_600, storage_dtype=d).images_per_class for d in ("uint8", "float16", "float32"))
    assert n8 > n16 > n32 and n32 == 9  # 10 float32 images per class leave no room for the metadata


def test_impossible_budget_is_refused_with_the_smallest_that_works():
    with pytest.raises(D3BudgetError) as err:
        plan(5_000)
    smallest = err.value.min_budget
    assert str(smallest) in str(err.value)
    assert plan(smallest).images_per_class == 1
    with pytest.raises(D3BudgetError):
        plan(smallest - 1)


def test_fixed_image_count_that_does_not_fit_is_refused():
    with pytest.raises(D3BudgetError, match="images-per-class"):
        plan(31_360, images_per_class=10)


def test_written_file_is_within_budget_as_the_os_counts(tiny_real, tmp_path):
    encoder = DMEncoder.from_options("fast", iterations=2, real_per_class=4, embed_width=8)
    out = tmp_path / "t.d3"
    result = compress(tiny_real, out, encoder=encoder, budget=4_000, seed=0, progress=False)
    assert out.stat().st_size == result.file_bytes <= 4_000
    assert result.plan.max_bytes <= 4_000
    with pytest.raises(D3BudgetError):  # refused before any distillation: no file appears
        compress(tiny_real, tmp_path / "no.d3", encoder=encoder, budget=300, progress=False)
    assert not (tmp_path / "no.d3").exists()


def test_compressed_fill_aims_higher_and_trims_to_fit_when_the_estimate_is_wrong(tiny_real, tmp_path, monkeypatch):
    import d3codec.methods.pixel.dm as pixel
    from d3codec import D3Dataset

    encoder = DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8)
    spec = DatasetSpec.of(tiny_real)
    meta = base_meta(spec, "pixel", 6_000, None, 0, "2026-01-01T00:00:00Z")
    honest = plan_archive(encoder, spec, 6_000, meta, tiny_real)
    assert honest.images_per_class > honest.guaranteed_per_class  # the pattern images compress well

    monkeypatch.setattr(pixel, "DISTILLED_RATIO_MARGIN", {"pixels": 0.05})  # a wildly optimistic estimate
    result = compress(tiny_real, tmp_path / "t.d3", encoder=encoder, budget=6_000, progress=False)
    ds = D3Dataset(tmp_path / "t.d3")
    kept = ds.meta["params"]["images_per_class"]
    assert result.plan.images_per_class > kept >= result.plan.guaranteed_per_class
    assert len(ds) == 3 * kept and ds.meta["stats"]["planned_images_per_class"] == result.plan.images_per_class
    assert result.params["images_per_class"] == kept  # what compress reports is what the file holds
    assert (tmp_path / "t.d3").stat().st_size <= 6_000


def test_raw_fill_never_counts_on_compression(tiny_real):
    encoder = DMEncoder.from_options("fast", fill="raw")
    spec = DatasetSpec.of(tiny_real)
    p = plan_archive(encoder, spec, 6_000, base_meta(spec, "pixel", 6_000, None, 0, "x"), tiny_real)
    assert p.images_per_class == p.guaranteed_per_class and p.max_bytes <= 6_000
