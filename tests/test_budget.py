"""Byte accounting: IPC budgets, exact plans, refusals, and real files within their budget."""

import pytest
import torch

from d3codec.encode.pipeline import base_meta, compress, plan_archive
from d3codec.errors import D3BudgetError
from d3codec.format.accounting import ipc_budget, ipc_equivalent
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
    bigger = plan(10**8, images_per_class=p.images_per_class + 1)
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
    with pytest.raises(D3BudgetError, match="images_per_class"):
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


def test_compressed_fill_aims_higher_and_trims_to_fit_when_the_estimate_is_wrong(
    tiny_real, tmp_path, monkeypatch, capsys
):
    import d3codec.methods.pixel.dm as pixel
    from d3codec import D3Dataset

    encoder = DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8)
    spec = DatasetSpec.of(tiny_real)
    meta = base_meta(spec, "pixel", 6_000, None, 0, "2026-01-01T00:00:00Z")
    honest = plan_archive(encoder, spec, 6_000, meta, tiny_real)
    assert honest.images_per_class > honest.guaranteed_per_class  # the pattern images compress well

    monkeypatch.setattr(pixel, "DISTILLED_RATIO_MARGIN", {"pixels": 0.05})  # a wildly optimistic estimate
    result = compress(tiny_real, tmp_path / "t.d3", encoder=encoder, budget=6_000, progress=True)
    log = capsys.readouterr().err  # each compression is a line: at ImageNet's 98 MB each takes a minute or more
    assert log.count(f"writing {tmp_path / 't.d3'}: compressing") >= 2 and "bytes over the budget: dropping" in log
    ds = D3Dataset(tmp_path / "t.d3")
    params = ds.meta["params"]
    kept = params["images_per_class"]  # the fullest class's count; the others may hold one fewer
    total = params.get("images", 3 * kept)
    assert result.plan.images_per_class > kept >= result.plan.guaranteed_per_class
    assert 3 * (kept - 1) < total <= 3 * kept
    assert len(ds) == total and ds.meta["stats"]["planned_images_per_class"] == result.plan.images_per_class
    counts = torch.bincount(torch.tensor([int(ds[i][1]) for i in range(len(ds))]), minlength=3)
    assert counts.max() - counts.min() <= 1 and int(counts.max()) == kept
    assert result.params == params  # what compress reports is what the file holds
    assert (tmp_path / "t.d3").stat().st_size <= 6_000


def test_trimming_image_by_image_fills_the_budget_to_within_an_image(tiny_real, tmp_path):
    from d3codec.encode.interface import Overrun

    encoder = DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8)
    result = compress(tiny_real, tmp_path / "t.d3", encoder=encoder, budget=9_000, progress=False)
    size = (tmp_path / "t.d3").stat().st_size
    c, h, w = tiny_real.image_shape
    assert 9_000 - 2 * c * h * w < size <= 9_000  # an image's raw bytes (uint8) bound its stored size
    assert Overrun(100, {"images": 1_000}).units_to_drop(10, ("images",)) == 3  # 100 B of 100 B units, + 2 %, + 1
    assert Overrun(10**6, {"images": 1_000}).units_to_drop(10, ("images",)) == 10
    assert result.file_bytes == size


def test_few_images_a_class_are_trimmed_by_whole_rounds_many_image_by_image(tiny_real):
    from d3codec.encode.interface import Overrun
    from d3codec.methods.pixel.plan import FEW_PER_CLASS, PixelPlan

    encoder, spec = DMEncoder.from_options("fast"), DatasetSpec.of(tiny_real)

    def kept(per_class: int, excess: int) -> tuple[int, int]:  # (images, the fullest class's) after one trim
        images = torch.rand(3, per_class, 1, 16, 16)
        plan = PixelPlan(per_class, "uint8", 0, 0, guaranteed_per_class=1)
        full = encoder._encoded(images, spec, plan, {})
        trimmed = full.trim(Overrun(excess, {"images": 100 * 3 * per_class}))  # images of 100 B each
        fullest = trimmed.method_meta["images_per_class"]
        return trimmed.method_meta.get("images", 3 * fullest), fullest

    assert Overrun(50, {"images": 1_500}).units_to_drop(15, ("images",)) == 2
    assert kept(5, 50) == (12, 4)  # not 5/5/3 nor 5/4/4: classes a quarter apart cost students 4 to 6 points
    many = FEW_PER_CLASS + 2
    assert kept(many, 50) == (3 * many - 2, many)  # the budget fills to within an image


