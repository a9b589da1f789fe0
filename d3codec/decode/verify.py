"""``d3 verify``: check everything an archive claims about itself, trusting no declared size.

The checks, in order (each one needs the ones before it):

1. container: magic, version, section table, header checksum, and that the table's sizes add up to
   the file's size exactly (d3codec.format.container.D3Reader);
2. sections: every section's stored checksum, and every section this reader understands
   decompressed to exactly its declared raw length (declared sizes are bounded by the reader's
   limit before any decompression, and zstd may not produce more than that), then parsed
   (JSON, safetensors);
3. metadata: the required fields, a method this d3codec knows, no unknown critical section;
4. byte accounting: the file is within ``accounting.budget_bytes`` and ``budget.bytes``;
5. decode budget: what the archive's default expansion would cost (output bytes, stored values,
   multiply-adds per image; d3codec.format.limits) is within the limits, computed from its declared shapes
   before any decoder runs;
6. contents: the method's decoder reads its sections (images, priors and decoders, generator,
   schedule, soft labels: finite probabilities that sum to 1), drawing one sample per class from
   sampled archives.

Every detail and reason is printable text (d3codec.format.text): nothing from the archive reaches a
terminal raw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from d3codec.errors import D3Error, D3FormatError, D3LimitError
from d3codec.format.container import Content, D3Reader
from d3codec.format.limits import DEFAULT_LIMITS, DecodeLimits
from d3codec.format.text import safe_text


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


def verify_archive(path: str | os.PathLike | bytes, limits: DecodeLimits | None = None) -> Verification:
    """Run every check on the archive at ``path`` (or its bytes); stops at the first failure. Never
    raises for a bad archive (the failure is in the result); raises OSError if the file cannot be opened.

    ``limits``: d3codec.format.limits.DecodeLimits (default its defaults); an archive over them fails the
    "decode budget" check and no decoder of it is run.
    """
    from d3codec.format.meta import check_sections, known_kind, read_meta

    limits = limits or DEFAULT_LIMITS
    result = Verification(safe_text(path if not isinstance(path, (bytes, bytearray)) else "archive", 300))
    step = "container"
    try:
        with D3Reader(path, max_section_bytes=limits.max_section_bytes) as reader:
            result.checks.append(
                (
                    step,
                    f"format {reader.version[0]}.{reader.version[1]}, {len(reader.sections)} "
                    f"sections, sizes add up to the file's {reader.file_size} bytes",
                )
            )
            step = "sections"
            _read_every_section(reader)
            result.checks.append((step, "every checksum matches; every section decodes to its declared size"))
            step = "metadata"
            meta = read_meta(reader)
            kind = known_kind(meta)
            check_sections(reader, kind.sections)
            result.checks.append(
                (
                    step,
                    f"method {meta['method']}, dataset '{safe_text(meta['dataset']['name'])}', "
                    f"{len(meta['dataset']['classes'])} classes",
                )
            )
            step = "byte accounting"
            result.checks.append((step, _check_accounting(reader, meta)))
            step = "contents"  # the limits are checked first within it; a refusal is reported as "decode budget"
            result.checks.append((step, _check_contents(reader, meta, kind.sampled, limits, result)))
    except D3LimitError as error:
        result.failure = ("decode budget", safe_text(str(error), 2000))
    except D3Error as error:
        result.failure = (step, safe_text(str(error), 2000))
    except (ValueError, RuntimeError) as error:  # a decoder's own refusal not yet worded as D3FormatError
        result.failure = (step, safe_text(f"{type(error).__name__}: {error}", 2000))
    return result


def _read_every_section(reader: D3Reader) -> None:
    """The "sections" check: every section's checksum, and every understood one decoded and parsed.

    Raises: D3FormatError (or D3LimitError) for the first section that fails.
    """
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


def _check_accounting(reader: D3Reader, meta: dict) -> str:
    """The "byte accounting" check: the file's size within the budgets the metadata states; returns its detail.

    Raises: D3FormatError naming the budget the file exceeds.
    """
    limits_stated = {
        "accounting.budget_bytes": (meta.get("accounting") or {}).get("budget_bytes"),
        "budget.bytes": (meta.get("budget") or {}).get("bytes"),
    }
    stated = {k: v for k, v in limits_stated.items() if v is not None}  # types checked with the metadata
    for key, value in stated.items():
        if reader.file_size > value:
            raise D3FormatError(f"the file is {reader.file_size} bytes, over its {key} of {value}")
    return f"{reader.file_size} bytes within " + (
        ", ".join(f"{k} {v}" for k, v in stated.items()) or "no stated budget"
    )


def _check_contents(reader: D3Reader, meta: dict, sampled: bool, limits: DecodeLimits, result: Verification) -> str:
    """The "decode budget" check (appended to ``result``), then the "contents" check, whose detail it returns:
    decode the archive (one sample per class when ``sampled``) and run its stored labeller, if any, on the images.

    Raises: D3LimitError over ``limits``; D3FormatError (or a decoder's ValueError) for bad contents.
    """
    from d3codec.decode.dataset import decode_archive
    from d3codec.decode.labeller import read_labeller

    images, labels, soft, schedule, sampler = decode_archive(
        reader, meta, 1 if sampled else None, 0, "cpu", limits, check_default=True
    )
    if sampled:
        count, _ = sampler.counts(None)
        budget_detail = f"the default draw of {count} images is within the limits"
    else:
        budget_detail = f"{len(labels)} decoded images are within the limits"
    result.checks.append(
        (
            "decode budget",
            budget_detail + f" ({limits.max_bytes} bytes, "
            f"{limits.max_parameters} values, {limits.max_macs_per_image} multiply-adds per image, "
            f"{limits.max_macs} in all)",
        )
    )
    extra = (
        f", a {schedule.network} schedule of {schedule.steps}×{schedule.epochs} steps" if schedule is not None else ""
    )
    labeller = read_labeller(reader, meta, "cpu", limits)
    if labeller is not None:  # it runs on the decoded images, as a student would ask it
        labels_given = labeller(images[:8])
        if not bool(torch.isfinite(labels_given).all()):
            raise D3FormatError("the stored labeller's soft labels of the decoded images are not finite")
        net: Any = labeller.net  # a ConvNet: its layers are not in nn.Module's type
        extra += f", a width-{net.features[0].out_channels} labeller ({tuple(labels_given.shape)})"
    return (
        f"{len(labels)} images of shape {tuple(images.shape[1:])} decoded"
        f"{' (one sample per class)' if sampled else ''}"
        f"{', soft labels checked' if soft is not None else ''}{extra}"
    )
