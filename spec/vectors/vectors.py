"""Build the test-vector archives of spec/FORMAT.md §8 from vectors.json.

    python spec/vectors/vectors.py          # (re)write the .d3 files beside this script
    python spec/vectors/vectors.py --check  # compare instead of writing; exit 1 on a difference
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from d3codec.container import Content, Section, encode_archive

HERE = Path(__file__).resolve().parent
DTYPES = {"U8": torch.uint8, "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "F32": torch.float32}


def section_from_spec(spec: dict) -> Section:
    """A Section from one entry of vectors.json."""
    content = spec["content"]
    if content == "json":
        return Section.json(spec["name"], spec["json"], spec["critical"])
    if content == "bytes":
        return Section(spec["name"], bytes.fromhex(spec["hex"]), Content.BYTES, spec["critical"])
    if content == "safetensors":
        tensors = {k: torch.tensor(t["values"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
                   for k, t in spec["tensors"].items()}
        return Section.tensors(spec["name"], tensors, spec["critical"])
    raise ValueError(content)


def load_vectors() -> list[dict]:
    return json.loads((HERE / "vectors.json").read_text())["vectors"]


def build(vector: dict) -> bytes:
    return encode_archive([section_from_spec(s) for s in vector["sections"]], vector["compress"])


def main(check: bool) -> int:
    bad = 0
    for vector in load_vectors():
        data, path = build(vector), HERE / vector["file"]
        if check:
            same = path.read_bytes() == data
            bad += not same
            print(f"{vector['file']}: {'identical' if same else 'DIFFERENT'}")
        else:
            path.write_bytes(data)
            print(f"wrote {vector['file']} ({len(data)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
