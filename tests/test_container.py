"""The .d3 container: round trips, malformed input, atomic writes, spec test vectors."""

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d3codec.errors import D3BudgetError, D3FormatError
from d3codec.format.container import CRC, FIXED_HEADER, Codec, Content, D3Reader, Section, encode_archive, write_archive

SPEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
sys.path.insert(0, str(SPEC))
import vectors as spec_vectors  # noqa: E402


def sample_sections():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    return [
        Section.json("meta", {"format": "d3", "n": 3, "text": "é"}),
        Section.tensors("images", {"x": x, "y": torch.zeros(1000, dtype=torch.uint8)}),
        Section.raw("note", b"hello"),
    ]


def test_round_trip_reads_every_section_back():
    data = encode_archive(sample_sections())
    with D3Reader(data) as r:
        assert [s.name for s in r.sections] == ["meta", "images", "note"]
        assert r.read_json("meta") == {"format": "d3", "n": 3, "text": "é"}
        t = r.read_tensors("images")
        assert torch.equal(t["x"], torch.arange(24, dtype=torch.float32).reshape(2, 3, 4))
        assert t["y"].shape == (1000,) and t["y"].dtype == torch.uint8
        assert r.read_bytes("note") == b"hello"
        assert not r.info("note").critical and r.info("meta").critical
        # the zeros compress, so zstd is chosen; tiny sections stay raw
        assert r.info("images").codec == Codec.ZSTD and r.info("note").codec == Codec.NONE
        assert sum(s.stored_length for s in r.sections) + r.sections[0].offset == len(data)


def test_header_layout_matches_the_spec():
    data = encode_archive([Section.json("meta", {})])
    magic, major, minor, count, table_length = FIXED_HEADER.unpack_from(data)
    assert (magic, major, minor, count) == (b"\x89D3A\r\n\x1a\n", 1, 1, 1)
    assert FIXED_HEADER.unpack_from(encode_archive([Section.json("meta", {})], minor=0))[2] == 0
    assert data[16] == 4 and data[17:21] == b"meta"
    (crc,) = CRC.unpack_from(data, 16 + table_length)
    assert crc == zlib.crc32(data[: 16 + table_length])
    assert data[20 + table_length :] == b"{}"


def test_compress_modes():
    big = [Section.tensors("t", {"z": torch.zeros(4096)})]
    with D3Reader(encode_archive(big, "never")) as r:
        assert r.info("t").codec == Codec.NONE
    with D3Reader(encode_archive(big, "always")) as r:
        assert r.info("t").codec == Codec.ZSTD and torch.equal(r.read_tensors("t")["z"], torch.zeros(4096))


@pytest.mark.parametrize("name", ["", "Meta", "a b", "x" * 65, "-lead", "é"])
def test_invalid_section_names_are_refused_on_write(name):
    with pytest.raises(ValueError):
        encode_archive([Section.raw(name, b"1")])


def test_duplicate_names_are_refused_on_write():
    with pytest.raises(ValueError, match="unique"):
        encode_archive([Section.raw("a", b"1"), Section.raw("a", b"2")])


# -- malformed archives ------------------------------------------------------------------------


def valid() -> bytes:
    return encode_archive(sample_sections())


def test_wrong_magic_and_text_mode_damage():
    data = valid()
    with pytest.raises(D3FormatError, match="offset 0"):
        D3Reader(b"PK\x03\x04" + data[4:])
    with pytest.raises(D3FormatError, match="text mode"):
        D3Reader(data.replace(b"\r\n", b"\n", 1))


def test_unknown_major_version_is_refused():
    data = bytearray(valid())
    data[8] = 2
    with pytest.raises(D3FormatError, match="version 2"):
        D3Reader(bytes(data))


@pytest.mark.parametrize("cut", [0, 5, 16, 30, -1, -100])
def test_truncated_files_are_refused(cut):
    data = valid()
    with pytest.raises(D3FormatError):
        D3Reader(data[:cut])


def test_extra_bytes_are_refused():
    with pytest.raises(D3FormatError, match="extra bytes"):
        D3Reader(valid() + b"\0")


def test_bit_flip_in_section_data_fails_its_checksum():
    data = bytearray(valid())
    with D3Reader(bytes(data)) as r:
        offset = r.info("images").offset
    data[offset + 3] ^= 0x10
    with D3Reader(bytes(data)) as r:  # the header is intact, so opening succeeds
        assert r.read_json("meta")["n"] == 3
        with pytest.raises(D3FormatError, match="checksum"):
            r.read_tensors("images")


def _patch_table(data: bytes, fn) -> bytes:
    """Apply fn to the table bytes and fix the header CRC, to test checks beyond the CRC."""
    _, _, _, _, table_length = FIXED_HEADER.unpack_from(data)
    table = bytearray(data[16 : 16 + table_length])
    fn(table)
    head = data[:16] + bytes(table)
    return head + CRC.pack(zlib.crc32(head)) + data[20 + table_length :]


