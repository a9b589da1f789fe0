"""``d3 verify``: check everything an archive claims about itself, trusting no declared size.

The checks, in order (each one needs the ones before it):

1. container: magic, version, section table, header checksum, and that the table's sizes add up to
   the file's size exactly (d3codec.container.D3Reader);
2. sections: every section's stored checksum, and every section this reader understands
   decompressed to exactly its declared raw length (declared sizes are bounded by the reader's
   limit before any decompression, and zstd may not produce more than that), then parsed
   (JSON, safetensors);
3. metadata: the required fields, a method this d3codec knows, no unknown critical section;
4. byte accounting: the file is within ``accounting.budget_bytes`` and ``budget.bytes``;
5. contents: the method's decoder reads its sections (images, priors and decoders, generator,
   schedule), drawing one sample per class from sampled archives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .container import Content, D3Reader
from .errors import D3Error, D3FormatError


@dataclass
class Verification:
    """What :func:`verify_archive` found: ``checks`` (name, detail) passed in order; ``failure``
    (name, reason) for the first that failed, or None."""

    path: str
    checks: list[tuple[str, str]] = field(default_factory=list)
    failure: tuple[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def verify_archive(path: str | os.PathLike) -> Verification:
    """Run every check on the archive at ``path``; stops at the first failure. Never raises for a bad
    archive (the failure is in the result); raises OSError if the file cannot be opened."""
    from . import D3Dataset
    from .archive import check_sections, validate_meta
    from .methods import SECTIONS

    result = Verification(str(path))
    step = "container"
    try:
        with D3Reader(path) as reader:
            result.checks.append((step, f"format {reader.version[0]}.{reader.version[1]}, {len(reader.sections)} "
                                        f"sections, sizes add up to the file's {reader.file_size} bytes"))
            step = "sections"
            for info in reader.sections:
                if not info.understood:
                    reader.read_stored(info.name)  # its checksum at least
                    continue
                raw = reader.read_bytes(info.name)
                if info.content == Content.JSON:
                    reader.read_json(info.name)
                elif info.content == Content.SAFETENSORS:
                    reader.read_tensors(info.name)
                del raw
            result.checks.append((step, "every checksum matches; every section decodes to its declared size"))
            step = "metadata"
            if reader.sections[0].name != "meta":
                raise D3FormatError(f"the first section must be 'meta', not {reader.sections[0].name!r}")
            meta = validate_meta(reader.read_json("meta"))
            if meta["method"] not in SECTIONS:
                raise D3FormatError(f"unknown method {meta['method']!r}")
            check_sections(reader, SECTIONS[meta["method"]])
            result.checks.append((step, f"method {meta['method']}, dataset {meta['dataset'].get('name')!r}, "
                                        f"{len(meta['dataset']['classes'])} classes"))
            step = "byte accounting"
            limits = {"accounting.budget_bytes": (meta.get("accounting") or {}).get("budget_bytes"),
                      "budget.bytes": (meta.get("budget") or {}).get("bytes")}
            stated = {k: v for k, v in limits.items() if v is not None}
            for key, value in stated.items():
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise D3FormatError(f"{key} must be a positive integer, not {value!r}")
                if reader.file_size > value:
                    raise D3FormatError(f"the file is {reader.file_size} bytes, over its {key} of {value}")
            result.checks.append((step, f"{reader.file_size} bytes within " + (
                ", ".join(f"{k} {v}" for k, v in stated.items()) or "no stated budget")))
        step = "contents"
        sampled = meta["method"] in ("d3", "d2m")
        ds = D3Dataset(path, samples_per_class=1 if sampled else None)
        extra = f", a {ds.schedule.network} schedule of {ds.schedule.steps}×{ds.schedule.epochs} steps" \
            if getattr(ds, "schedule", None) is not None else ""
        result.checks.append((step, f"{len(ds)} images of shape {ds.image_shape} decoded"
                                    f"{' (one sample per class)' if sampled else ''}{extra}"))
    except D3Error as error:
        result.failure = (step, str(error))
    except (ValueError, RuntimeError) as error:  # a decoder's own refusal not yet worded as D3FormatError
        result.failure = (step, f"{type(error).__name__}: {error}")
    return result
