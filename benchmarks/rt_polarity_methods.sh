#!/usr/bin/env bash
# One run per method and variant on rt-polarity, seed 1, with the study's settings (those of
# benchmarks/rt_polarity_seeds.sh), one after the other; copies each run's small files
# (config.yaml, summary.json, metrics.jsonl) to benchmarks/results/rt-polarity-methods/.
#
#   METHODS="dbkd adkd" VARIANTS="base opdf" OUT=runs/methods bash benchmarks/rt_polarity_methods.sh
#
# Each run is `opdf distill configs/rt-polarity-METHOD.yaml variant=VARIANT` plus the overrides
# below: MiniLM-L6 teacher (fine-tuned once, cached) -> 3-layer student, 2,000 of the 6,824 train
# sentences for 2 epochs (126 steps), dev every 25 steps, full dev and test splits.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/methods}
METHODS=${METHODS:-"dbkd adkd"}
VARIANTS=${VARIANTS:-"base opdf"}
SEED=${SEED:-1}
OPDF=${OPDF:-.venv/bin/opdf}
RESULTS=benchmarks/results/rt-polarity-methods
mkdir -p "$OUT" "$RESULTS"
for m in $METHODS; do for v in $VARIANTS; do
  run="$m-$v-s$SEED"
  $OPDF distill "configs/rt-polarity-$m.yaml" "variant=$v" "seed=$SEED" "output_dir=$OUT/$run" \
    data.max_train_samples=2000 epochs=2 eval_every=25 checkpoint_every=1000 threads=1 \
    --overwrite --no-progress 2> "$OUT/log-$run.txt" | tail -1
  mkdir -p "$RESULTS/$run"
  cp "$OUT/$run/config.yaml" "$OUT/$run/summary.json" "$OUT/$run/metrics.jsonl" "$RESULTS/$run/"
done; done
