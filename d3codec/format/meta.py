"""A d3 archive: a container whose first section is the ``meta`` JSON this module validates.

The container (d3codec.format.container) knows only sections; this layer knows what a dataset archive
holds: the method that wrote it, the dataset's classes and image shape, the normalisation, the
budget and the byte accounting. Which other sections exist is the method's business.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any, Mapping

import torch

from d3codec.errors import D3FormatError
from d3codec.format.accounting import ipc_equivalent
from d3codec.format.container import D3Reader
from d3codec.format.limits import DEFAULT_LIMITS
from d3codec.format.text import safe_text
from d3codec.registry import ArchiveKind, archive_kind, archive_kind_names
from d3codec.version import __version__

FORMAT_NAME = "d3"
# sections any archive may carry, whatever its method (name → critical): the stored labeller (§5.8)
COMMON_SECTIONS = {"labeller": False}
MAX_CLASSES = 100_000
MAX_SIDE = 4096
# dataset.mean and dataset.std (spec/FORMAT.md §5.1): pixel-space statistics, so finite in float32 and std > 0
NORMALISATION_RANGE = {"mean": (-1000.0, 1000.0), "std": (1e-6, 1000.0)}
MAX_BUDGET_BYTES = 2**62
MAX_SEED = 2**63 - 1  # a JSON integer (§3)
_MISSING = object()


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise D3FormatError(f"meta: {message}")


def describe(value: Any) -> str:
    """A short, printable description of a JSON value for an error message."""
    if isinstance(value, str):
        return f"the string {safe_text(repr(value), 60)}"
    if isinstance(value, (dict, list)):
        return f"a{'n object' if isinstance(value, dict) else ' list'} of {len(value)} items"
    return safe_text(repr(value), 60)


def _get(obj: Any, key: str, where: str, default: Any) -> Any:
    if not isinstance(obj, dict):
        raise D3FormatError(f"meta: '{where.rstrip('.')}' must be an object, not {describe(obj)}")
    if key not in obj:
        if default is _MISSING:
            raise D3FormatError(f"meta: '{where}{key}' is missing")
        return default
    return obj[key]


def meta_int(obj: Any, key: str, lo: int, hi: int, where: str = "", default: Any = _MISSING) -> int:
    """``obj[key]`` as an integer in [lo, hi]: a JSON integer (not a boolean, not ``4.0``).

    ``where`` is the path of ``obj`` in the metadata (``"params."``), for the error. A missing key
    gives ``default`` where one is given. Raises: D3FormatError naming the field, the range and the value.
    """
    value = _get(obj, key, where, default)
    if value is default and default is not _MISSING:
        return value
    if type(value) is not int or not lo <= value <= hi:
        raise D3FormatError(f"meta: '{where}{key}' must be an integer from {lo} to {hi}, not {describe(value)}")
    return value


def meta_number(obj: Any, key: str, lo: float, hi: float, where: str = "", default: Any = _MISSING) -> float:
    """``obj[key]`` as a finite number in [lo, hi] (see :func:`meta_int`)."""
    value = _get(obj, key, where, default)
    if value is default and default is not _MISSING:
        return value
    if type(value) not in (int, float) or not lo <= value <= hi:
        raise D3FormatError(f"meta: '{where}{key}' must be a number from {lo} to {hi}, not {describe(value)}")
    return float(value)


def meta_str(
    obj: Any, key: str, choices: tuple[str, ...] | None = None, where: str = "", default: Any = _MISSING
) -> str:
    """``obj[key]`` as a string, one of ``choices`` where given (see :func:`meta_int`)."""
    value = _get(obj, key, where, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str) or (choices is not None and value not in choices):
        one_of = f"one of {', '.join(map(repr, choices))}" if choices is not None else "a string"
        raise D3FormatError(f"meta: '{where}{key}' must be {one_of}, not {describe(value)}")
    return value


def meta_bool(obj: Any, key: str, where: str = "", default: Any = _MISSING) -> bool:
    """``obj[key]`` as a JSON boolean (see :func:`meta_int`)."""
    value = _get(obj, key, where, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, bool):
        raise D3FormatError(f"meta: '{where}{key}' must be true or false, not {describe(value)}")
    return value


def utc_now() -> str:
    """The creation time archives record: UTC, ISO 8601, whole seconds."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def base_meta(spec, method: str, budget: int, ipc: float | None, seed: int | None, created: str) -> dict:
    """The metadata fields every archive carries (spec/FORMAT.md §5), before the method's own.
    ``spec``: the dataset's d3codec.encode.interface.DatasetSpec (name, classes, image_shape, mean, std)."""
    return {
        "format": FORMAT_NAME,
        "method": method,
        "dataset": {
            "name": spec.name,
            "classes": list(spec.classes),
            "image_shape": list(spec.image_shape),
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "budget": {"bytes": budget, "ipc": ipc},
        "seed": seed,
        "created": created,
        "software": {"d3codec": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def validate_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Check the fields every archive must have (spec/FORMAT.md §5), with their JSON types.

    Returns meta; raises D3FormatError naming the field.
    """
    _require(meta.get("format") == FORMAT_NAME, f"'format' must be {FORMAT_NAME!r}")
    meta_str(meta, "method")
    ds: Any = meta.get("dataset")  # JSON: its fields' types are checked here
    _require(isinstance(ds, dict), "'dataset' must be an object")
    meta_str(ds, "name", where="dataset.")
    classes = ds.get("classes")
    _require(
        isinstance(classes, list) and 1 <= len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes),
        f"'dataset.classes' must be 1 to {MAX_CLASSES} strings",
    )
    _require(len(set(classes)) == len(classes), "'dataset.classes' has duplicate names")
    shape = ds.get("image_shape")
    _require(
        isinstance(shape, list)
        and len(shape) == 3
        and all(type(v) is int for v in shape)
        and shape[0] in (1, 3)
        and all(1 <= v <= MAX_SIDE for v in shape[1:]),
        f"'dataset.image_shape' must be [C, H, W] with C 1 or 3 and sides 1..{MAX_SIDE}",
    )
    for key, (lo, hi) in NORMALISATION_RANGE.items():  # finite, and std > 0, in the float32 students use
        v = ds.get(key)
        _require(
            isinstance(v, list) and len(v) == shape[0] and all(type(x) in (int, float) and lo <= x <= hi for x in v),
            f"'dataset.{key}' must be {shape[0]} numbers from {lo:g} to {hi:g}",
        )
    for key in ("params", "stats", "budget", "accounting", "software", "labeller"):
        _require(key not in meta or isinstance(meta[key], dict), f"'{key}' must be an object")
    budget, accounting = meta.get("budget") or {}, meta.get("accounting") or {}
    for obj, key, where in (
        (budget, "bytes", "budget."),
        (accounting, "budget_bytes", "accounting."),
        (accounting, "bound_bytes", "accounting."),
    ):
        if obj.get(key) is not None:
            meta_int(obj, key, 1, MAX_BUDGET_BYTES, where)
    if budget.get("ipc") is not None:
        meta_number(budget, "ipc", 0, 1e12, "budget.")
    if meta.get("seed") is not None:
        meta_int(meta, "seed", 0, MAX_SEED)
    return meta


def read_meta(reader: D3Reader) -> dict[str, Any]:
    """The validated metadata of an open archive (its first section must be the critical JSON 'meta')."""
    first = reader.sections[0]
    if first.name != "meta":
        raise D3FormatError(f"the first section must be 'meta', not {first.name!r}")
    if not first.critical:
        raise D3FormatError("section 'meta' must be critical (spec/FORMAT.md §5); this one is flagged ancillary")
    return validate_meta(reader.read_json("meta"))


def check_sections(reader: D3Reader, known: Mapping[str, bool]) -> None:
    """Refuse unknown critical sections, and known ones whose critical flag is not the one ``known``
    (name → critical; COMMON_SECTIONS are known to every archive) defines; unknown ancillary ones are
    skipped silently."""
    known = {**COMMON_SECTIONS, **known}
    for info in reader.sections:
        if info.name in known:
            if info.critical != known[info.name]:
                want = "critical" if known[info.name] else "ancillary"
                raise D3FormatError(
                    f"section {info.name!r} must be {want} (spec/FORMAT.md §5); this one is "
                    f"flagged {'critical' if info.critical else 'ancillary'}"
                )
        elif info.critical:
            raise D3FormatError(
                f"unknown critical section {info.name!r} at offset {info.offset}: this archive needs a newer d3codec"
            )


def known_kind(meta: dict[str, Any]) -> ArchiveKind:
    """The registered archive kind (d3codec.registry.ArchiveKind) of ``meta.method``.
    Raises: D3FormatError naming the kinds this d3codec reads."""
    kind = archive_kind(meta["method"])
    if kind is None:
        raise D3FormatError(
            f"meta: unknown method {safe_text(repr(meta['method']), 60)}; this d3codec reads "
            f"{', '.join(archive_kind_names())}: upgrade d3codec"
        )
    return kind


def open_archive(path: str | os.PathLike | bytes, limits=None) -> tuple[D3Reader, dict[str, Any]]:
    """Open an archive and validate its metadata and sections. Returns (reader, meta); close the reader.

    ``limits`` (d3codec.format.limits.DecodeLimits): its ``max_section_bytes`` bounds every section's declared
    raw size, checked from the table before anything is decompressed."""
    reader = D3Reader(path, max_section_bytes=(limits or DEFAULT_LIMITS).max_section_bytes)
    try:
        meta = read_meta(reader)
        check_sections(reader, known_kind(meta).sections)
    except BaseException:
        reader.close()
        raise
    return reader, meta


def open_archive_or_container(path: str | os.PathLike | bytes, limits=None) -> tuple[D3Reader, dict[str, Any] | None]:
    """As :func:`open_archive`, but a bare container (sections written with d3codec.write_archive and no
    dataset metadata: no first section 'meta', or a 'meta' without a 'method') opens with meta None.
    A 'meta' that names a method is validated as :func:`open_archive` does. Returns (reader, meta or None)."""
    reader = D3Reader(path, max_section_bytes=(limits or DEFAULT_LIMITS).max_section_bytes)
    try:
        first = reader.sections[0]
        if first.name == "meta" and "method" in _json_object(reader):
            meta = read_meta(reader)
            check_sections(reader, known_kind(meta).sections)
            return reader, meta
        return reader, None
    except BaseException:
        reader.close()
        raise


def _json_object(reader: D3Reader) -> dict:
    try:
        value = reader.read_json("meta")
    except D3FormatError:
        return {"method": None}  # not JSON: validated (and refused) as an archive's meta
    return value if isinstance(value, dict) else {"method": None}


def summary(meta: dict[str, Any], file_bytes: int) -> str:
    """One line: the method and what it stored, the dataset, the file's bytes against its budget, the
    IPC-equivalent. Every string from the archive is made printable (d3codec.format.text.safe_text)."""
    kind = known_kind(meta)
    try:
        stored = kind.describe(meta.get("params")) if kind.describe is not None else ""
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        stored = ""  # hostile params: the decoders refuse them; a summary just leaves them out
    ds = meta["dataset"]
    budget = (meta.get("budget") or {}).get("bytes")
    against = f" of a {budget:,}-byte budget ({100 * file_bytes / budget:.1f} %)" if budget else ""
    ipc_eq = ipc_equivalent(file_bytes, len(ds["classes"]), tuple(ds["image_shape"]))
    return (
        f"{safe_text(meta['method'], 60)}{f' ({safe_text(stored, 300)})' if stored else ''} · "
        f"{safe_text(ds['name'], 80)}: {len(ds['classes'])} classes of {'×'.join(map(str, ds['image_shape']))} "
        f"· {file_bytes:,} bytes{against} · IPC-equivalent {ipc_eq:.3f}"
    )


def byte_table(reader: D3Reader, budget: int | None) -> list[dict[str, Any]]:
    """One row per part of the file: header and table, then each section, then the total.

    Each row: name, raw bytes, stored bytes, share of the file and of the budget (fractions, or
    None without a budget). The stored bytes add up to the file size exactly.
    """
    header = reader.sections[0].offset if reader.sections else reader.file_size
    rows: list[dict[str, Any]] = [
        {"name": "(header + table)", "raw": header, "stored": header, "codec": "-", "critical": True}
    ]
    for s in reader.sections:
        rows.append(
            {
                "name": s.name,
                "raw": s.raw_length,
                "stored": s.stored_length,
                "codec": {0: "raw", 1: "zstd"}.get(s.codec, f"codec {s.codec}"),
                "critical": s.critical,
            }
        )
    rows.append(
        {"name": "total", "raw": sum(r["raw"] for r in rows), "stored": reader.file_size, "codec": "", "critical": None}
    )
    for r in rows:
        r["file_share"] = r["stored"] / reader.file_size
        r["budget_share"] = r["stored"] / budget if budget else None
    return rows
