#!/usr/bin/env bash
# Fashion-MNIST: ResNet-20 teacher (trained from scratch once, cached) -> ResNet-8 student; per
# method (kd, dkd, tinyvit) the plain student vs +MPO vs +OPDF, one seed.
#
#   OUT=runs/fashion-mnist bash benchmarks/fashion_mnist.sh
#   OPDF="python -m opdf" VARIANTS="base svd mpo opdf" bash benchmarks/fashion_mnist.sh
#
# Sizes (see configs/fashion-mnist-*.yaml): the teacher trains on all 55,000 training images for
# 2 epochs at batch 256 (430 steps); each student on a stratified 8,000 of them for 3 epochs at
# batch 128 (189 steps); dev is 5,000 images split from train (checkpoint selection, once per
# epoch), test the official 10,000. One thread per run (a shared 2-core machine). Afterwards the
# small files of each run go to benchmarks/results/fashion-mnist/ (benchmarks/collect_runs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fashion-mnist}
OPDF=${OPDF:-.venv/bin/opdf}
METHODS=${METHODS:-"kd dkd tinyvit"}
VARIANTS=${VARIANTS:-"base mpo opdf"}
SEED=${SEED:-1}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

start=$(date +%s)
$OPDF finetune configs/fashion-mnist-kd-base.yaml --no-progress | tee "$OUT/teacher.json"
echo "teacher ready after $(( $(date +%s) - start )) s"
for m in $METHODS; do for v in $VARIANTS; do
  t=$(date +%s)
  # shellcheck disable=SC2086  # EXTRA holds several overrides
  $OPDF distill "configs/fashion-mnist-$m-$v.yaml" "output_dir=$OUT/$m-$v" "seed=$SEED" $EXTRA \
    --overwrite --no-progress | tee -a "$OUT/log.txt"
  echo "$m-$v: $(( $(date +%s) - t )) s" | tee -a "$OUT/log.txt"
done; done
echo "all runs: $(( $(date +%s) - start )) s" | tee -a "$OUT/log.txt"
$OPDF report "$OUT"
