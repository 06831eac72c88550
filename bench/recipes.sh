#!/usr/bin/env bash
# Demo-data accuracy and speed of the training recipes, all measured the same way: resnet18, 64 px,
# batch 32, SYNTHETIC demo flowers (120 per class, seed 0). ImageNet weights cannot be fetched here, so
# the fine-tuning runs start from a backbone trained on a separate demo set (seed 1) and get a new fc.
#
# Rows: the baseline recipes, then each new flag added alone to the recommended recipe, then the
# combinations. Each row: best val accuracy, images/s (median over the epochs of history.csv, so that a
# first epoch's compilation or warm-up does not count) and its ratio to the recommended recipe of the
# same block, measured in the same run.
#
# Usage: bash bench/recipes.sh [OUT]
#   full:  about 40 minutes on a 2-core CPU (--compile alone compiles for several minutes)
#   QUICK=1 bash bench/recipes.sh   smoke test of every row: 12 images a class, 32 px, 1 epoch, no worker
#                                   processes, no --compile (~2 min quiet; its figures mean nothing)
#   ONLY=regex                      only the rows whose name matches (the baselines always run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUICK=${QUICK:-0}
ONLY=${ONLY:-}
if [ "$QUICK" = 1 ]; then
  OUT=${1:-bench/out/recipes-quick}; PER_CLASS=12; SIZE=32; SCRATCH_EPOCHS=1; FT_EPOCHS=1; MORE="--workers 0"
else
  OUT=${1:-bench/out/recipes}; PER_CLASS=120; SIZE=64; SCRATCH_EPOCHS=10; FT_EPOCHS=2; MORE=""
fi
mkdir -p "$OUT"
for seed in 0 1; do
  [ -d "$OUT/demo$seed/train" ] || $PY split_data.py --demo --data-path "$OUT/demo$seed" --demo-imgs "$OUT/imgs" \
    --demo-per-class $PER_CLASS --seed $seed >/dev/null
done
BASE="--model resnet18 --img-size $SIZE --batch-size 32 --overwrite $MORE"
RESULTS="$OUT/results.md"
echo "| recipe | flags | best val accuracy | images/s | speed vs recommended |" > "$RESULTS"
echo "| --- | --- | --- | --- | --- |" >> "$RESULTS"
echo "demo: $PER_CLASS images a class, $SIZE px; every row: resnet18, batch 32 (unless its flags say otherwise)"
printf '%-30s %9s %9s %7s  %s\n' recipe val_acc images/s ratio flags

median_speed() {  # history.csv -> median images/s over its epochs
  $PY -c "import csv, statistics, sys; print(round(statistics.median(float(r['images_per_s']) for r in csv.DictReader(open(sys.argv[1]))), 1))" "$1"
}

REF_SPEED=""
run() {  # name, data, args...: one row
  local name=$1 data=$2; shift 2
  if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY|-tutorial$|-recommended$|^backbone$ ]]; then
    return 0
  fi
  local flags="$*"
  flags=${flags//$OUT\//}
  if ! $PY train.py --data-path "$data" $BASE --save-path "$OUT/$name/best.pth" --class-indices "$OUT/$name/ci.json" \
      "$@" > "$OUT/$name.log" 2>&1; then
    local why
    why=$(grep -m1 '^error:' "$OUT/$name.log" || tail -1 "$OUT/$name.log")
    printf '%-30s %s\n' "$name" "failed: $why"
    echo "| $name | \`$flags\` | $why | | |" >> "$RESULTS"
    return 0
  fi
  local acc speed ratio
  acc=$(grep -o 'best val_accuracy: [0-9.]*' "$OUT/$name.log" | cut -d' ' -f3)
  speed=$(median_speed "$OUT/$name/history.csv")
  case "$name" in *-recommended) REF_SPEED=$speed;; esac
  ratio=$($PY -c "print(f'{$speed / ${REF_SPEED:-$speed}:.2f}x')")
  printf '%-30s %9s %9.1f %7s  %s\n' "$name" "$acc" "$speed" "$ratio" "$flags"
  echo "| $name | \`$flags\` | $acc | $speed | $ratio |" >> "$RESULTS"
}

# ---- from scratch
S="--weights none --epochs $SCRATCH_EPOCHS"
REC="--opt adamw --lr 2e-3 --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --label-smoothing 0.1"
run scratch-recommended "$OUT/demo0" $S $REC   # first: the reference of the block's speed ratios
run scratch-tutorial "$OUT/demo0" $S
# each new flag alone, added to the recommended recipe
run scratch+accum16x2 "$OUT/demo0" $S $REC --batch-size 16 --accum-steps 2   # batch 32 at the memory of 16
run scratch+ema "$OUT/demo0" $S $REC --model-ema
run scratch+mixup "$OUT/demo0" $S $REC --mixup-alpha 0.2
run scratch+cutmix "$OUT/demo0" $S $REC --cutmix-alpha 1.0
run scratch+clip "$OUT/demo0" $S $REC --clip-grad-norm 1.0
run scratch+norm-wd0 "$OUT/demo0" $S $REC --norm-weight-decay 0
run scratch+ta "$OUT/demo0" $S $REC --auto-augment ta
run scratch+ra "$OUT/demo0" $S $REC --auto-augment ra
run scratch+aa "$OUT/demo0" $S $REC --auto-augment aa
run scratch+erase "$OUT/demo0" $S $REC --random-erase 0.25
if [ "$QUICK" = 1 ]; then
  echo "scratch+compile                skipped in QUICK mode (compiling takes minutes on a CPU)"
else
  run scratch+compile "$OUT/demo0" $S $REC --compile
fi
# the combination the README recommends for longer runs from scratch
run scratch-combination "$OUT/demo0" $S $REC --norm-weight-decay 0 --model-ema --auto-augment ta

# ---- fine-tuning, from a backbone trained on the other demo set
[ -f "$OUT/backbone/best.pth" ] || run backbone "$OUT/demo1" $S $REC
F="--weights $OUT/backbone/best.pth --epochs $FT_EPOCHS"
FREC="--opt adamw --lr 1e-3 --backbone-lr-scale 0.1 --lr-scheduler cosine --warmup-epochs 0.5 --label-smoothing 0.1"
run finetune-recommended "$OUT/demo0" $F $FREC
run finetune-tutorial "$OUT/demo0" $F
run finetune-frozen "$OUT/demo0" $F --lr 1e-3 --freeze-backbone
run finetune+accum16x2 "$OUT/demo0" $F $FREC --batch-size 16 --accum-steps 2
run finetune+ema "$OUT/demo0" $F $FREC --model-ema
echo "table: $RESULTS"
