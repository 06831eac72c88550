#!/usr/bin/env bash
# The CUDA paths on a GPU machine, in one short run: AMP (bf16 and fp16 + grad scaler), channels-last,
# cudnn.benchmark, pinned memory, resume, prediction, ONNX export, the benchmark table, and ONNX Runtime's
# CUDA and TensorRT providers (parity with PyTorch and images/s; they need onnxruntime-gpu), and TensorRT's
# engine cache after a re-export under the same name (the stale-engine sequence).
# Usage: bash bench/gpu_check.sh OUTDIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}
W=/tmp/gpucheck
rm -rf $W; mkdir -p $W
step() { echo; echo "=== $*"; }
step versions
nvidia-smi -L; $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))"
step demo data
$PY split_data.py --demo --data-path $W/data --demo-per-class 200 --demo-imgs $W/imgs | tail -2
T="--data-path $W/data --model resnet34 --weights none --img-size 224 --batch-size 64 --lr 1e-3 --class-indices $W/ci.json --workers 8"
step train bf16 auto, 3 epochs
$PY train.py $T --epochs 3 --save-path $W/bf16/w.pth 2>&1 | grep -vE 'it/s|s/it'
step "train.py's images/s against the model alone (the data loader's share): the goal is 80% or more"
for w in 8 16; do
  $PY train.py $T --epochs 1 --workers $w --save-path $W/loader$w/w.pth > /dev/null 2>&1
  tp=$($PY -c "import csv,sys; r=list(csv.DictReader(open('$W/loader$w/history.csv')))[-1]; print(r['images_per_s'])")
  mo=$($PY benchmark.py --one-path "train:bfloat16 + channels-last" --batch-size 64 --steps 30 --warmup 5 --device cuda \
       | $PY -c "import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])['images_per_s'], 1))")
  $PY -c "print(f'  --workers $w: train.py {float($tp):.0f} images/s, model alone {float($mo):.0f} images/s: {float($tp) / float($mo):.0%}')"
done
step "data loader per worker (flower-sized and 12 MP photos, tutorial vs ours)"
$PY benchmark.py --loader 2>&1 | tail -5
step "train --compile, 2 epochs (the first includes compiling): images/s against the bf16 run above"
$PY train.py $T --epochs 2 --compile --save-path $W/compile/w.pth 2>&1 | grep -vE 'it/s|s/it'
$PY -c "import csv; a=list(csv.DictReader(open('$W/bf16/history.csv'))); b=list(csv.DictReader(open('$W/compile/history.csv'))); print(f\"  epoch 2: bf16 {float(a[1]['images_per_s']):.0f} images/s, --compile {float(b[1]['images_per_s']):.0f} images/s\")"
step train fp16 + grad scaler, 2 epochs
$PY train.py $T --epochs 2 --amp-dtype fp16 --save-path $W/fp16/w.pth 2>&1 | grep -vE 'it/s|s/it'
step train fp32 baseline, 2 epochs
$PY train.py $T --epochs 2 --no-amp --no-channels-last --save-path $W/fp32/w.pth 2>&1 | grep -vE 'it/s|s/it'
step resume: extend the bf16 run to 4 epochs
$PY train.py --resume $W/bf16/last.pth --epochs 4 2>&1 | grep -vE 'it/s|s/it'
cp $W/bf16/history.csv $OUT/history_bf16.csv; cp $W/fp16/history.csv $OUT/history_fp16.csv; cp $W/fp32/history.csv $OUT/history_fp32.csv
step predict and batch predict on cuda
M="--model resnet34 --weights $W/bf16/w.pth --class-indices $W/ci.json"
$PY predict.py $W/imgs/daisy.jpg $M --save-fig $OUT/predict.png
$PY benchmark.py --predict-folder $W/imgs100 --predict-images 100 --device cuda 2>&1 | tail -10
$PY batch_predict.py $W/imgs100 $M --batch-size 64 | tail -1
step onnx export: fp32 + INT8 for TensorRT, then fp32 + INT8 for the CPU, accuracy on val/
$PY export_onnx.py $M --out $W/m.onnx --check-images $W/imgs --int8 tensorrt --data-path $W/data 2>&1 | grep -E "top-1|exported|matches|error"
$PY export_onnx.py $M --out $W/m.onnx --check-images $W/imgs --int8 --data-path $W/data --overwrite 2>&1 | grep -E "top-1|INT8 for|error"
step onnx runtime providers: parity with PyTorch fp32 on val/, images/s
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
V="$W/data/val --recursive --batch-size 32"
$PY batch_predict.py $V $M --no-amp --csv $W/torch.csv | tail -1
parity() {  # same top class and top probability as PyTorch fp32 ($2, default torch.csv), image by image
  $PY - "${2:-$W/torch.csv}" "$1" <<'PYEOF'
import csv, sys
a, b = ({r["path"]: r for r in csv.DictReader(open(f))} for f in sys.argv[1:3])
same = sum(a[p]["class"] == b[p]["class"] for p in a)
diff = max((abs(float(a[p]["prob"]) - float(b[p]["prob"])) for p in a if a[p]["class"] == b[p]["class"]), default=0)
print(f"  parity with PyTorch fp32 ({sys.argv[1].rsplit('/', 1)[-1]}): same class {same}/{len(a)}, largest "
      f"top-probability difference {diff:.4f}")
PYEOF
}
for run in "cuda m.onnx" "tensorrt m.onnx" "tensorrt m.int8-tensorrt.onnx" "auto m.int8.onnx"; do
  set -- $run
  if ! $PY -c "import onnxruntime as o, sys; sys.exit({'cuda': 'CUDA', 'tensorrt': 'Tensorrt', 'auto': 'CPU'}['$1'] + 'ExecutionProvider' not in o.get_available_providers())"; then
    echo "--provider $1: not offered by this onnxruntime (pip install onnxruntime-gpu); skipped"; continue
  fi
  for pass in first second; do  # TensorRT: the first run builds the engine, the second loads it from the cache
    start=$(date +%s%N)
    rm -f $W/ort.csv
    $PY batch_predict.py $V --onnx $W/$2 --provider $1 --csv $W/ort.csv > $W/ort.log 2>&1; ok=$?
    tail -2 $W/ort.log
    [ $ok = 0 ] || continue 2
    echo "  --provider $1 $2, $pass run: $(( ($(date +%s%N) - start) / 1000000 )) ms in all"
    [ "$1" = tensorrt ] || break
  done
  parity $W/ort.csv
