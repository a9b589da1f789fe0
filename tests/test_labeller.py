"""The stored labeller (spec/FORMAT.md §5.8): read from any archive, given to students batch by batch."""

import json

import pytest
import torch

import d3codec
from d3codec import D3Dataset, D3FormatError
from d3codec.decode.labeller import Labeller, labeller_parts
from d3codec.decode.verify import verify_archive
from d3codec.evaluation import students
from d3codec.format.container import D3Reader, Section, encode_archive
from d3codec.nn.teacher import train_teacher


@pytest.fixture
def labelled(tiny_real, tmp_path):
    """A DM archive of the tiny data with a width-8 int8 labeller trained on it added, and the teacher."""
    plain = tmp_path / "plain.d3"
    d3codec.compress(
        tiny_real, plain, budget=8_000, options={"iterations": 1, "real_per_class": 4, "embed_width": 8}, progress=False
    )
    teacher, _ = train_teacher(tiny_real, [0, 1, 2], epochs=20, width=8)
    return plain, with_labeller(plain, tmp_path / "labelled.d3", teacher.net), teacher


def with_labeller(source, target, net, meta_patch=None, section=True):
    """``source`` with ``net`` stored as its labeller (``meta_patch`` edits meta.labeller; ``section``
    False leaves the section out)."""
    described, stored = labeller_parts(net, 2.0, "int8")
    with D3Reader(source) as reader:
        meta = reader.read_json("meta")
        sections = [
            Section.tensors(s.name, reader.read_tensors(s.name), critical=s.critical) for s in reader.sections[1:]
        ]
    meta["labeller"] = {**described, **(meta_patch or {})}
    extra = len(stored.payload) + 4096  # the plain archive fills its budget: the labeller's bytes come on top
    meta["budget"]["bytes"] += extra
    meta["accounting"]["budget_bytes"] += extra
    target.write_bytes(encode_archive([Section.json("meta", meta)] + sections + ([stored] if section else [])))
    return target


def test_the_labeller_gives_the_teachers_soft_labels_and_trains_a_student(labelled, tiny_real):
    plain, path, teacher = labelled
    assert D3Dataset(plain).labeller is None
    ds = D3Dataset(path)
    assert isinstance(ds.labeller, Labeller) and not ds.labeller.training
    assert "stored labeller" in repr(ds) and "stored labeller" not in repr(D3Dataset(plain))
    probabilities = ds.labeller(ds.images)  # pixel space in, (N, K) probabilities out
    assert probabilities.shape == (len(ds), 3) and torch.allclose(probabilities.sum(1), torch.ones(len(ds)))
    with torch.no_grad():
        x = (ds.images - torch.tensor(ds.mean).view(1, -1, 1, 1)) / torch.tensor(ds.std).view(1, -1, 1, 1)
        want = torch.softmax(teacher.net(x) / 2.0, 1)  # the stored temperature, int8-rounded weights
    assert (probabilities - want).abs().max() < 0.05

    test_x, test_y = students.test_split(tiny_real)
    accuracy, _ = students.train_student(
        ds.images,
        ds.labeller,
        3,
        ds.mean,
        ds.std,
        (test_x, test_y),
        students.StudentConfig(model="mlp", epochs=40, dsa=True),
        seed=0,
    )
    assert accuracy > 0.8  # the tiny classes are separable; chance is 1/3

    evaluation = d3codec.evaluate(path, dataset=tiny_real, device="cpu", epochs=1, runs=1, model="mlp")
    assert evaluation.rows[0].name == "archive (pixel, labelled online by its labeller)"
    hard = d3codec.evaluate(path, dataset=tiny_real, device="cpu", epochs=1, runs=1, model="mlp", labels="hard")
    assert hard.rows[0].name == "archive (pixel, hard labels)"
    with pytest.raises(ValueError, match="stores no labeller"):
        d3codec.evaluate(plain, dataset=tiny_real, device="cpu", epochs=1, runs=1, labels="online")
    report = verify_archive(path)
    assert report.ok and "width-8 labeller" in report.checks[-1][1]


def test_a_labeller_that_does_not_match_its_description_is_refused(labelled, tmp_path):
    plain, path, teacher = labelled
    for patch, section, message in (
        ({"width": 16}, True, "labeller"),
        ({}, False, "no 'labeller' section"),
        ({"dtype": "int4"}, True, "labeller.dtype"),
        ({"temperature": 0}, True, "labeller.temperature"),
    ):
        bad = with_labeller(plain, tmp_path / "bad.d3", teacher.net, patch, section)
        with pytest.raises(D3FormatError, match=message):
            D3Dataset(bad)
    with D3Reader(path) as reader:  # the section without meta.labeller
        meta = reader.read_json("meta")
        sections = [
            Section.tensors(s.name, reader.read_tensors(s.name), critical=s.critical) for s in reader.sections[1:]
        ]
    del meta["labeller"]
    (tmp_path / "orphan.d3").write_bytes(encode_archive([Section.json("meta", meta)] + sections))
    with pytest.raises(D3FormatError, match="meta.labeller does not describe it"):
        D3Dataset(tmp_path / "orphan.d3")


