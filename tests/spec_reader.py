"""A .d3 reader written from spec/FORMAT.md alone: it imports nothing of d3codec.

It exists to show the specification is enough to read an archive: tests/test_spec_reader.py
reads every test vector with it and compares the result with the vectors' inputs. It uses the
public zstandard and numpy packages and parses safetensors by its own published layout (8-byte
little-endian header length, JSON header, data).
"""

from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np
import zstandard

MAGIC = bytes.fromhex("894433410D0A1A0A")  # §2
MAX_SECTIONS, MAX_TABLE = 256, 20_736  # §2, §4
MAX_JSON = 16 << 20  # §3, §4
NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")  # §3
CODECS, CONTENTS = {0: "none", 1: "zstd"}, {0: "bytes", 1: "json", 2: "safetensors"}  # §3
SAFETENSORS_DTYPES = {"U8": np.uint8, "I8": np.int8, "I32": np.int32, "I64": np.int64, "F16": np.float16,
                      "F32": np.float32, "F64": np.float64, "BOOL": np.bool_}


class SpecError(Exception):
    """The archive breaks a MUST of spec/FORMAT.md."""


def parse_safetensors(blob: bytes) -> dict[str, np.ndarray]:
    """name → array (little-endian, row-major) of one safetensors blob."""
    if len(blob) < 8:
        raise SpecError("safetensors blob shorter than its header length")
    (n,) = struct.unpack_from("<Q", blob)
    if 8 + n > len(blob):
        raise SpecError("safetensors header runs past the blob")
    header = json.loads(blob[8:8 + n])
    data, out = blob[8 + n:], {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        if not 0 <= start <= end <= len(data) or end - start != count * dtype.itemsize:
            raise SpecError(f"tensor {key!r}: data offsets do not match its shape and dtype")
        out[key] = np.frombuffer(data[start:end], dtype=dtype).reshape(entry["shape"])
    return out


def read(data: bytes) -> list[dict]:
    """Every section of an archive: name, critical, codec, content, value (bytes, dict, or dict of arrays)."""
    if len(data) < 16 or data[:8] != MAGIC:
        raise SpecError("not a .d3 archive (magic)")
    major, _minor, count, table_length = struct.unpack_from("<BBHI", data, 8)
    if major != 1 or not 1 <= count <= MAX_SECTIONS or table_length > MAX_TABLE:
        raise SpecError("unsupported version, section count or table length")
    table_end = 16 + table_length
    if len(data) < table_end + 4 or zlib.crc32(data[:table_end]) != struct.unpack_from("<I", data, table_end)[0]:
        raise SpecError("header CRC")
    entries, pos, offset, names = [], 16, table_end + 4, set()
    for _ in range(count):
        length = data[pos]
        name = data[pos + 1:pos + 1 + length].decode("ascii")
        if not 1 <= length <= 64 or not NAME.fullmatch(name) or name in names:
            raise SpecError(f"bad section name {name!r}")
        names.add(name)
        flags, codec, content, stored, raw, crc = struct.unpack_from("<BBBIII", data, pos + 1 + length)
        entries.append((name, bool(flags & 1), codec, content, offset, stored, raw, crc))
        offset += stored
        pos += 1 + length + 15
    if pos != table_end or offset != len(data):
        raise SpecError("the table does not fill T exactly, or the sizes do not add up to the file")
    sections = []
    for name, critical, codec, content, start, stored, raw, crc in entries:
        blob = data[start:start + stored]
        if zlib.crc32(blob) != crc:
            raise SpecError(f"section {name!r}: CRC")
        if codec not in CODECS or content not in CONTENTS:
            if critical:
                raise SpecError(f"critical section {name!r} of unknown codec or content")
            continue  # an unknown ancillary section is skipped
        if codec == 1:
            if zstandard.frame_content_size(blob) != raw:
                raise SpecError(f"section {name!r}: zstd frame size differs from the raw length")
            blob = zstandard.ZstdDecompressor().decompress(blob, max_output_size=raw)
        if len(blob) != raw:
            raise SpecError(f"section {name!r}: raw length")
        kind = CONTENTS[content]
        if kind == "json":
            if raw > MAX_JSON:
                raise SpecError(f"section {name!r}: JSON too large")
            value = json.loads(blob.decode("utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(SpecError(c)))
        elif kind == "safetensors":
            value = parse_safetensors(blob)
        else:
            value = blob
        sections.append({"name": name, "critical": critical, "codec": CODECS[codec], "content": kind, "value": value})
    return sections
