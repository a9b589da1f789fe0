"""The specification alone is enough: a reader written from spec/FORMAT.md reads every test vector."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import spec_reader

SPEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
VECTORS = json.loads((SPEC / "vectors.json").read_text())["vectors"]


def test_the_spec_reader_does_not_import_d3codec():
    source = Path(spec_reader.__file__).read_text()
    assert "d3codec" not in source.replace("of d3codec", "")  # the docstring names it, the code never does
    assert not any(name == "d3codec" or name.startswith("d3codec.") for name in spec_reader.__dict__)


def test_vectors_cover_every_content_type_and_both_codecs():
    kinds = {(s["content"], s["codec"]) for v in VECTORS for s in v["sections"]}
    assert kinds == {(content, codec) for content in ("bytes", "json", "safetensors") for codec in ("none", "zstd")}
    assert {s["critical"] for v in VECTORS for s in v["sections"]} == {True, False}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["file"])
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
                expected = np.array(t["values"], dtype=spec_reader.SAFETENSORS_DTYPES[t["dtype"]]).reshape(t["shape"])
                assert got["value"][key].dtype == expected.dtype
                np.testing.assert_array_equal(got["value"][key], expected)


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True)
    assert out.stdout.strip() == "False"
