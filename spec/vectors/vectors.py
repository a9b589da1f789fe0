"""Build the test-vector archives of spec/FORMAT.md §8 from vectors.json.

    python spec/vectors/vectors.py          # (re)write the .d3 files beside this script
    python spec/vectors/vectors.py --check  # compare instead of writing; exit 1 on a difference

zstd output is stable for one zstd library release, not across releases. The files are byte-exact for
the release named in vectors.json (``zstd_library``); with another release, a vector holding a zstd
section can only be expected to hold the same contents, which is what ``--check`` then compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import zstandard

from d3codec.container import Content, D3Reader, Section, encode_archive

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


def recorded_zstd_library() -> str:
    """The zstd library release the vector files were written with, e.g. "1.5.7"."""
    return json.loads((HERE / "vectors.json").read_text())["zstd_library"]


def zstd_library() -> str:
    """The zstd library release this process compresses with."""
    return ".".join(map(str, zstandard.ZSTD_VERSION))


def byte_exact_here(vector: dict) -> bool:
    """Whether writing ``vector`` here must give its file byte for byte: it has no zstd section, or
    this process's zstd library is the release the files were written with."""
    return all(s["codec"] == "none" for s in vector["sections"]) or zstd_library() == recorded_zstd_library()


def decoded_sections(data: bytes) -> list[tuple[str, bool, int, bytes]]:
    """Each section of an archive as (name, critical, content type, decoded bytes): what it holds,
    whatever zstd made of it. Raises D3FormatError for a damaged archive."""
    with D3Reader(data) as reader:
        return [(s.name, s.critical, int(s.content), reader.read_bytes(s.name)) for s in reader.sections]


def build(vector: dict) -> bytes:
    """The file of one vector: its sections, written with its ``compress`` mode and format ``version``."""
    minor = int(vector.get("version", "1.0").split(".")[1])
    return encode_archive([section_from_spec(s) for s in vector["sections"]], vector["compress"], minor)


def main(check: bool) -> int:
    bad = 0
    for vector in load_vectors():
        data, path = build(vector), HERE / vector["file"]
        if check:
            stored = path.read_bytes()
            if byte_exact_here(vector):
                same, word = stored == data, "identical"
            else:  # another zstd release: only the contents must agree
                same, word = decoded_sections(stored) == decoded_sections(data), f"same contents (zstd {zstd_library()})"
            bad += not same
            print(f"{vector['file']}: {word if same else 'DIFFERENT'}")
        else:
            if not byte_exact_here(vector):
                print(f"{vector['file']}: zstd {zstd_library()} is not the vectors' {recorded_zstd_library()}; "
                      "update zstd_library in vectors.json if you mean to rewrite them with it")
                return 1
            path.write_bytes(data)
            print(f"wrote {vector['file']} ({len(data)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
