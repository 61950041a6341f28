#!/usr/bin/env bash
# GPU check (issue 18): run on a machine with a CUDA GPU, from the repository root, after `make setup`.
#   bash scripts/gpu_check.sh [OUT]      (default OUT=out/gpu_check; under 8 minutes on one GPU)
# Prints one markdown table: each check, its wall time and its result. It runs
#   1. ssl-aver bench --device cuda --quick: the pretrainer's bf16 vs fp32 rows, every head at paper size on
#      the GPU, stage 6's bf16 vs fp32 training of VAVL and RAVER (paper size), VAVL subsample 4 vs 1;
#   2. a 1-epoch bf16 pretraining on the demo's window store (demo stages corpus..pretext first);
#   3. when 2 or more GPUs are visible, a 2-process `accelerate launch` of that pretraining (DDP).
# A failing check is reported in the table and the others still run; the exit code is the number of failures.
set -uo pipefail
OUT=${1:-out/gpu_check}
PY=${PYTHON:-.venv/bin/python}
ACCEL=${ACCELERATE:-.venv/bin/accelerate}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
ROWS=()
FAILED=0

check() {  # check NAME COMMAND...: run it, log to OUT/NAME.log, record time and status
  local name=$1; shift
  local start end status
  start=$(date +%s)
  if "$@" >"$OUT/$name.log" 2>&1; then status=ok; else status="FAILED (see $OUT/$name.log)"; FAILED=$((FAILED + 1)); fi
  end=$(date +%s)
  ROWS+=("| $name | $((end - start)) s | $status |")
}

GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_check: torch sees no CUDA device; nothing to check" >&2
  exit 1
fi
$PY -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" | tee "$OUT/device.txt"

check bench_cuda_quick "$PY" -m ssl_aver bench --device cuda --quick --out "$OUT/bench" --quiet
check demo_store "$PY" -m ssl_aver demo --out "$OUT/demo" --stages pretext
STORE="$OUT/demo/pretext"
check pretrain_bf16_1epoch "$PY" -m ssl_aver pretrain --config recipes/pretrain/demo.yaml data.store="$STORE" \
  output_dir="$OUT/pretrain_bf16" train.epochs=1 train.mixed_precision=bf16
if [ "$GPUS" -ge 2 ]; then
  check pretrain_2gpu_ddp "$ACCEL" launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
    -m ssl_aver.pretrain --config recipes/pretrain/demo.yaml data.store="$STORE" output_dir="$OUT/pretrain_ddp" train.epochs=1
else
  ROWS+=("| pretrain_2gpu_ddp | - | skipped: $GPUS GPU visible |")
fi

echo
echo "| check | wall time | result |"
echo "| --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
if [ -f "$OUT/bench/bench.md" ]; then cat "$OUT/bench/bench.md"; fi
exit "$FAILED"
