#!/usr/bin/env bash
# train.py against the tutorial's train.py (bench/tutorial_train.py), whole processes one after the
# other, as a new user runs them: resnet34 from scratch, batch 16, 224 px, one epoch of 360 photos plus
# 40 for val (5 classes of 80 flower-sized JPEGs, 320-500 px, made once when DATA is missing), each with
# its defaults. Then the model alone (forward, backward, Adam step, random tensors, no data loading) on
# the path train.py chose (precision, memory format): the ceiling of any loop.
# Prints the machine, then per run: whole-process seconds, the train loop's images/s and the ratios.
#
# Usage: bash bench/train_speed.sh [DATA] [OUT]     (RUNS=3; about 3 minutes a run on a 2-core CPU)
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
printf '%-4s %12s %12s %10s %16s %16s\n' run tutorial_s train.py_s ratio "tutorial img/s" "train.py img/s"
for i in $(seq "$RUNS"); do
  LOG=$OUT/tutorial.log; tut=$(seconds $PY bench/tutorial_train.py --data-path "$DATA" --epochs 1 --save-path "$OUT/tutorial_resNet34.pth")
  tut_ips=$(grep -o 'train loop: [0-9.]*' "$OUT/tutorial.log" | awk '{print $3}')
  LOG=$OUT/train.log; ours=$(seconds $PY train.py --data-path "$DATA" --model resnet34 --weights none --epochs 1 \
    --batch-size 16 --save-path "$OUT/ours/resNet34.pth" --class-indices "$OUT/ours/class_indices.json" --overwrite)
  ours_ips=$($PY -c "import csv, sys; print(f\"{float(list(csv.DictReader(open(sys.argv[1])))[-1]['images_per_s']):.2f}\")" "$OUT/ours/history.csv")
  printf '%-4s %12s %12s %9sx %16s %16s\n' "$i" "$tut" "$ours" "$(python3 -c "print(f'{$tut / $ours:.2f}')")" "$tut_ips" "$ours_ips"
done
# The model alone, on the path train.py chose (from its own line "mixed precision: off (fp32),
# channels-last: off") and on the tutorial's (fp32, NCHW): each loop's share of its ceiling.
line=$(grep -o 'mixed precision: .*, channels-last: [a-z]*' "$OUT/train.log")
amp=$(echo "$line" | sed 's/mixed precision: \(.*\), channels-last.*/\1/'); cl=${line##* }
case "$amp,$cl" in "off (fp32),off") path=fp32;; "off (fp32),on") path=channels-last;;
  *,off) path=$amp;; *) path="$amp + channels-last";; esac
alone() { $PY benchmark.py --one-path "train:$1" --model resnet34 --batch-size 16 --img-size 224 --steps 10 --warmup 2 \
  | $PY -c "import json, sys; print(f\"{json.loads(sys.stdin.read().splitlines()[-1])['images_per_s']:.2f}\")"; }
ours_alone=$(alone "$path"); tut_alone=$(alone fp32)
echo "model alone: $ours_alone images/s on train.py's path ($path), $tut_alone on the tutorial's (fp32)"
python3 -c "print(f'train loop / model alone: train.py {$ours_ips / $ours_alone:.2f}, tutorial {$tut_ips / $tut_alone:.2f} (last run)')"
