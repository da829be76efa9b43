#!/usr/bin/env bash
# KD on rt-polarity over seeds and two learning rates: base vs +SVD vs +MPO (and +OPDF).
#
#   OUT=runs/seeds JOBS=2 bash benchmarks/rt_polarity_seeds.sh
#
# MiniLM-L6 teacher (fine-tuned once, cached) -> 3-layer student of its bottom layers. To fit a
# 2-core CPU the student trains on 2,000 of the 6,824 train sentences for 2 epochs (126 steps);
# dev and test are the full 853-sentence splits. Checkpoints are selected on dev, test is reported.
# Each run is `opdf distill configs/rt-polarity-kd-VARIANT.yaml` plus the overrides below.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/seeds}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
SEEDS=${SEEDS:-"1 2 3"}
LRS=${LRS:-"5e-5 2e-4"}
VARIANTS=${VARIANTS:-"base svd mpo"}
EXTRA=${EXTRA:-}

.venv/bin/opdf finetune configs/rt-polarity-kd-base.yaml threads=1 --no-progress

for lr in $LRS; do for v in $VARIANTS; do for s in $SEEDS; do
  echo "$v $lr $s"
done; done; done | xargs -P "$JOBS" -L 1 bash -c '
  v=$0 lr=$1 s=$2
  .venv/bin/opdf distill configs/rt-polarity-kd-$v.yaml output_dir='"$OUT"'/lr$lr/kd-$v-s$s \
    seed=$s lr=$lr data.max_train_samples=2000 epochs=2 eval_every=25 checkpoint_every=1000 \
    threads=1 '"$EXTRA"' --overwrite --no-progress > /dev/null 2>'"$OUT"'/log-kd-$v-lr$lr-s$s.txt \
    && echo "done kd-$v lr=$lr seed=$s" || { echo "FAILED kd-$v lr=$lr seed=$s"; exit 1; }'

for lr in $LRS; do
  echo "## lr $lr"
  .venv/bin/opdf report "$OUT/lr$lr" --group
  .venv/bin/opdf report "$OUT/lr$lr"
done
