"""The same D3 archive with its soft labels cut to their top k (spec/FORMAT.md §5.6), to measure what the compact
form costs a student with everything else equal: the same priors, decoder and draw.

    python benchmarks/top_k_labels.py IN.d3 OUT.d3 --top-k 2

Every group storing whole rows gets the k largest probabilities of each row and their classes instead
(d3codec.methods.d3.layout.stored_labels); a reader spreads the rest of each row's mass evenly over the
other classes. Prints the bytes of both files. The output is not held to a budget: it is smaller.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from d3codec.format.container import Section, encode_archive, write_atomic
from d3codec.format.meta import open_archive
from d3codec.methods.d3.layout import stored_labels


def top_k_archive(source: Path, target: Path, top_k: int) -> tuple[int, int]:
    """Write ``source`` with whole-row soft labels cut to their ``top_k`` largest. Returns (bytes in, bytes out).
    Raises: ValueError for an archive that is not d3, has no soft labels, or a group with k ≥ its classes."""
    reader, meta = open_archive(source)
    with reader:
        if meta["method"] != "d3" or "prior_labels" not in reader:
            raise ValueError(f"{source}: a d3 archive with soft labels is needed")
        sections = {name: reader.read_tensors(name) for name in ("priors", "decoder", "prior_labels")}
    labels, groups = {}, []
    for g, entry in enumerate(meta["params"]["groups"]):
        a, b = entry["classes"]
        if "label_top_k" in entry:  # already compact: kept as it is
            labels.update({k: v for k, v in sections["prior_labels"].items() if k.split(".")[0] == f"g{g}"})
            groups.append(entry)
            continue
        if not 1 <= top_k < b - a:
            raise ValueError(f"group {g} has {b - a} classes: --top-k must be 1 to {b - a - 1}")
        labels.update(stored_labels(sections["prior_labels"][f"g{g}"].float(), f"g{g}", top_k))
        groups.append({**entry, "label_top_k": top_k})
    meta = {**meta, "params": {**meta["params"], "groups": groups}}
    data = encode_archive(
        [
            Section.json("meta", meta),
            Section.tensors("priors", sections["priors"]),
            Section.tensors("decoder", sections["decoder"]),
            Section.tensors("prior_labels", labels),
        ]
    )
    return source.stat().st_size, write_atomic(target, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--top-k", type=int, required=True)
    args = parser.parse_args(argv)
    before, after = top_k_archive(args.source, args.target, args.top_k)
    print(f"{args.source}: {before} B with whole soft labels; {args.target}: {after} B with the top {args.top_k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
