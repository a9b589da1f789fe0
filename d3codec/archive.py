"""A d3 archive: a container whose first section is the ``meta`` JSON this module validates.

The container (d3codec.container) knows only sections; this layer knows what a dataset archive
holds: the method that wrote it, the dataset's classes and image shape, the normalisation, the
budget and the byte accounting. Which other sections exist is the method's business.
"""

from __future__ import annotations

import os
from typing import Any

from .container import D3Reader
from .errors import D3FormatError

FORMAT_NAME = "d3"
MAX_CLASSES = 100_000
MAX_SIDE = 4096


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise D3FormatError(f"meta: {message}")


def validate_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Check the fields every archive must have. Returns meta; raises D3FormatError naming the field."""
    _require(meta.get("format") == FORMAT_NAME, f"'format' must be {FORMAT_NAME!r}")
    _require(isinstance(meta.get("method"), str), "'method' must be a string")
    ds = meta.get("dataset")
    _require(isinstance(ds, dict), "'dataset' must be an object")
    classes = ds.get("classes")
    _require(isinstance(classes, list) and 1 <= len(classes) <= MAX_CLASSES
             and all(isinstance(c, str) for c in classes), f"'dataset.classes' must be 1 to {MAX_CLASSES} strings")
    _require(len(set(classes)) == len(classes), "'dataset.classes' has duplicate names")
    shape = ds.get("image_shape")
    _require(isinstance(shape, list) and len(shape) == 3
             and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
             and shape[0] in (1, 3) and all(1 <= v <= MAX_SIDE for v in shape[1:]),
             f"'dataset.image_shape' must be [C, H, W] with C 1 or 3 and sides 1..{MAX_SIDE}")
    for key in ("mean", "std"):
        v = ds.get(key)
        _require(isinstance(v, list) and len(v) == shape[0]
                 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
                 f"'dataset.{key}' must be {shape[0]} numbers")
    _require(all(s > 0 for s in ds["std"]), "'dataset.std' must be positive")
    for key in ("params", "stats", "budget", "accounting", "software"):
        _require(key not in meta or isinstance(meta[key], dict), f"'{key}' must be an object")
    return meta


def read_meta(reader: D3Reader) -> dict[str, Any]:
    """The validated metadata of an open archive (its first section must be the JSON 'meta')."""
    first = reader.sections[0].name
    if first != "meta":
        raise D3FormatError(f"the first section must be 'meta', not {first!r}")
    return validate_meta(reader.read_json("meta"))


def check_sections(reader: D3Reader, known: set[str]) -> None:
    """Refuse unknown critical sections; unknown ancillary ones are skipped silently."""
    for info in reader.sections:
        if info.critical and info.name not in known:
            raise D3FormatError(f"unknown critical section {info.name!r} at offset {info.offset}: this archive "
                                "needs a newer d3codec")


def open_archive(path: str | os.PathLike | bytes) -> tuple[D3Reader, dict[str, Any]]:
    """Open an archive and validate its metadata and sections. Returns (reader, meta); close the reader."""
    from .methods import SECTIONS

    reader = D3Reader(path)
    try:
        meta = read_meta(reader)
        if meta["method"] not in SECTIONS:
            raise D3FormatError(f"meta: unknown method {meta['method']!r}; this d3codec knows "
                                f"{', '.join(SECTIONS)}: upgrade d3codec")
        check_sections(reader, SECTIONS[meta["method"]])
    except BaseException:
        reader.close()
        raise
    return reader, meta


def byte_table(reader: D3Reader, budget: int | None) -> list[dict[str, Any]]:
    """One row per part of the file: header and table, then each section, then the total.

    Each row: name, raw bytes, stored bytes, share of the file and of the budget (fractions, or
    None without a budget). The stored bytes add up to the file size exactly.
    """
    header = reader.sections[0].offset if reader.sections else reader.file_size
    rows = [{"name": "(header + table)", "raw": header, "stored": header, "codec": "-", "critical": True}]
    for s in reader.sections:
        rows.append({"name": s.name, "raw": s.raw_length, "stored": s.stored_length,
                     "codec": {0: "raw", 1: "zstd"}.get(s.codec, f"codec {s.codec}"), "critical": s.critical})
    rows.append({"name": "total", "raw": sum(r["raw"] for r in rows), "stored": reader.file_size, "codec": "",
                 "critical": None})
    for r in rows:
        r["file_share"] = r["stored"] / reader.file_size
        r["budget_share"] = r["stored"] / budget if budget else None
    return rows