def test_a_plan_of_few_images_a_class_distils_what_it_stores(tiny_real, monkeypatch):
    import d3codec.methods.pixel.plan as budget

    encoder, spec = DMEncoder.from_options("fast"), DatasetSpec.of(tiny_real)
    meta = base_meta(spec, "pixel", 6_000, None, 0, "2026-01-01T00:00:00Z")
    monkeypatch.setattr(budget, "FEW_PER_CLASS", 10**6)  # every count is few: no image past the estimate
    exact = plan_archive(encoder, spec, 6_000, meta, tiny_real)
    monkeypatch.setattr(budget, "FEW_PER_CLASS", 1)  # none is: one image a class past it, trimmed if need be
    past = plan_archive(encoder, spec, 6_000, meta, tiny_real)
    assert past.images_per_class == exact.images_per_class + 1
    assert exact.estimated_bytes <= 6_000  # what the estimate says fits, distilled as it will be stored


def test_raw_fill_never_counts_on_compression(tiny_real):
    encoder = DMEncoder.from_options("fast", fill="raw")
    spec = DatasetSpec.of(tiny_real)
    p = plan_archive(encoder, spec, 6_000, base_meta(spec, "pixel", 6_000, None, 0, "x"), tiny_real)
    assert p.images_per_class == p.guaranteed_per_class and p.max_bytes <= 6_000


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
def test_plan_placeholders_serialise_to_the_bytes_of_what_is_stored(dtype):
    import safetensors.torch

    from d3codec.format.storage import encode_images, stored_image_zeros
    from d3codec.format.weights import quantise_state, stored_zeros
    from d3codec.methods.d3.config import D3Config
    from d3codec.methods.d3.layout import GroupPlan, group_tensors

    def layout(tensors):  # names, dtypes and shapes, and the serialised size
        return {n: (v.dtype, tuple(v.shape)) for n, v in tensors.items()}, len(safetensors.torch.save(tensors))

    for k in (3, 300):  # labels as uint8, then int32
        real = encode_images(torch.rand(6, 3, 4, 4), torch.arange(6) % k, k, dtype)
        assert layout(stored_image_zeros(6, (3, 4, 4), k, dtype)) == layout(real)
    weights = "int8" if dtype == "uint8" else "float16"
    shapes = {"conv.weight": (5, 3, 3, 3), "conv.bias": (5,), "fc.weight": (7, 4)}
    assert layout(stored_zeros(shapes, "g0.", weights)) == layout(
        quantise_state({n: torch.randn(s) for n, s in shapes.items()}, "g0.", weights)
    )
    g = GroupPlan(0, 4, 8, 3, 8, "uniform", 2)
    cfg = D3Config(prior_dtype=weights, decoder_dtype=weights)
    decoder = {n: torch.randn(s) for n, s in g.decoder_shapes((1, 16, 16)).items()}
    filled = group_tensors(
        g,
        1,
        (1, 16, 16),
        cfg,
        (torch.randn(4, 3, 8), torch.randn(4, 3, 8)),
        decoder,
        torch.softmax(torch.randn(4, 3, 4), -1),
    )
    placeholder = group_tensors(g, 1, (1, 16, 16), cfg)
    assert {s: layout(t) for s, t in placeholder.items()} == {s: layout(t) for s, t in filled.items()}
