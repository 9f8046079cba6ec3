#!/bin/bash
# Issue 28: the shipped multi-task recipe trained K times, each without one fold of the training parts (whole
# patient / near-duplicate groups), each writing its logits on the fold it never saw (runs/cls_mt_kK_fF.oof.json),
# for `calibrate-image-cls --oof` and for choosing by cross-validation. Resumable: rerun it and it goes on (a fold
# with its .oof.json is done; a fold cut mid-run resumes from its .resume.pt). About 35 min per fold on 2 CPU cores.
#   nohup scripts/folds_chain.sh 5 > runs/folds5_chain.log 2>&1 &
set -u
K=${1:-5}
cd "$(dirname "$0")/.."
mkdir -p runs
while pgrep -f "pytest" >/dev/null || pgrep -f "scripts/test.sh" >/dev/null; do sleep 10; done   # one torch job at a time
for ((f = 0; f < K; f++)); do
  [ -f "runs/cls_mt_k${K}_f$f.oof.json" ] && continue
  echo "== $(date) fold $f of $K"
  python -m core train-image-cls --multitask --epochs 8 --img-size 256 --threads 2 --patience 20 --crops 0.35 \
    --seed 0 --fold "$f" "$K" --save-path "runs/cls_mt_k${K}_f$f" > "runs/cls_mt_k${K}_f$f.log" 2>&1 || exit 1
done
echo "== $(date) all $K folds done: python -m core calibrate-image-cls --oof runs/cls_mt_k${K}_f*.oof.json ..."