done
step "stale engines: export, predict with TensorRT, retrain, export again under the same name, predict: a fresh engine"
if $PY -c "import onnxruntime as o, sys; sys.exit('TensorrtExecutionProvider' not in o.get_available_providers())"; then
  S=$W/stale; rm -rf $S; mkdir -p $S
  M2="--model resnet34 --weights $W/fp16/w.pth --class-indices $W/ci.json"  # the "retrained" model: another run's weights
  $PY batch_predict.py $V $M2 --no-amp --csv $S/retrained_torch.csv | tail -1
  $PY export_onnx.py $M --out $S/m.onnx --check-images $W/imgs --data-path $W/data 2>&1 | grep -E "top-1|exported|error"
  for pass in first second; do
    start=$(date +%s%N)
    $PY batch_predict.py $V --onnx $S/m.onnx --provider tensorrt --csv $S/before.csv 2>&1 | tail -1
    echo "  first model, $pass run: $(( ($(date +%s%N) - start) / 1000000 )) ms in all; cache: $(ls $S/m.trt_cache | tr '\n' ' ')"
  done
  parity $S/before.csv
  $PY export_onnx.py $M2 --out $S/m.onnx --check-images $W/imgs --data-path $W/data --overwrite 2>&1 | grep -E "top-1|exported|error"
  $PY batch_predict.py $V --onnx $S/m.onnx --provider tensorrt --csv $S/after.csv 2>&1 | grep -vE "^image: " | tail -3
  echo "  cache after the re-export: $(ls $S/m.trt_cache | tr '\n' ' ') (the first model's folder pruned)"
  parity $S/after.csv $S/retrained_torch.csv  # the new model's predictions, not the old engine's
  $PY - "$S/before.csv" "$S/after.csv" <<'PYEOF'
import csv, sys
a, b = ({r["path"]: r for r in csv.DictReader(open(f))} for f in sys.argv[1:3])
changed = sum(a[p]["class"] != b[p]["class"] or abs(float(a[p]["prob"]) - float(b[p]["prob"])) > 1e-3 for p in a)
print(f"  predictions changed by the re-export: {changed}/{len(a)} images (0 would mean a stale engine)")
PYEOF
else
  echo "TensorRT provider not offered by this onnxruntime: stale-engine check skipped"
fi

step benchmark batch 16 and 64
$PY benchmark.py --device cuda --steps 30 --warmup 5 --no-onnx --json > $OUT/bench_b16.json && $PY -c "import json;r=json.load(open('$OUT/bench_b16.json'));[print(x) for x in r['results']]"
$PY benchmark.py --device cuda --steps 30 --warmup 5 --batch-size 64 --no-onnx
