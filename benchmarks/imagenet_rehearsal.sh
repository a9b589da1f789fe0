#!/usr/bin/env bash
# The ImageNet-1K command at IPC 2, rehearsed end to end on an ImageNet-like tree, with every method:
#
#   python benchmarks/make_imagenet_like.py DATA_ROOT --classes 1000 --per-class 20 --val-per-class 2 --jobs 2
#   bash benchmarks/imagenet_rehearsal.sh DATA_ROOT OUT_DIR
#
# Stages (each run under benchmarks/stage_monitor.py, which records its seconds and the peak resident memory
# of every process it starts, ranks and DataLoader workers included, in OUT_DIR/stages.jsonl):
#   DM; D3 as the README's command runs it with no method named (the default rule: 5 subtasks), on 2 local
#   workers (torch.distributed over gloo); D2M in one process and under
#   torchrun with 2 ranks; then for each archive d3 info, d3 verify, and (but for the torchrun one, which has
#   d2m's shape) d3 expand into a class-per-folder tree (2 images a class drawn from d3 and d2m, DM's stored
#   images) that torchvision's ImageFolder must load with every class.
# All at --resolution 64 --ipc 2 --preset rehearsal (the full pipeline at full class count, few iterations:
# what breaks shows in minutes, not after the hours of a real run). The summary table goes to
# OUT_DIR/rehearsal.md and standard output. DEVICE (default cpu) picks the device; REUSE=1 keeps the archives
# (and their rows) of an earlier run in OUT_DIR and runs only the checks after them.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash benchmarks/imagenet_rehearsal.sh DATA_ROOT OUT_DIR" >&2
  exit 2
fi
DATA_ROOT=$1
OUT=$2
DEVICE=${DEVICE:-cpu}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT"
LOG="$OUT/stages.jsonl"
if [ "${REUSE:-0}" = 1 ]; then  # keep the encode rows, drop the checks' rows
  grep -E '"stage": "(dm|d3|d2m|d2m-torchrun)"' "$LOG" > "$LOG.kept" || true
  mv "$LOG.kept" "$LOG"
else
  : > "$LOG"
fi
COMMON=(imagenet --data-root "$DATA_ROOT" --resolution 64 --ipc 2 --preset rehearsal --device "$DEVICE" --force
        --restart --json)

stage() {  # stage NAME COMMAND...: run it under the monitor, its output in OUT/NAME.out, progress in OUT/NAME.log
  local name=$1
  shift
  echo "== $name: $*" >&2
  "$PY" "$HERE/stage_monitor.py" --stage "$name" --log "$LOG" -- "$@" > "$OUT/$name.out" 2> "$OUT/$name.log" || {
    echo "stage $name failed; its output:" >&2
    tail -n 30 "$OUT/$name.out" "$OUT/$name.log" >&2
    exit 1
  }
  tail -n 1 "$OUT/$name.log" >&2
}

if [ "${REUSE:-0}" != 1 ]; then
  stage dm d3 compress dm "${COMMON[@]}" -o "$OUT/dm.d3"
  # the README's ImageNet command as a user types it, no method named: the default rule's D3 in 5 subtasks
  stage d3 d3 compress "${COMMON[@]}" --workers 2 -o "$OUT/d3.d3"
  stage d2m d3 compress d2m "${COMMON[@]}" -o "$OUT/d2m.d3"
  stage d2m-torchrun "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m d3codec.cli.main compress \
    d2m "${COMMON[@]}" -o "$OUT/d2m-torchrun.d3"
fi

for method in dm d3 d2m d2m-torchrun; do
  stage "$method-info" d3 info "$OUT/$method.d3" --json
  stage "$method-verify" d3 verify "$OUT/$method.d3"
  if [ "$method" != d2m-torchrun ]; then  # the same generator's shape as d2m's: expanding it again adds minutes
    rm -rf "$OUT/$method-expanded"
    DRAW=(--samples-per-class 2)
    [ "$method" = dm ] && DRAW=()  # DM stores its images: all of them
    stage "$method-expand" d3 expand "$OUT/$method.d3" -o "$OUT/$method-expanded" "${DRAW[@]}" --device "$DEVICE"
  fi
done

"$PY" - "$OUT" "$DATA_ROOT" <<'EOF'
import json
import sys
from pathlib import Path

from torchvision.datasets import ImageFolder

out, data_root = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
lines = ["| stage | seconds | peak resident memory of one process (MiB) | processes | result |", "|---|---|---|---|---|"]
for row in rows:
    result = ""
    name = row["stage"]
    if name in ("dm", "d3", "d2m", "d2m-torchrun"):
        done = json.loads((out / f"{name}.out").read_text().strip().splitlines()[-1])
        result = (f"{done['file_bytes']} of {done['budget']} bytes ({100 * done['file_bytes'] / done['budget']:.1f} %), "
                  f"{done['stored']}")
    elif name.endswith("-expand"):
        tree = ImageFolder(str(out / name.replace("-expand", "-expanded")))
        per_class = {tree.targets.count(c) for c in range(len(tree.classes))}
        result = f"ImageFolder: {len(tree.classes)} classes, {len(tree)} images, {sorted(per_class)} per class"
    elif name.endswith("-verify"):
        result = (out / f"{name}.out").read_text().strip().splitlines()[-1][:160]
    lines.append(f"| {name} | {row['seconds']} | {row['peak_mib']} | {row['processes']} | {result} |")
total = sum(row["seconds"] for row in rows)
lines.append(f"\nTotal: {total:.0f} s; the largest peak of any one process: {max(r['peak_mib'] for r in rows)} MiB.")
text = "\n".join(lines)
(out / "rehearsal.md").write_text(text + "\n")
print(text)
EOF
