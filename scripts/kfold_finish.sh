#!/bin/bash
# Issue 28: after `scripts/folds_chain.sh K`, the K fold models as one ensemble calibrated on their own out-of-fold
# logits, then its one recorded read of the test parts (FOLD_ENSEMBLE_RULE decides, in docs/results.md).
# Waits for the chain's K out-of-fold files first, so it can be started beside the chain:
#   nohup scripts/kfold_finish.sh 4 > runs/kfold_finish.log 2>&1 &
set -eu
K=${1:-5}
cd "$(dirname "$0")/.."
runs() { for ((f = 0; f < K; f++)); do echo "runs/cls_mt_k${K}_f$f"; done; }
oof() { for r in $(runs); do echo "$r.oof.json"; done; }
until ls $(oof) >/dev/null 2>&1; do
  pgrep -f "folds_chain.sh" >/dev/null || { echo "the fold chain stopped before its $K folds were done"; exit 1; }
  sleep 30
done
echo "== $(date) the $K folds are done"
python -m core ensemble-image-cls --members $(runs) --save-path runs/classifier_image_mt_kfold
python -m core calibrate-image-cls --oof $(oof) --cls-model runs/classifier_image_mt_kfold --write \
  --out docs/results_image_classifier_kfold_calibration.json
python -m core evaluate-image-cls --cls-model runs/classifier_image_mt_kfold --stored-points \
  --out docs/results_image_classifier_mt_kfold.json
echo "== $(date) done: python -c 'from core.evaluation.report import render; render()'"