def test_lying_lengths_are_refused():
    data = valid()
    name_len = data[16]
    stored_at = 1 + name_len + 3  # offset of 'stored length' of the first entry within the table

    def longer(t):
        struct.pack_into("<I", t, stored_at, struct.unpack_from("<I", t, stored_at)[0] + 1)

    with pytest.raises(D3FormatError):
        D3Reader(_patch_table(data, longer))

    def huge_raw(t):
        struct.pack_into("<I", t, stored_at + 4, 0xFFFFFFF0)

    with pytest.raises(D3FormatError, match="exceeds"):
        D3Reader(_patch_table(data, huge_raw))


def test_zstd_frame_declaring_another_size_is_refused_before_decompressing():
    sections = [Section.json("meta", {}), Section.tensors("t", {"z": torch.zeros(4096)})]
    data = encode_archive(sections)
    with D3Reader(data) as r:
        info = r.info("t")
    entry_at = 1 + 4 + 15 + 1 + 1  # second entry's name starts after the first entry and its length byte
    raw_at = entry_at + 3 + 4  # flags, codec, content, stored length

    def smaller_raw(t):
        struct.pack_into("<I", t, raw_at, info.raw_length - 1)

    with D3Reader(_patch_table(data, smaller_raw)) as r, pytest.raises(D3FormatError, match="zstd frame declares"):
        r.read_bytes("t")


def test_duplicate_section_names_in_a_file_are_refused():
    data = encode_archive([Section.raw("aa", b"1"), Section.raw("ab", b"2")])
    with pytest.raises(D3FormatError, match="twice"):
        D3Reader(_patch_table(data, lambda t: t.__setitem__(slice(19, 21), b"aa")))


def test_unknown_codec_critical_refused_ancillary_skipped():
    data = encode_archive([Section.raw("aa", b"1", critical=True), Section.raw("ab", b"2", critical=False)])
    entry = 1 + 2 + 15  # length byte, name "aa", fields
    codec_first, codec_second = 1 + 2 + 1, entry + 1 + 2 + 1

    with pytest.raises(D3FormatError, match="newer"):
        D3Reader(_patch_table(data, lambda t: t.__setitem__(codec_first, 9)))
    with D3Reader(_patch_table(data, lambda t: t.__setitem__(codec_second, 9))) as r:
        assert not r.info("ab").understood and r.read_bytes("aa") == b"1"
        with pytest.raises(D3FormatError, match="unknown"):
            r.read_bytes("ab")


def test_invalid_json_and_non_object_json_are_refused():
    for payload in (b"{", b"[1]", b"\xff", b'{"a": NaN}', b"[" * 100000 + b"]" * 100000):
        data = encode_archive([Section("meta", payload, Content.JSON)])
        with D3Reader(data) as r, pytest.raises(D3FormatError):
            r.read_json("meta")


def test_invalid_safetensors_is_refused():
    data = encode_archive([Section("t", b'\x08\0\0\0\0\0\0\0{"a":1}', Content.SAFETENSORS)])
    with D3Reader(data) as r, pytest.raises(D3FormatError, match="safetensors"):
        r.read_tensors("t")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_archives_read_correctly_or_raise_d3formaterror(data):
    original = valid()
    mutated = bytearray(original)
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice", "byte"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        mutated = mutated[: data.draw(st.integers(0, len(mutated) - 1))]
    elif kind == "splice":
        i = data.draw(st.integers(0, len(mutated)))
        mutated[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    try:
        with D3Reader(bytes(mutated)) as r:
            for s in r.sections:
                if s.content == Content.JSON:
                    r.read_json(s.name)
                elif s.content == Content.SAFETENSORS:
                    r.read_tensors(s.name)
                else:
                    r.read_bytes(s.name)
    except D3FormatError:
        return
    # reading succeeded: then the meaning must be unchanged (the CRCs cover everything else)
    with D3Reader(bytes(mutated)) as r, D3Reader(original) as o:
        assert r.read_json("meta") == o.read_json("meta")


@given(
    st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.binary(max_size=300), st.booleans()),
        min_size=1,
        max_size=8,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from(["auto", "never", "always"]),
)
@settings(max_examples=100, deadline=None)
def test_any_sections_round_trip(sections, compress):
    data = encode_archive([Section.raw(n, p, critical=c) for n, p, c in sections], compress)
    with D3Reader(data) as r:
        assert [(s.name, r.read_bytes(s.name), s.critical) for s in r.sections] == sections


# -- writing -----------------------------------------------------------------------------------


