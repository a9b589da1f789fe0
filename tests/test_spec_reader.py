"""The specification alone is enough: a reader written from spec/FORMAT.md reads every test vector,
reproduces every expansion (the noise bit for bit, images within 1e-5 · max(1, |x|), soft labels within 1e-5,
the decode budget's figures exactly) and refuses every negative one."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import spec_reader

SPEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
VECTORS = json.loads((SPEC / "vectors.json").read_text())["vectors"]
CONTAINER_READ = [v for v in VECTORS if v["container"] == "read"]
ARCHIVES = [v for v in VECTORS if v["archive"] == "read"]
REFUSED = [v for v in VECTORS if "refuse" in (v["container"], v["archive"])]


def array(spec: dict) -> np.ndarray:
    return np.array(spec["values"], dtype=spec_reader.SAFETENSORS_DTYPES[spec["dtype"]]).reshape(spec["shape"])


def expanded(key: str):
    """Every tensor spec an expansion lists under ``key`` (one, or a list of them)."""
    for v in ARCHIVES:
        for want in v["expect"]:
            value = want.get(key)
            yield from (value if isinstance(value, list) else [value] if value else [])


def meta_of(vector: dict) -> dict:
    return next(s["json"] for s in vector["sections"] if s["name"] == "meta")


def test_the_spec_reader_does_not_import_d3codec():
    source = Path(spec_reader.__file__).read_text()
    assert "d3codec" not in source.replace("of d3codec", "")  # the docstring names it, the code never does
    assert not any(name == "d3codec" or name.startswith("d3codec.") for name in spec_reader.__dict__)


def test_vectors_cover_every_content_type_both_codecs_and_every_method():
    positive = [s for v in CONTAINER_READ for s in v["sections"]]
    kinds = {(s["content"], s["codec"]) for s in positive}
    assert kinds == {(content, codec) for content in ("bytes", "json", "safetensors") for codec in ("none", "zstd")}
    assert {s["critical"] for s in positive} == {True, False}
    methods = {s["json"]["method"] for v in ARCHIVES for s in v["sections"] if s["name"] == "meta"}
    assert methods == {"pixel", "d3", "d2m"}
    dtypes = {t["dtype"] for v in ARCHIVES for s in v["sections"] for t in s.get("tensors", {}).values()}
    assert {"I8", "I32", "U8", "F16", "F32"} <= dtypes  # int8 weights, I32 labels, ...
    names = {k for v in ARCHIVES for s in v["sections"] for k in s.get("tensors", {})}
    assert any(k.startswith("theta0.") for k in names) and {"g0", "g1"} <= names  # θ₀, prior_labels
    assert {"1.0", "1.1"} <= {v["version"] for v in ARCHIVES}
    assert len(REFUSED) >= 15 and all(v.get("reason") for v in REFUSED)


def test_vectors_cover_formations_top_k_labeller_tapered_upconv_v1_and_the_budget():
    metas = [meta_of(v) for v in ARCHIVES]
    params = [m.get("params") or {} for m in metas]
    assert {p["formation"]["kind"] for p in params if "formation" in p} == {"lowres", "dct"}
    masks = [p["formation"]["mask"] for p in params if "mask" in p.get("formation", {})]
    assert masks and any(len(set(m)) > 1 for m in masks)  # a dct mask, one of its own for each channel (§5.5)
    groups = [g for p in params for g in p.get("groups", [])]
    assert any("label_top_k" in g for g in groups) and any(g.get("decoder_architecture") == "tapered" for g in groups)
    assert {p.get("architecture") for p in params} >= {"upconv-v1", "upconv-v2"}
    labelled = [v for v in ARCHIVES if "labeller" in meta_of(v)]
    assert labelled and all(e.get("labeller") for v in labelled for e in v["expect"])
    assert all(
        set(e["budget"]) == {"default_draw", "output_bytes", "decoded_values", "labeller_values"}
        for v in ARCHIVES
        for e in v["expect"]
    )
    capped = [
        v
        for v in ARCHIVES
        if meta_of(v)["method"] == "d2m"
        and v["expect"][0]["budget"]["default_draw"][0] < meta_of(v)["params"]["samples_per_class"]
    ]
    assert capped  # a default draw that the cap of §4 lowers
    refused = {v["file"] for v in REFUSED}
    assert {
        "neg-formation-kind.d3",
        "neg-formation-factor.d3",
        "neg-dct-factor-empty.d3",
        "neg-formation-codes-shape.d3",
        "neg-dct-overflow.d3",
        "neg-topk-index-range.d3",
        "neg-topk-index-repeated.d3",
        "neg-topk-sum.d3",
        "neg-labeller-no-meta.d3",
        "neg-labeller-no-section.d3",
        "neg-labeller-scale-inf.d3",
        "neg-weight-inf.d3",
        "neg-bptt-empty-class.d3",
        "neg-decoder-width-6-4px.d3",
        "neg-dct-mask-lowres.d3",
        "neg-dct-mask-bits.d3",
        "neg-dct-mask-length.d3",
        "neg-dct-mask-uppercase.d3",
        "neg-dct-mask-padding.d3",
        "neg-dct-mask-channels.d3",
    } <= refused


def test_every_float16_value_in_the_vectors_is_the_binary16_stored():
    for t in (t for v in VECTORS for s in v["sections"] for t in s.get("tensors", {}).values()):
        if t["dtype"] == "F16":
            values = np.array(t["values"], dtype=np.float64)
            np.testing.assert_array_equal(values.astype(np.float16).astype(np.float64), values)
    for key in ("images", "soft_labels", "labeller", "noise"):  # F32 expansions: binary32 values
        for t in expanded(key):
            values = np.array(t["values"], dtype=np.float64)
            np.testing.assert_array_equal(values.astype(np.float32).astype(np.float64), values)


@pytest.mark.parametrize("vector", CONTAINER_READ, ids=lambda v: v["file"])
def test_the_spec_reader_reads_every_vector_as_its_inputs(vector):
    sections = spec_reader.read((SPEC / vector["file"]).read_bytes())
    assert [s["name"] for s in sections] == [s["name"] for s in vector["sections"]]
    for got, want in zip(sections, vector["sections"]):
        assert (got["critical"], got["codec"], got["content"]) == (want["critical"], want["codec"], want["content"])
        if want["content"] == "json":
            assert got["value"] == want["json"]
        elif want["content"] == "bytes":
            assert got["value"] == bytes.fromhex(want["hex"])
        else:
            assert set(got["value"]) == set(want["tensors"])
            for key, t in want["tensors"].items():
                expected = array(t)
                assert got["value"][key].dtype == expected.dtype
                np.testing.assert_array_equal(got["value"][key], expected)


@pytest.mark.parametrize(
    "vector",
    [
        v
        for v in ARCHIVES
        if v["version"] == "1.1"
        or not any(s["json"].get("method") in ("d3", "d2m") for s in v["sections"] if s["name"] == "meta")
    ],
    ids=lambda v: v["file"],
)
def test_the_spec_reader_reproduces_every_expansion(vector):
    data = (SPEC / vector["file"]).read_bytes()
    for want in vector["expect"]:
        got = spec_reader.read_archive(data, want["samples_per_class"], want["seed"])
        np.testing.assert_array_equal(got["labels"], np.array(want["labels"]))
        expected = array(want["images"]).astype(np.float64)
        assert got["images"].shape == expected.shape
        assert (np.abs(got["images"] - expected) <= 1e-5 * np.maximum(1, np.abs(expected))).all()  # §5.2
        for key in ("soft_labels", "labeller"):
            if want.get(key) is None:
                assert got[key] is None
            else:
                np.testing.assert_allclose(got[key], array(want[key]), rtol=0, atol=1e-5)
        assert got["budget"] == want["budget"]  # §4, from the declared shapes
        if "noise" in want:  # the sampling noise of §5.4, bit for bit
            assert len(got["noise"]) == len(want["noise"])
            for mine, theirs in zip(got["noise"], want["noise"]):
                assert mine.dtype == np.float32 and mine.tobytes() == array(theirs).tobytes()
        if "priors" in want:
            np.testing.assert_array_equal(got["priors"], np.array(want["priors"]))
        if "schedule" in want:
            s = got["schedule"]
            assert {k: s[k] for k in ("network", "steps", "epochs", "init")} == want["schedule"]


@pytest.mark.parametrize("vector", REFUSED, ids=lambda v: v["file"])
def test_the_spec_reader_refuses_every_negative_vector(vector):
    data = (SPEC / vector["file"]).read_bytes()
    with pytest.raises(spec_reader.SpecError):
        spec_reader.read(data) if vector["container"] == "refuse" else spec_reader.read_archive(data)
    if vector["container"] == "read":
        spec_reader.read(data)  # the container itself is valid: the archive layer refuses it


def test_the_spec_noise_matches_splitmix64_and_is_a_standard_normal():
    assert int(spec_reader.key(0)[0]) == 0xE220A8397B1DCDAF  # SplitMix64's first output from state 0 (§5.4)
    x = spec_reader.noise(11, 2, 4, 2500, 5).astype(np.float64)  # 50 000 values
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02 and abs((x**4).mean() - 3) < 0.15
    s = np.random.default_rng(0).random(10_000)
    np.testing.assert_allclose(spec_reader.ln(s), np.log(s), rtol=1e-15)


@pytest.mark.parametrize("damage", ["truncate", "extra", "flip"])
def test_the_spec_reader_refuses_what_the_spec_says_to_refuse(damage):
    data = bytearray((SPEC / "pixel-uint8.d3").read_bytes())
    if damage == "truncate":
        data = data[:-1]
    elif damage == "extra":
        data += b"\0"
    else:
        data[-3] ^= 0x01
    with pytest.raises(spec_reader.SpecError):
        spec_reader.read(bytes(data))


def test_d3codec_stays_out_of_the_spec_reader_process_namespace():
    # importing the spec reader alone never pulls d3codec in with it
    import subprocess

    code = "import sys; sys.path.insert(0, 'tests'); import spec_reader; print('d3codec' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    assert out.stdout.strip() == "False"
