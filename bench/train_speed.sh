#!/usr/bin/env bash
# train.py against the tutorial's train.py (bench/tutorial_train.py), whole processes one after the
# other, as a new user runs them: resnet34 from scratch, batch 16, 224 px, one epoch of 360 photos plus
# 40 for val (5 classes of 80 flower-sized JPEGs, 320-500 px, made once when DATA is missing), each with
# its defaults. After each run, the model alone (forward, backward, Adam step, random tensors, no data
# loading) on the path train.py chose (precision, memory format) and on the tutorial's: each loop's ceiling.
# Prints the machine, then per run: whole-process seconds, the train loop's images/s, the ratio, and each
# loop as a share of its model alone; then in how many runs train.py was as fast as the tutorial or
# faster, and in how many its loop came within 5% of its model alone.
#
# Usage: bash bench/train_speed.sh [DATA] [OUT]     (RUNS=3; about 2-4 minutes a run on a 2-core CPU)
#   ISA=avx2 bash bench/train_speed.sh ...   on a CPU with native bf16, runs everything as on one without it:
#   oneDNN and ATen's kernels capped at AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), so bf16 is not native
set -euo pipefail
if [ "${ISA:-}" = avx2 ]; then export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2; fi
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${2:-bench/out/train_speed}
DATA=${1:-$OUT/data}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
if [ ! -d "$DATA/train" ]; then
  $PY - "$DATA" <<'EOF'
import random, sys
from pathlib import Path
sys.path.insert(0, ".")
from helpers import demo_data, imaging
rng = random.Random(0)
for c in demo_data.CLASSES:
    folder = Path(sys.argv[1]) / "flower_photos" / c
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(80):
        img = demo_data.draw_image(c, rng, rng.randint(320, 500))
        imaging.save_image(img.resize((img.width, rng.randint(320, 500))), folder / f"{c}_{i:03d}.jpg", quality=90)
EOF
  $PY split_data.py --data-path "$DATA" >/dev/null
fi
$PY benchmark.py --machine
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >"$LOG" 2>&1; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.1f}')"; }
# The model alone (benchmark.py --one-path), on the path train.py chose (from its own line "mixed
# precision: off (fp32), channels-last: on") and on the tutorial's (fp32, NCHW): the ceiling of each
# loop, measured right after each run, so that a neighbour's load on a shared machine hits both alike.
alone() { $PY benchmark.py --one-path "train:$1" --model resnet34 --batch-size 16 --img-size 224 --steps 10 --warmup 2 \
  | $PY -c "import json, sys; print(f\"{json.loads(sys.stdin.read().splitlines()[-1])['images_per_s']:.2f}\")"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
printf '%-4s %11s %11s %7s %14s %14s %13s %13s\n' run tutorial_s train.py_s ratio "tutorial img/s" "train.py img/s" \
  "tut/alone" "ours/alone"
faster=0; close=0
for i in $(seq "$RUNS"); do
  LOG=$OUT/tutorial.log; tut=$(seconds $PY bench/tutorial_train.py --data-path "$DATA" --epochs 1 --save-path "$OUT/tutorial_resNet34.pth")
  tut_ips=$(grep -o 'train loop: [0-9.]*' "$OUT/tutorial.log" | awk '{print $3}')
  LOG=$OUT/train.log; ours=$(seconds $PY train.py --data-path "$DATA" --model resnet34 --weights none --epochs 1 \
    --batch-size 16 --save-path "$OUT/ours/resNet34.pth" --class-indices "$OUT/ours/class_indices.json" --overwrite)
  ours_ips=$($PY -c "import csv, sys; print(f\"{float(list(csv.DictReader(open(sys.argv[1])))[-1]['images_per_s']):.2f}\")" "$OUT/ours/history.csv")
  line=$(grep -o 'mixed precision: .*, channels-last: [a-z]*' "$OUT/train.log")
  amp=$(echo "$line" | sed 's/mixed precision: \(.*\), channels-last.*/\1/'); cl=${line##* }
  case "$amp,$cl" in "off (fp32),off") path=fp32;; "off (fp32),on") path=channels-last;;
    *,off) path=$amp;; *) path="$amp + channels-last";; esac
  ours_alone=$(alone "$path"); tut_alone=$(alone fp32)
  printf '%-4s %11s %11s %6sx %14s %14s %13s %13s\n' "$i" "$tut" "$ours" "$(ratio "$tut" "$ours")" "$tut_ips" "$ours_ips" \
    "$(ratio "$tut_ips" "$tut_alone")" "$(ratio "$ours_ips" "$ours_alone")"
  if python3 -c "import sys; sys.exit(not $ours <= $tut)"; then faster=$((faster + 1)); fi
  if python3 -c "import sys; sys.exit(not $ours_ips >= 0.95 * $ours_alone)"; then close=$((close + 1)); fi
done
echo "model alone (last run): $ours_alone images/s on train.py's path ($path), $tut_alone on the tutorial's (fp32)"
echo "train.py's whole process as fast as the tutorial's or faster: $faster of $RUNS runs"
echo "train.py's loop within 5% of its model alone: $close of $RUNS runs"
