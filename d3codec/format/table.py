"""The ``.d3`` container's fixed header and section table: their constants and a reader that trusts none of them.

spec/FORMAT.md §2 (layout) and §3 (sections) are the normative description; d3codec.format.container writes
archives with these constants and reads them through :func:`read_table`. Every refusal is a
:class:`~d3codec.errors.D3FormatError` (a :class:`~d3codec.errors.D3LimitError` for a section over the
reader's size limit) naming the file, and the offset or section at fault.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

from d3codec.errors import D3FormatError, D3LimitError

MAGIC = b"\x89D3A\r\n\x1a\n"
VERSION_MAJOR = 1
VERSION_MINOR = 1  # what writers write; 1.0 archives are read as before (spec/FORMAT.md §6)

FIXED_HEADER = struct.Struct("<8sBBHI")  # magic, major, minor, section count, table length
ENTRY_FIELDS = struct.Struct("<BBBIII")  # flags, codec, content, stored, raw, crc32
CRC = struct.Struct("<I")

MAX_SECTIONS = 256
MAX_NAME_BYTES = 64
MAX_TABLE_BYTES = MAX_SECTIONS * (1 + MAX_NAME_BYTES + ENTRY_FIELDS.size)  # 256 · 80 = 20 480
MAX_JSON_BYTES = 16 << 20
DEFAULT_MAX_SECTION_BYTES = 1 << 31  # a reader refuses larger declared raw sizes (2 GiB)
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.\-]*")

FLAG_CRITICAL = 0x01


class Codec(IntEnum):
    """How a section's bytes are stored."""

    NONE = 0
    ZSTD = 1


class Content(IntEnum):
    """What a section's raw (decoded) bytes are."""

    BYTES = 0
    JSON = 1
    SAFETENSORS = 2


@dataclass(frozen=True)
class SectionInfo:
    """One row of an archive's section table, as read. Sizes in bytes; offset from file start."""

    name: str
    critical: bool
    codec: int
    content: int
    offset: int
    stored_length: int
    raw_length: int
    crc32: int

    @property
    def understood(self) -> bool:
        """Whether this reader knows the section's codec and content type."""
        return self.codec in Codec._value2member_map_ and self.content in Content._value2member_map_


def read_table(
    file: BinaryIO, file_size: int, where: str, max_section_bytes: int
) -> tuple[tuple[int, int], list[SectionInfo]]:
    """Read and check an archive's header and section table from ``file``, positioned at its start.

    Args:
        file: the archive, read from offset 0 to the end of the header checksum.
        file_size: the archive's size in bytes; the table's stored lengths must add up to it exactly.
        where: the archive's name in error messages (its path, or "archive").
        max_section_bytes: the largest declared raw size accepted for a section this reader understands.
    Returns: the (major, minor) version and the sections in table order, each with its data offset.
    Raises: D3FormatError for a malformed header or table; D3LimitError for a section over ``max_section_bytes``.
    """
    (major, minor), count, table = _read_header(file, file_size, where)
    sections: list[SectionInfo] = []
    seen: set[str] = set()
    pos = 0
    offset = FIXED_HEADER.size + len(table) + CRC.size
    for index in range(count):
        name, fields, end = _read_entry(table, pos, index, count, seen, where)
        flags, codec, content, stored, raw, crc32 = fields
        info = SectionInfo(name, bool(flags & FLAG_CRITICAL), codec, content, offset, stored, raw, crc32)
        _check_entry(info, max_section_bytes, where)
        sections.append(info)
        offset += stored
        pos = end
    if pos != len(table):
        raise D3FormatError(
            f"{where}: offset {FIXED_HEADER.size + pos}: {len(table) - pos} unused bytes at the end "
            "of the section table"
        )
    if offset != file_size:
        state = "truncated" if offset > file_size else "followed by extra bytes"
        raise D3FormatError(
            f"{where}: file is {state}: the table declares {offset} bytes in all, the file holds {file_size}"
        )
    return (major, minor), sections


