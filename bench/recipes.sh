#!/usr/bin/env bash
# Demo-data accuracy of the training recipes, all measured the same way: resnet18, 64 px, batch 32,
# SYNTHETIC demo flowers (120 per class, seed 0). ImageNet weights cannot be fetched here, so the
# fine-tuning runs start from a backbone trained on a separate demo set (seed 1) and get a new fc.
# Usage: bash bench/recipes.sh [OUT]   (about 10 minutes on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-bench/out/recipes}
mkdir -p "$OUT"
[ -d "$OUT/demo0/train" ] || $PY split_data.py --demo --data-root "$OUT/demo0" --demo-imgs "$OUT/imgs" --seed 0 >/dev/null
[ -d "$OUT/demo1/train" ] || $PY split_data.py --demo --data-root "$OUT/demo1" --demo-imgs "$OUT/imgs" --seed 1 >/dev/null
BASE="--model resnet18 --img-size 64 --batch-size 32 --overwrite"

run() {  # name, data, args...
  local name=$1 data=$2; shift 2
  $PY train.py --data-path "$data" $BASE --save-path "$OUT/$name/best.pth" --class-indices "$OUT/$name/ci.json" "$@" \
    > "$OUT/$name.log" 2>&1
  printf '%-44s best val_accuracy %s\n' "$name" "$(grep -o 'best val_accuracy: [0-9.]*' "$OUT/$name.log" | cut -d' ' -f3)"
}

# from scratch, 10 epochs each
run scratch-tutorial "$OUT/demo0" --weights none --epochs 10
run scratch-recommended "$OUT/demo0" --weights none --epochs 10 --opt adamw --lr 2e-3 --weight-decay 0.05 \
  --lr-scheduler cosine --warmup-epochs 1 --label-smoothing 0.1
# a backbone for fine-tuning, trained on the other demo set
[ -f "$OUT/backbone/best.pth" ] || run backbone "$OUT/demo1" --weights none --epochs 10 --opt adamw --lr 2e-3 \
  --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --label-smoothing 0.1
# fine-tuning, 2 epochs each
run finetune-tutorial "$OUT/demo0" --weights "$OUT/backbone/best.pth" --epochs 2
run finetune-recommended "$OUT/demo0" --weights "$OUT/backbone/best.pth" --epochs 2 --opt adamw --lr 1e-3 \
  --backbone-lr-scale 0.1 --lr-scheduler cosine --warmup-epochs 0.5 --label-smoothing 0.1
run finetune-frozen "$OUT/demo0" --weights "$OUT/backbone/best.pth" --epochs 2 --lr 1e-3 --freeze-backbone
