#!/usr/bin/env bash
# A new user's first minutes, timed: for each method, the smoke preset's compress, a grid picture and one
# 50-epoch ConvNet-3 student, on real Fashion-MNIST at the IPC 1 and IPC 10 budgets.
#   bash benchmarks/first_minutes.sh [OUT_DIR]      (default: a temporary folder)
# Prints a markdown table row per run (seconds of each step, bytes, the student's final test accuracy);
# benchmarks/first-minutes.md holds a run's table with its machine and date. Run it alone on the machine.
set -u
D3=${D3:-d3}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT" && cd "$OUT" || exit 1
now() { date +%s.%N; }
echo "| method | budget | compress s | grid s | eval s | total s | archive bytes | accuracy (1 student, 50 epochs) |"
echo "|---|---|---|---|---|---|---|---|"
for ipc in 1 10; do
  for method in dm bptt d3 d2m; do
    extra=()
    [ "$method" = bptt ] && [ "$ipc" = 1 ] && extra=(--init random)  # a fixed θ₀ alone needs 133 792 bytes
    name="$method-$ipc"
    t0=$(now)
    "$D3" compress "$method" fashion-mnist --ipc "$ipc" --preset smoke "${extra[@]}" -o "$name.d3" --force \
      > "$name.compress.log" 2>&1 || { echo "| $method | IPC $ipc | failed: $(tail -1 "$name.compress.log") |"; continue; }
    t1=$(now)
    "$D3" expand "$name.d3" --grid "$name.png" --grid-scale 2 > "$name.expand.log" 2>&1
    t2=$(now)
    "$D3" eval "$name.d3" --epochs 50 --runs 1 --quiet --json "$name.json" > "$name.eval.log" 2>&1
    t3=$(now)
    accuracy=$(python3 -c "import json; r = json.load(open('$name.json'))['rows'][0]; print(f\"{100 * r['mean']:.2f} %\")")
    printf "| %s%s | IPC %s | %.0f | %.0f | %.0f | %.0f | %s | %s |\n" "$method" "${extra[*]:+ (${extra[*]})}" "$ipc" \
      "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" "$(echo "$t3 - $t0" | bc)" \
      "$(stat -c %s "$name.d3")" "$accuracy"
  done
done
