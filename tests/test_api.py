"""The Python API a researcher calls without the CLI: d3codec.compress and d3codec.evaluate."""

import json

import pytest

import d3codec


def test_compress_then_evaluate_from_python(tiny_real, tmp_path):
    out = tmp_path / "fm.d3"
    result = d3codec.compress(
        tiny_real,
        out,
        budget=6_000,
        method="dm",
        options={"iterations": 2, "real_per_class": 4, "embed_width": 8},
        progress=False,
    )
    assert result.file_bytes == out.stat().st_size <= 6_000 and result.params["config"]["iterations"] == 2
    assert not list(tmp_path.glob("*.ckpt*"))  # Python's default: no checkpoint files

    lines = []
    evaluation = d3codec.evaluate(
        out, dataset=tiny_real, device="cpu", epochs=2, runs=2, model="mlp", baseline="random-real", log=lines.append
    )
    names = [row.name for row in evaluation.rows]
    assert names == ["archive (pixel)", "random real (float32)", "random real (PNG)", "random real (JPEG q20)"]
    assert all(len(row.accuracies) == 2 and all(0 <= a <= 1 for a in row.accuracies) for row in evaluation.rows)
    assert evaluation.rows[0].file_bytes == result.file_bytes and len(lines) == 8  # a line per student
    report = json.loads(json.dumps(evaluation.to_json()))
    assert report["protocol"]["epochs"] == 2 and [r["name"] for r in report["rows"]] == names


def test_the_python_api_refuses_what_it_cannot_honour(tiny_real, tmp_path):
    encoder = d3codec.methods.get_method("dm").make_encoder("fast", {"iterations": 1})
    with pytest.raises(ValueError, match="either encoder="):
        d3codec.compress(tiny_real, tmp_path / "a.d3", budget=6_000, encoder=encoder, options={"iterations": 2})
    with pytest.raises(ValueError, match="dm has no option"):
        d3codec.compress(tiny_real, tmp_path / "a.d3", budget=6_000, options={"priors_per_class": 2})
    d3codec.compress(tiny_real, tmp_path / "a.d3", budget=6_000, encoder=encoder, progress=False)
    with pytest.raises(ValueError, match="no option rounds"):
        d3codec.evaluate(tmp_path / "a.d3", dataset=tiny_real, rounds=3)
    with pytest.raises(ValueError, match="no training schedule"):
        d3codec.evaluate(tmp_path / "a.d3", dataset=tiny_real, device="cpu", training="replay")