def _read_header(file: BinaryIO, file_size: int, where: str) -> tuple[tuple[int, int], int, bytes]:
    """The fixed header's version and section count, and the section table's bytes, the header checksum
    verified. Raises: D3FormatError for a bad magic, major version, count or table length, a short file,
    or a checksum mismatch."""
    head = file.read(FIXED_HEADER.size)
    if len(head) < FIXED_HEADER.size:
        raise D3FormatError(f"{where}: file is {len(head)} bytes, too short for a .d3 header ({FIXED_HEADER.size})")
    magic, major, minor, count, table_length = FIXED_HEADER.unpack(head)
    if magic != MAGIC:
        hint = ""
        if magic[1:4] == MAGIC[1:4]:
            hint = " (the signature is damaged: was the file transferred in text mode?)"
        raise D3FormatError(f"{where}: offset 0: not a .d3 archive, magic is {magic!r}{hint}")
    if major != VERSION_MAJOR:
        raise D3FormatError(
            f"{where}: offset 8: format version {major}.{minor} is not supported; this "
            f"d3codec reads version {VERSION_MAJOR}.x: upgrade d3codec"
        )
    if not 1 <= count <= MAX_SECTIONS:
        raise D3FormatError(f"{where}: offset 10: section count {count} is outside 1..{MAX_SECTIONS}")
    if table_length > MAX_TABLE_BYTES:
        raise D3FormatError(f"{where}: offset 12: table length {table_length} exceeds the limit {MAX_TABLE_BYTES}")
    table = file.read(table_length)
    crc_bytes = file.read(CRC.size)
    if len(table) < table_length or len(crc_bytes) < CRC.size:
        raise D3FormatError(
            f"{where}: file ends inside the section table (file is {file_size} bytes, table declares {table_length})"
        )
    (crc,) = CRC.unpack(crc_bytes)
    if zlib.crc32(head + table) != crc:
        raise D3FormatError(
            f"{where}: offset {FIXED_HEADER.size + table_length}: header checksum mismatch "
            "(the header or section table is corrupt)"
        )
    return (major, minor), count, table


def _read_entry(
    table: bytes, pos: int, index: int, count: int, seen: set[str], where: str
) -> tuple[str, tuple[int, ...], int]:
    """Entry ``index`` of ``count``, at ``pos`` in the table: its name (added to ``seen``), its fields
    (flags, codec, content, stored length, raw length, CRC-32) and the table position after it.
    Raises: D3FormatError for a table that ends early, a bad name length, an invalid or repeated name."""
    at = FIXED_HEADER.size + pos
    if pos >= len(table):
        raise D3FormatError(f"{where}: offset {at}: table ends before section {index} of {count}")
    name_length = table[pos]
    end = pos + 1 + name_length + ENTRY_FIELDS.size
    if not 1 <= name_length <= MAX_NAME_BYTES or end > len(table):
        raise D3FormatError(f"{where}: offset {at}: section {index} has a bad name length {name_length}")
    raw_name = table[pos + 1 : pos + 1 + name_length]
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not NAME_PATTERN.fullmatch(name):
        raise D3FormatError(f"{where}: offset {at + 1}: section {index} has an invalid name {raw_name!r}")
    if name in seen:
        raise D3FormatError(f"{where}: offset {at + 1}: section name {name!r} appears twice")
    seen.add(name)
    return name, ENTRY_FIELDS.unpack_from(table, pos + 1 + name_length), end


def _check_entry(info: SectionInfo, max_section_bytes: int, where: str) -> None:
    """Refuse a critical section this reader does not understand, and an understood one whose declared
    sizes break the limits. Raises: D3FormatError; D3LimitError past ``max_section_bytes``."""
    name, codec, content, stored, raw = info.name, info.codec, info.content, info.stored_length, info.raw_length
    if info.critical and not info.understood:
        raise D3FormatError(
            f"{where}: section {name!r}: unknown codec {codec} or content type {content} in a "
            "critical section: this archive needs a newer d3codec"
        )
    if not info.understood:
        return
    if raw > max_section_bytes:
        raise D3LimitError(
            f"{where}: section {name!r}: declared size {raw} bytes exceeds the reader's "
            f"limit of {max_section_bytes} bytes (max_section_bytes); if you trust "
            "this archive, raise it: max_section_bytes=N in Python, --max-section-bytes N "
            "on the command line",
            "bytes",
            raw,
            max_section_bytes,
            "--max-section-bytes",
        )
    if codec == Codec.NONE and stored != raw:
        raise D3FormatError(
            f"{where}: section {name!r}: raw section declares stored length {stored} but raw length {raw}"
        )
    if content == Content.JSON and raw > MAX_JSON_BYTES:
        raise D3FormatError(f"{where}: section {name!r}: JSON of {raw} bytes exceeds {MAX_JSON_BYTES}")
