"""Merging archives of disjoint classes into one (federated distillation, Qin et al. 2024, Sec. 3.3).

Each D3 archive is a list of groups (classes, priors, a decoder, soft labels over the group's own
classes). A merged archive lists the groups of its parts in order, with class offsets: part i's
classes follow part i−1's, its tensors are renamed to the merged group numbers, and nothing is
re-coded, so a merged archive expands to exactly the union of its parts' images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from d3codec.encode.interface import DatasetSpec
from d3codec.errors import D3BudgetError, D3Error, D3FormatError
from d3codec.format.container import VERSION_MINOR, Section, encode_archive, write_atomic
from d3codec.format.meta import base_meta, meta_int, open_archive, utc_now, validate_meta
from d3codec.format.text import safe_text
from d3codec.methods.d3.archive import load_sampler
from d3codec.methods.d3.layout import sections_of

MERGEABLE = ("d3",)
GROUP_SECTIONS = ("priors", "decoder", "prior_labels")


@dataclass
class Part:
    """One archive to merge: its metadata and its group tensors by section (keys g{i}.*, part-local)."""

    meta: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]
    file_bytes: int
    version: tuple[int, int] = (1, 1)

    @classmethod
    def read(cls, path: str | os.PathLike, limits=None) -> "Part":
        """Read and check one part (as a reader would load it, within ``limits``: DecodeLimits)."""
        reader, meta = open_archive(path, limits)
        with reader:
            if meta["method"] not in MERGEABLE:
                raise D3Error(
                    f"{safe_text(str(path), 300)}: only {', '.join(MERGEABLE)} archives can be merged, "
                    f"this one is {safe_text(repr(meta['method']), 60)}"
                )
            load_sampler(reader, meta, "cpu", limits)  # every group's metadata and tensors, checked (nothing drawn)
            tensors = {name: reader.read_tensors(name) for name in GROUP_SECTIONS if name in reader}
            major, minor = reader.version
            return cls(meta, tensors, reader.file_size, (major, minor))


def combine(parts: list[Part]) -> tuple[dict[str, Any], list[Section]]:
    """The merged dataset fields, group entries and sections of ``parts`` (in their order).

    Returns: ({"dataset": ..., "groups": [...]}, method sections).
    Raises: D3Error on overlapping class names, or different image shapes or normalisations.
    """
    fields, groups = combine_groups(parts)
    return fields, sections_of(groups)


def combine_groups(parts: list[Part]) -> tuple[dict[str, Any], list[dict[str, dict[str, torch.Tensor]]]]:
    """As :func:`combine`, with the merged groups' tensors by section (keys g{i}.*, renumbered) instead of
    sections."""
    if not parts:
        raise D3Error("nothing to merge: give at least one archive")
    first = parts[0].meta["dataset"]
    classes: list[str] = []
    groups: list[dict[str, Any]] = []
    renamed: list[dict[str, dict[str, torch.Tensor]]] = []
    seen: dict[str, int] = {}
    for n, part in enumerate(parts):
        ds = part.meta["dataset"]
        for key in ("image_shape", "mean", "std"):
            if ds[key] != first[key]:
                raise D3Error(
                    f"archive {n + 1} has {key} {safe_text(ds[key], 80)}, archive 1 has "
                    f"{safe_text(first[key], 80)}: only archives of the same image shape and normalisation "
                    "can be merged"
                )
        for c in ds["classes"]:
            if c in seen:
                raise D3Error(
                    f"class {safe_text(repr(c), 80)} is in archives {seen[c] + 1} and {n + 1}: merged "
                    "archives must have disjoint classes"
                )
            seen[c] = n
        offset = len(classes)
        classes += ds["classes"]
        for i, entry in enumerate(part.meta["params"]["groups"]):
            new = len(groups)
            a, b = entry["classes"]
            groups.append({**entry, "classes": [a + offset, b + offset]})
            renamed.append({section: rename_group(tensors, i, new) for section, tensors in part.tensors.items()})
    names = list(dict.fromkeys(p.meta["dataset"]["name"] for p in parts))
    dataset = {**first, "name": names[0] if len(names) == 1 else "+".join(names), "classes": classes}
    return {"dataset": dataset, "groups": groups}, renamed


def rename_group(tensors: dict[str, torch.Tensor], old: int, new: int) -> dict[str, torch.Tensor]:
    """Group ``old``'s tensors (keys g{old} and g{old}.*) under the keys of group ``new``."""
    out = {}
    for key, t in tensors.items():
        head, dot, rest = key.partition(".")
        if head == f"g{old}":
            out[f"g{new}{dot}{rest}"] = t
    return out


