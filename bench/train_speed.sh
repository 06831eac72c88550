#!/usr/bin/env bash
# train.py's images/s against the tutorial's loop (fp32, NCHW, same data loader) on the same data:
# resnet34, batch 16, 224 px, one epoch each, from scratch. Usage: bash bench/train_speed.sh DATA [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data_set/flower_data}
OUT=${2:-bench/out/train_speed}
A="--data-path $DATA --model resnet34 --weights none --epochs 1 --batch-size 16 --overwrite"
$PY train.py $A --no-amp --no-channels-last --save-path "$OUT/fp32/w.pth" --class-indices "$OUT/ci.json" >/dev/null 2>&1
$PY train.py $A --save-path "$OUT/fast/w.pth" --class-indices "$OUT/ci.json" >/dev/null 2>&1
images_per_s() { $PY -c "import csv, sys; print(list(csv.DictReader(open(sys.argv[1])))[-1]['images_per_s'])" "$1"; }
fp32=$(images_per_s "$OUT/fp32/history.csv")
fast=$(images_per_s "$OUT/fast/history.csv")
echo "tutorial loop (fp32, NCHW): $fp32 images/s"
echo "train.py defaults (amp, channels-last): $fast images/s"
python3 -c "print(f'ratio: {$fast / $fp32:.2f}x')"