def test_write_is_atomic_and_respects_max_bytes(tmp_path):
    target = tmp_path / "a.d3"
    size = write_archive(target, sample_sections())
    assert target.stat().st_size == size
    before = target.read_bytes()
    with pytest.raises(D3BudgetError) as err:
        write_archive(target, sample_sections() + [Section.raw("big", os.urandom(5000))], max_bytes=size + 100)
    assert err.value.min_budget > size + 100
    assert target.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["a.d3"]  # no temporary file is left


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "b.d3"

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        write_archive(target, sample_sections())
    assert list(tmp_path.iterdir()) == []


# -- spec test vectors -------------------------------------------------------------------------

VECTORS = spec_vectors.load_vectors()
READ = [v for v in VECTORS if v["container"] == "read"]
REFUSED = [v for v in VECTORS if v["container"] == "refuse"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["file"])
def test_spec_vectors_are_written_byte_identically(vector):
    built, stored = spec_vectors.build(vector), (SPEC / vector["file"]).read_bytes()
    if spec_vectors.byte_exact_here(vector):  # zstd bytes are stable only within one zstd library release
        assert built == stored
    assert FIXED_HEADER.unpack_from(stored)[2] == int(vector["version"].split(".")[1])


@pytest.mark.parametrize("vector", READ, ids=lambda v: v["file"])
def test_spec_vectors_are_read_back_as_their_inputs(vector):
    path = SPEC / vector["file"]
    assert spec_vectors.decoded_sections(spec_vectors.build(vector)) == spec_vectors.decoded_sections(path.read_bytes())
    with D3Reader(path) as r:
        assert [s.name for s in r.sections] == [s["name"] for s in vector["sections"]]
        for s in vector["sections"]:
            info = r.info(s["name"])
            assert info.critical == s["critical"]
            assert info.codec == {"none": Codec.NONE, "zstd": Codec.ZSTD}[s["codec"]]
            if s["content"] == "json":
                assert r.read_json(s["name"]) == s["json"]
            elif s["content"] == "bytes":
                assert r.read_bytes(s["name"]) == bytes.fromhex(s["hex"])
            else:
                got = r.read_tensors(s["name"])
                for key, t in s["tensors"].items():
                    want = torch.tensor(t["values"], dtype=spec_vectors.DTYPES[t["dtype"]]).reshape(t["shape"])
                    assert torch.equal(got[key], want)


@pytest.mark.parametrize("vector", REFUSED, ids=lambda v: v["file"])
def test_the_container_refuses_every_negative_container_vector(vector):
    with pytest.raises(D3FormatError):
        with D3Reader(SPEC / vector["file"]) as r:
            for s in r.sections:
                r.read_json(s.name) if s.content == 1 else r.read_bytes(s.name)


def test_spec_vectors_under_another_zstd_release_are_compared_by_contents(monkeypatch):
    monkeypatch.setattr(spec_vectors, "zstd_library", lambda: "0.0.1")
    vectors = {v["file"]: v for v in spec_vectors.load_vectors()}
    assert spec_vectors.byte_exact_here(vectors["minimal.d3"])  # raw sections only: still byte for byte
    pixel = vectors["pixel-uint8.d3"]
    assert not spec_vectors.byte_exact_here(pixel)
    stored = spec_vectors.decoded_sections((SPEC / "pixel-uint8.d3").read_bytes())
    assert spec_vectors.decoded_sections(spec_vectors.build(pixel)) == stored
    changed = json.loads(json.dumps(pixel))  # one JSON value differs: the contents no longer agree
    changed["sections"][0]["json"]["method"] = "d2m"
    assert spec_vectors.decoded_sections(spec_vectors.build(changed)) != stored


def test_written_archive_gets_ordinary_file_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_archive(tmp_path / "p.d3", sample_sections())
    finally:
        os.umask(umask)
    assert (tmp_path / "p.d3").stat().st_mode & 0o777 == 0o644


SAFETENSORS_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.float32,
    torch.float64,
    torch.int64,
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.tuples(st.sampled_from(SAFETENSORS_DTYPES), st.lists(st.integers(0, 6), max_size=3)),
        min_size=1,
        max_size=6,
    )
)
def test_a_planned_section_has_exactly_the_size_safetensors_writes(spec):
    from d3codec.format.container import PlannedBytes, archive_size, safetensors_size

    real = {name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in spec.items()}
    with torch.device("meta"):
        planned = {name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in spec.items()}
    section = Section.tensors("t", real)
    assert safetensors_size(real) == len(section.payload)
    placeholder = Section.tensors("t", planned)
    assert isinstance(placeholder.payload, PlannedBytes) and len(placeholder.payload) == len(section.payload)
    sections = [Section.json("meta", {"format": "d3"}), section]
    assert archive_size(sections) == len(encode_archive(sections, compress="never"))
    assert archive_size([sections[0], placeholder]) == archive_size(sections)
    with pytest.raises(ValueError, match="placeholder"):
        encode_archive([sections[0], placeholder])