def test_any_method_stores_a_labeller_within_its_budget(tiny_real, tmp_path):
    from d3codec.encode.labelled import LabelledEncoder, LabellerConfig
    from d3codec.methods import get_method

    dm = get_method("dm").make_encoder("fast", {"iterations": 1, "real_per_class": 4, "embed_width": 8})
    out = tmp_path / "l.d3"
    result = d3codec.compress(
        tiny_real, out, budget=12_000, encoder=LabelledEncoder(dm, LabellerConfig(4, 1.0)), progress=False
    )
    ds = D3Dataset(out)
    assert out.stat().st_size <= 12_000 and ds.meta["labeller"]["width"] == 4 and ds.labeller is not None
    assert 0 <= result.stats["labeller_accuracy"] <= 1 and result.stats["labeller_seconds"] > 0
    alone = d3codec.compress(tiny_real, tmp_path / "plain.d3", budget=12_000, encoder=dm, progress=False)
    assert result.params["images_per_class"] < alone.params["images_per_class"]  # the labeller's bytes come first

    with pytest.raises(d3codec.D3BudgetError, match="labeller"):
        d3codec.compress(
            tiny_real, tmp_path / "x.d3", budget=1_500, encoder=LabelledEncoder(dm, LabellerConfig(4)), progress=False
        )


def test_the_command_line_stores_a_labeller_and_eval_uses_it_online(tiny_real, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import d3codec.data
    from d3codec.cli.main import main

    monkeypatch.setattr(d3codec.data.sources, "load_dataset", lambda *a, **k: tiny_real)
    monkeypatch.setattr(d3codec.data.sources, "archive_dataset", lambda *a, **k: tiny_real)
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a], catch_exceptions=False)  # noqa: E731
    out = tmp_path / "l.d3"
    r = run(
        "compress",
        "dm",
        "tiny",
        "--budget",
        12_000,
        "--iterations",
        1,
        "--real-per-class",
        4,
        "--labeller-width",
        4,
        "--labeller-epochs",
        1,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert D3Dataset(out).meta["labeller"] == {"network": "convnet3", "width": 4, "temperature": 1.0, "dtype": "int8"}
    r = run("eval", out, "--epochs", 1, "--runs", 1, "--model", "mlp", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert "labelled online" in json.loads(r.stdout)["rows"][0]["name"]  # JSON alone on stdout
    r = run(
        "compress",
        "d3",
        "tiny",
        "--budget",
        12_000,
        "--labeller-width",
        4,
        "--workers",
        2,
        "-o",
        tmp_path / "f.d3",
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code != 0 and "does not store a labeller yet" in r.output  # refused before any worker starts


def test_the_fair_baseline_gives_real_images_the_same_labeller_and_ranking_uses_it(labelled, tiny_real):
    from d3codec.evaluation.ranking import label_robust_score

    _, archive, _ = labelled
    result = d3codec.evaluate(
        archive, dataset=tiny_real, device="cpu", epochs=2, runs=1, model="mlp", baseline="random-real", ranking=True
    )
    rows = {row.name.split(" labelled")[0]: row for row in result.rows}
    with D3Reader(archive) as reader:
        labeller_bytes = d3codec.decode.labeller.stored_bytes(reader)
    assert labeller_bytes > 0
    png, fair = rows["random real (PNG)"], rows[f"random real (PNG, {labeller_bytes} B fewer)"]
    budget = D3Dataset(archive).meta["budget"]["bytes"]
    assert fair.images < png.images and fair.file_bytes <= budget and png.file_bytes <= budget
    assert fair.file_bytes - labeller_bytes <= budget - labeller_bytes
    assert any(name.startswith("random real (JPEG q20, ") for name in rows)
    # the ranking trained the archive with hard labels (its own row) and compared with the fair row
    ranking = result.ranking
    assert "archive (pixel, hard labels)" in rows and ranking.labels.startswith("labelled online")
    assert ranking.random == fair.mean and ranking.hard == rows["archive (pixel, hard labels)"].mean
    assert ranking.hlr is None and ranking.lrs is None  # no full-data accuracy for the tiny data
    assert ranking.ior == pytest.approx(ranking.labelled - ranking.random)
    assert label_robust_score(0.0, 0.0) == pytest.approx((1 - 2.718281828**-1) / (2.718281828 - 2.718281828**-1))
    assert label_robust_score(-1.0, 1.0) == pytest.approx(1.0) and label_robust_score(1.0, -1.0) == pytest.approx(0.0)


def test_the_budget_rule_picks_the_widest_labeller_within_its_share(tiny_real, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import d3codec.data
    from d3codec.cli.main import main
    from d3codec.decode.labeller import labeller_parts, section_cost
    from d3codec.encode.labelled import LABELLER_SHARE, auto_width
    from d3codec.nn.models import ConvNet

    fm = ((1, 28, 28), 10)
    assert [auto_width(*fm, ipc * 31_360) for ipc in (1, 10, 50)] == [8, 32, 32]
    assert auto_width(*fm, 20_000) is None  # width 8's 4 112 bytes are over 15 % of it
    width = auto_width(*fm, 100_000)
    assert section_cost(labeller_parts(ConvNet(1, 10, 28, width=width), 1.0, "int8")[1]) <= LABELLER_SHARE * 100_000

    monkeypatch.setattr(d3codec.data.sources, "load_dataset", lambda *a, **k: tiny_real)
    monkeypatch.setattr(d3codec.data.sources, "archive_dataset", lambda *a, **k: tiny_real)
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a], catch_exceptions=False)  # noqa: E731
    c, h, _ = tiny_real.image_shape
    expected = auto_width(tiny_real.image_shape, tiny_real.num_classes, 40_000)
    assert expected is not None
    r = run(
        "compress",
        "dm",
        "tiny",
        "--budget",
        40_000,
        "--iterations",
        1,
        "--real-per-class",
        4,
        "--labeller-width",
        "auto",
        "--labeller-epochs",
        0.5,
        "-o",
        tmp_path / "a.d3",
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert D3Dataset(tmp_path / "a.d3").meta["labeller"]["width"] == expected
    r = run("compress", "dm", "tiny", "--budget", 40_000, "--labeller-width", "wide", "-o", tmp_path / "b.d3")
    assert r.exit_code != 0 and "'wide' is not a width from 1 to 4096 or 'auto'" in r.output
