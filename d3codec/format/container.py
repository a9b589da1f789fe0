"""The ``.d3`` container, version 1: named sections of JSON, safetensors or bytes, each zstd or raw.

This module knows nothing of distillation methods; spec/FORMAT.md is its normative description
and every constant is named there (the header's and table's, and the reader of the table, live in
d3codec.format.table). In short::

    offset 0   magic            8 bytes   89 44 33 41 0D 0A 1A 0A  ("\\x89D3A\\r\\n\\x1a\\n")
    offset 8   major, minor     u8, u8    (1, 1); a reader takes any 1.x
    offset 10  section count    u16       1 .. MAX_SECTIONS
    offset 12  table length     u32       bytes of the section table that follows
    offset 16  section table    entries: u8 name length, name (ASCII), u8 flags, u8 codec,
                                u8 content, u32 stored length, u32 raw length, u32 CRC-32
    then       header CRC-32    u32 over bytes [0, 16 + table length)
    then       section data     stored bytes of each section, in table order, no padding

All integers are little-endian. The file ends exactly where the last section ends.

Example::

    write_archive("a.d3", [Section.json("meta", {"k": 1}), Section.tensors("t", {"x": x})])
    with D3Reader("a.d3") as reader:
        meta = reader.read_json("meta")
        x = reader.read_tensors("t")["x"]
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import safetensors.torch
import torch
import zstandard

from d3codec.errors import D3FormatError, D3LimitError
from d3codec.format.table import (
    CRC,
    DEFAULT_MAX_SECTION_BYTES,
    ENTRY_FIELDS,
    FIXED_HEADER,
    FLAG_CRITICAL,
    MAGIC,
    MAX_NAME_BYTES,
    MAX_SECTIONS,
    NAME_PATTERN,
    VERSION_MAJOR,
    VERSION_MINOR,
    Codec,
    Content,
    SectionInfo,
    read_table,
)

ZSTD_LEVEL = 19


@dataclass(frozen=True)
class Section:
    """One section to write: its raw bytes and how to interpret them.

    Build it with :meth:`json`, :meth:`tensors` or :meth:`raw` rather than by hand.
    """

    name: str
    payload: "bytes | PlannedBytes"  # PlannedBytes: a plan's placeholder, counted, never written
    content: Content
    critical: bool = True

    @classmethod
    def json(cls, name: str, obj: dict, critical: bool = True) -> "Section":
        """A JSON object, serialised canonically (sorted keys, no spaces, UTF-8)."""
        return cls(name, canonical_json(obj), Content.JSON, critical)

    @classmethod
    def tensors(cls, name: str, tensors: dict[str, torch.Tensor], critical: bool = True) -> "Section":
        """A safetensors blob of CPU tensors (any dtype safetensors supports). Tensors on the meta device
        (a plan's placeholders, which hold no memory) give a section of the exact size and no bytes
        (:class:`PlannedBytes`): :func:`archive_size` counts it, :func:`encode_archive` refuses it."""
        if any(v.is_meta for v in tensors.values()):
            return cls(name, PlannedBytes(safetensors_size(tensors)), Content.SAFETENSORS, critical)
        try:
            blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # safetensors' Rust panics (PanicException) derive from BaseException
            raise ValueError(
                f"section {name!r}: safetensors cannot store these tensors ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        return cls(name, blob, Content.SAFETENSORS, critical)

    @classmethod
    def raw(cls, name: str, data: bytes, critical: bool = False) -> "Section":
        """Opaque bytes; ancillary by default."""
        return cls(name, bytes(data), Content.BYTES, critical)


class PlannedBytes:
    """The payload of a planned section: its exact length, and no bytes (see :meth:`Section.tensors`)."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"PlannedBytes({self.length})"


# safetensors' order of tensors in a blob: by dtype, in the reverse of its Rust enum's order, then by name
_SAFETENSORS_DTYPES = {
    torch.bool: ("BOOL", 0),
    torch.uint8: ("U8", 1),
    torch.int8: ("I8", 2),
    torch.int16: ("I16", 3),
    torch.float16: ("F16", 5),
    torch.bfloat16: ("BF16", 6),
    torch.int32: ("I32", 7),
    torch.float32: ("F32", 9),
    torch.float64: ("F64", 10),
    torch.int64: ("I64", 11),
}


def safetensors_size(tensors: dict[str, torch.Tensor]) -> int:
    """The exact length of ``safetensors.torch.save(tensors)`` (no metadata), from the tensors' names,
    dtypes and shapes alone: 8 bytes of header length, the JSON header (its tensors in safetensors' order,
    each with its data offsets) padded with spaces to a multiple of 8, then the data. Works on meta tensors.
    tests/test_container.py checks it against safetensors itself."""
    order = sorted(tensors.items(), key=lambda item: (-_SAFETENSORS_DTYPES[item[1].dtype][1], item[0]))
    at, entries = 0, []
    for key, value in order:
        n = value.numel() * value.element_size()
        shape = ",".join(str(d) for d in value.shape)
        entries.append(
            f'{json.dumps(key, ensure_ascii=False)}:{{"dtype":"{_SAFETENSORS_DTYPES[value.dtype][0]}",'
            f'"shape":[{shape}],"data_offsets":[{at},{at + n}]}}'
        )
        at += n
    header = len(("{" + ",".join(entries) + "}").encode())
    return 8 + header + (-header % 8) + at


def archive_size(sections: Iterable[Section]) -> int:
    """The exact length of ``encode_archive(sections, compress="never")``, counting planned sections
    (:class:`PlannedBytes`) without their bytes."""
    sections = list(sections)
    table = sum(1 + len(_check_name(s.name)) + ENTRY_FIELDS.size for s in sections)
    return FIXED_HEADER.size + table + CRC.size + sum(len(s.payload) for s in sections)


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _check_name(name: str) -> bytes:
    encoded = name.encode("ascii", errors="replace")
    if not (1 <= len(encoded) <= MAX_NAME_BYTES) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"section name {name!r} is invalid: use 1 to {MAX_NAME_BYTES} characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return encoded


def _store(payload: bytes, compress: str) -> tuple[Codec, bytes]:
    if compress == "never":
        return Codec.NONE, payload
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True).compress(payload)
    if compress == "always" or len(packed) < len(payload):
        return Codec.ZSTD, packed
    return Codec.NONE, payload