def merged_budget(parts: list[Part]) -> int:
    """The budget of a merge: the shared total of a federated run's subtask archives
    (``meta.federated.budget``, the same in every part), else the sum of the parts' budgets (a part
    without one counts its file size). Raises: D3FormatError for a budget that is not a positive integer."""
    federated = [p.meta.get("federated") for p in parts]
    if all(isinstance(f, dict) for f in federated):
        budgets = {meta_int(f, "budget", 1, 2**62, "federated.") for f in federated}
        if len(budgets) == 1:
            return budgets.pop()
    return sum(
        meta_int(p.meta.get("budget") or {}, "bytes", 1, 2**62, "budget.", default=None) or p.file_bytes for p in parts
    )


@dataclass
class MergeResult:
    path: Path
    file_bytes: int
    budget: int
    classes: int


def check_versions(parts: list[Part]) -> None:
    """Parts merge only at one format version, one this d3codec writes: the sampling noise differs between
    versions (spec/FORMAT.md §5.4). Raises: D3Error otherwise."""
    versions = {p.version for p in parts}
    if len(versions) > 1:
        raise D3Error(
            f"the parts are of format versions {', '.join(f'{a}.{b}' for a, b in sorted(versions))}, whose "
            "sampling noise differs (spec/FORMAT.md §5.4): merge parts of one version, or distil them anew"
        )
    if parts[0].version[1] > VERSION_MINOR:
        raise D3Error(
            f"the parts are of format {parts[0].version[0]}.{parts[0].version[1]}, newer than this d3codec "
            f"writes (1.{VERSION_MINOR}): upgrade d3codec to merge them"
        )


def merged_meta(parts: list[Part], fields: dict[str, Any], budget: int) -> dict[str, Any]:
    """The merged archive's metadata: ``fields`` (:func:`combine`'s dataset and groups), the first part's
    method and seed, the parts' images a class where they all agree, ``budget`` (bytes), and what each part was."""
    ipcs = {(p.meta.get("budget") or {}).get("ipc") for p in parts}
    ds = fields["dataset"]
    spec = DatasetSpec(ds["name"], tuple(ds["classes"]), tuple(ds["image_shape"]), tuple(ds["mean"]), tuple(ds["std"]))
    return {
        **base_meta(
            spec,
            parts[0].meta["method"],
            budget,
            ipcs.pop() if len(ipcs) == 1 else None,
            parts[0].meta.get("seed"),
            utc_now(),
        ),
        "params": {"groups": fields["groups"]},
        "merged_from": [
            {
                "dataset": p.meta["dataset"]["name"],
                "classes": len(p.meta["dataset"]["classes"]),
                "file_bytes": p.file_bytes,
                "created": p.meta.get("created"),
            }
            for p in parts
        ],
        "accounting": {"budget_bytes": budget},
    }


def merge_archives(
    paths: list[str | os.PathLike], output: str | os.PathLike, budget: int | None = None, limits=None
) -> MergeResult:
    """Merge archives of disjoint classes into ``output`` (written atomically).

    Args:
        budget: bytes the merged file may take (default: see :func:`merged_budget`).
        limits: the decode limits (d3codec.format.limits.DecodeLimits) each part is checked against.
    Raises: D3FormatError for a malformed part; D3Error for parts that cannot be merged (other image
        shapes, shared classes, other format versions);
        D3BudgetError if the merged file would pass the budget (nothing is written).
    """
    parts = [Part.read(p, limits) for p in paths]
    check_versions(parts)
    fields, sections = combine(parts)
    budget = budget if budget is not None else merged_budget(parts)
    meta = merged_meta(parts, fields, budget)
    try:  # what a reader would refuse is not written: more than MAX_CLASSES classes, budgets summed past 2^62, ...
        validate_meta(meta)
    except D3FormatError as error:
        raise D3Error(
            f"the merged archive would be refused by readers ({error}): merge fewer parts, or pass "
            "`budget` where the parts' budgets add up past it"
        ) from None
    data = encode_archive([Section.json("meta", meta)] + sections, minor=parts[0].version[1])
    if len(data) > budget:
        raise D3BudgetError(
            f"the merged archive is {len(data)} bytes, over the budget of {budget}: pass a `budget` of "
            f"{len(data)} or more",
            min_budget=len(data),
        )
    size = write_atomic(output, data, max_bytes=budget)
    return MergeResult(Path(output), size, budget, len(fields["dataset"]["classes"]))
