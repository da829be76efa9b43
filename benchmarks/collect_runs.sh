#!/usr/bin/env bash
# Copy the small, human-readable outputs of finished runs (config.yaml, summary.json,
# metrics.jsonl) from SRC into DEST, keeping the folder layout; weights and checkpoints stay out.
#   bash benchmarks/collect_runs.sh runs/seeds benchmarks/results/rt-polarity-kd/runs
set -euo pipefail
SRC=$1 DEST=$2
find "$SRC" -name summary.json | while read -r f; do
  run=$(dirname "$f"); rel=${run#"$SRC"/}
  mkdir -p "$DEST/$rel"
  cp "$run/config.yaml" "$run/summary.json" "$run/metrics.jsonl" "$DEST/$rel/"
done