def address_space_left(extra: int) -> bool:
    """Whether ``extra`` more bytes fit under this process's address-space limit (RLIMIT_AS, ``ulimit -v``),
    from its present size; True where there is no limit (or where it cannot be read)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return True
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError, ValueError, IndexError):
        return True
    return size + extra <= limit


def stored_size(payload: bytes) -> int:
    """Bytes a section with this raw payload takes in the file under ``compress="auto"``."""
    return len(_store(payload, "auto")[1])


def encode_archive(sections: Iterable[Section], compress: str = "auto", minor: int = VERSION_MINOR) -> bytes:
    """Serialise sections into the bytes of a ``.d3`` file.

    Args:
        sections: written in the order given; names must be unique.
        compress: ``"auto"`` (zstd where it makes a section smaller, else raw), ``"never"``
            or ``"always"``. The same inputs and zstandard version give the same bytes.
        minor: the minor format version to write, 0 to VERSION_MINOR (1.0 only for test vectors and
            archives merged from 1.0 parts: the sampling rules of 1.0 differ, spec/FORMAT.md §6).
    Returns: the whole file's bytes.
    Raises: ValueError for an invalid name, duplicate names, or too many or too large sections.
    """
    if compress not in ("auto", "never", "always"):
        raise ValueError(f"compress must be 'auto', 'never' or 'always', not {compress!r}")
    if not 0 <= minor <= VERSION_MINOR:
        raise ValueError(f"minor version must be 0 to {VERSION_MINOR}, not {minor}")
    sections = list(sections)
    if not 1 <= len(sections) <= MAX_SECTIONS:
        raise ValueError(f"an archive holds 1 to {MAX_SECTIONS} sections, not {len(sections)}")
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        raise ValueError(f"section names must be unique: {names}")

    table, blobs = bytearray(), []
    for section in sections:
        name = _check_name(section.name)
        if isinstance(section.payload, PlannedBytes):
            raise ValueError(
                f"section {section.name!r} is a plan's placeholder (meta tensors): it has no bytes to write"
            )
        if len(section.payload) > 0xFFFFFFFF:
            raise ValueError(f"section {section.name!r} is larger than 4 GiB; split it")
        codec, stored = _store(section.payload, compress)
        flags = FLAG_CRITICAL if section.critical else 0
        table += bytes([len(name)]) + name
        table += ENTRY_FIELDS.pack(flags, codec, section.content, len(stored), len(section.payload), zlib.crc32(stored))
        blobs.append(stored)
    head = FIXED_HEADER.pack(MAGIC, VERSION_MAJOR, minor, len(sections), len(table)) + bytes(table)
    return head + CRC.pack(zlib.crc32(head)) + b"".join(blobs)


def write_archive(
    path: str | os.PathLike,
    sections: Iterable[Section],
    *,
    compress: str = "auto",
    max_bytes: int | None = None,
    minor: int = VERSION_MINOR,
) -> int:
    """Encode sections (as :func:`encode_archive`) and write them with :func:`write_atomic`.

    Returns: the file's size in bytes. Raises: as those two functions.
    """
    return write_atomic(path, encode_archive(sections, compress, minor), max_bytes=max_bytes)


def write_atomic(path: str | os.PathLike, data: bytes, *, max_bytes: int | None = None) -> int:
    """Write bytes atomically: temporary file in the same folder, fsync, rename.

    An interrupted or refused write never leaves a partial file at ``path``; an existing file
    there is replaced only once the new one is complete.

    Args:
        path: the target file.
        data: the whole file.
        max_bytes: if given, the file is refused (nothing written) when larger.
    Returns: the file's size in bytes.
    Raises: ``D3BudgetError`` past ``max_bytes``; OSError when the folder is not writable or the
        disk is full (the temporary file is removed).
    """
    from d3codec.errors import D3BudgetError

    if max_bytes is not None and len(data) > max_bytes:
        raise D3BudgetError(
            f"archive would be {len(data)} bytes, over the budget of {max_bytes} bytes; nothing was written",
            min_budget=len(data),
        )
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; an archive is meant to be shared, as open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every platform lets a folder be opened
        dir_fd = os.open(target.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return len(data)


class D3Reader:
    """Reads an archive lazily: the header and table at open, each section when asked for.

    Opening checks the magic, version, header checksum, every declared size against the limits
    and the file's real size; reading a section checks its CRC-32 and decodes it.

    Args:
        source: a path, or bytes of a whole archive.
        max_section_bytes: largest raw (decoded) section size accepted, in bytes; larger declared
            sizes are refused before anything is read or decompressed.
    Raises: D3FormatError for any malformed input, naming the offset and section.
    """

    def __init__(self, source: str | os.PathLike | bytes, *, max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES):
        self.max_section_bytes = max_section_bytes
        if isinstance(source, (bytes, bytearray, memoryview)):
            import io

            self._file: BinaryIO = io.BytesIO(bytes(source))
            self.path = None
            self.file_size = len(source)
        else:
            self.path = Path(source)
            try:
                self._file = open(self.path, "rb")
            except IsADirectoryError as e:
                raise D3FormatError(f"{self.path} is a folder, not a .d3 archive") from e
            self.file_size = os.fstat(self._file.fileno()).st_size
        try:
            where = f"{self.path}" if self.path else "archive"
            self.version, self.sections = read_table(self._file, self.file_size, where, max_section_bytes)
        except BaseException:
            self.close()
            raise
        self._by_name = {s.name: s for s in self.sections}

    # -- sections ----------------------------------------------------------------------------

    def info(self, name: str) -> SectionInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise D3FormatError(
                f"{self.path or 'archive'}: no section named {name!r} (sections: {', '.join(self._by_name)})"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def read_stored(self, name: str) -> bytes:
        """The section's stored bytes, checksum verified, not decoded."""
        info = self.info(name)
        self._file.seek(info.offset)
        stored = self._file.read(info.stored_length)
        if len(stored) != info.stored_length:
            raise D3FormatError(f"section {name!r}: offset {info.offset}: file ends inside the section")
        if zlib.crc32(stored) != info.crc32:
            raise D3FormatError(f"section {name!r}: offset {info.offset}: checksum mismatch (the section is corrupt)")
        return stored

    def read_bytes(self, name: str) -> bytes:
        """The section's raw bytes: checksum verified and decompressed, at most its declared raw length."""
        info = self.info(name)
        if not info.understood:
            raise D3FormatError(
                f"section {name!r}: codec {info.codec} or content {info.content} is unknown to this reader"
            )
        stored = self.read_stored(name)
        if info.codec == Codec.NONE:
            return stored
        try:
            declared = zstandard.frame_content_size(stored)
        except zstandard.ZstdError as e:
            raise D3FormatError(f"section {name!r}: offset {info.offset}: not a zstd frame ({e})") from None
        if declared != info.raw_length:
            raise D3FormatError(
                f"section {name!r}: offset {info.offset}: zstd frame declares {declared} bytes, "
                f"the table {info.raw_length}"
            )
        try:
            raw = zstandard.ZstdDecompressor().decompress(
                stored, max_output_size=info.raw_length, allow_extra_data=False
            )
        except zstandard.ZstdError as e:
            raise D3FormatError(f"section {name!r}: offset {info.offset}: zstd data is corrupt ({e})") from None
        if len(raw) != info.raw_length:
            raise D3FormatError(f"section {name!r}: decompressed to {len(raw)} bytes, the table says {info.raw_length}")
        return raw

    def read_json(self, name: str) -> dict:
        """A JSON section as a dict (see :func:`parse_json`). Raises D3FormatError for invalid UTF-8 or
        JSON, a non-object, NaN or Infinity, a number that overflows, or a key repeated in an object."""
        info = self.info(name)
        if info.content != Content.JSON:
            raise D3FormatError(f"section {name!r} holds content type {info.content}, not JSON")
        try:
            return parse_json(self.read_bytes(name))
        except D3FormatError as e:
            raise D3FormatError(f"section {name!r}: {e}") from None

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A safetensors section as a dict of CPU tensors. Raises D3FormatError if malformed."""
        info = self.info(name)
        if info.content != Content.SAFETENSORS:
            raise D3FormatError(f"section {name!r} holds content type {info.content}, not safetensors")
        raw = self.read_bytes(name)
        if not address_space_left(2 * len(raw)):  # safetensors copies it once more, and panics where it cannot
            raise D3LimitError(
                f"section {name!r}: {len(raw):,} bytes of tensors do not fit twice in what is left of "
                "this process's address space (ulimit -v); lower --max-section-bytes to refuse such "
                "sections up front, or raise the limit",
                "bytes",
                2 * len(raw),
                0,
                "--max-section-bytes",
            )
        try:
            return safetensors.torch.load(raw)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # its own error types, others on odd headers, and Rust panics (PanicException)
            raise D3FormatError(
                f"section {name!r}: invalid safetensors data ({type(e).__name__}: {str(e)[:200]})"
            ) from None

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "D3Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


MAX_JSON_INTEGER = 2**63  # integers must lie in (-2^63, 2^63): what every JSON reader can hold exactly


def _refuse_constant(token: str):
    raise ValueError(f"{token} is not valid JSON")


def _finite_float(token: str) -> float:
    value = float(token)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {token[:40]} overflows a 64-bit float")
    return value


def _bounded_int(token: str) -> int:
    value = int(token)
    if not -MAX_JSON_INTEGER < value < MAX_JSON_INTEGER:
        raise ValueError(f"the integer {token[:40]}{'…' if len(token) > 40 else ''} is outside ±2^63")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return obj


def parse_json(raw: bytes) -> dict:
    """The JSON object in ``raw`` (UTF-8), parsed as spec/FORMAT.md §3 demands: NaN and Infinity refused,
    numbers that overflow a 64-bit float (``1e400``) refused, integers outside ±2^63 refused, a key
    repeated within one object refused.

    Raises: D3FormatError saying what is wrong.
    """
    try:
        obj = json.loads(
            raw.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise D3FormatError(f"invalid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise D3FormatError(f"JSON must be an object, not {type(obj).__name__}")
    return obj
