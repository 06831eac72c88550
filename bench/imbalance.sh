#!/usr/bin/env bash
# Classes of different sizes: nothing, --class-weights auto, --balanced-sampler (ALL=1: each also with
# --select-by balanced_acc), measured on test/ by evaluate.py. The data: SYNTHETIC demo flowers, 150 a
# class, split 70/10/20 (--test-rate 0.2); then tulips in train/ cut to a tenth of the others
# (105 -> 10), val/ and test/ left whole so that the small class's recall can be measured.
# Every run: resnet18 from scratch, 64 px, batch 32, 10 epochs, AdamW 2e-3, cosine, seed 0.
#
# Usage: bash bench/imbalance.sh [OUT]      (about 3 minutes a run on a quiet 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-bench/out/imbalance}
EPOCHS=${EPOCHS:-10}
mkdir -p "$OUT"
if [ ! -d "$OUT/data/test" ]; then
  $PY split_data.py --demo --data-path "$OUT/data" --demo-imgs "$OUT/imgs" --demo-per-class 150 --test-rate 0.2 >/dev/null
  ls "$OUT/data/train/tulips" | sort | tail -n +11 | while read -r f; do rm "$OUT/data/train/tulips/$f"; done
fi
$PY -c "import torch, platform; print('machine:', open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].split('\n')[0].strip(),
  '| native bf16:', torch.ops.mkldnn._is_mkldnn_bf16_supported(), '| torch', torch.__version__)"
BASE="--data-path $OUT/data --model resnet18 --weights none --img-size 64 --batch-size 32 --epochs $EPOCHS --opt adamw
  --lr 2e-3 --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --overwrite"
printf '%-48s %9s %9s %15s\n' "run" accuracy macro_f1 "tulips recall"
RUNS=("nothing|" "class weights|--class-weights auto" "balanced sampler|--balanced-sampler")
if [ "${ALL:-0}" = 1 ]; then
  RUNS+=("nothing, select by balanced_acc|--select-by balanced_acc"
         "class weights, select by balanced_acc|--class-weights auto --select-by balanced_acc"
         "balanced sampler, select by balanced_acc|--balanced-sampler --select-by balanced_acc")
fi
for run in "${RUNS[@]}"; do
  name=${run%%|*}; flags=${run#*|}; dir="$OUT/$(echo "$name" | tr -c 'a-z0-9\n' '_')"
  # shellcheck disable=SC2086
  $PY train.py $BASE $flags --save-path "$dir/w.pth" --class-indices "$dir/ci.json" >"$dir.log" 2>&1
  $PY evaluate.py "$OUT/data/test" --model resnet18 --img-size 64 --weights "$dir/w.pth" --class-indices "$dir/ci.json" \
    --json "$dir/test.json" --output-dir "$dir" >/dev/null 2>&1
  $PY -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:<48} {r['accuracy']:>9.3f} {r['macro']['f1']:>9.3f} {r['per_class']['tulips']['recall']:>15.3f}\")" \
    "$dir/test.json" "$name"
done
