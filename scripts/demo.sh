#!/usr/bin/env bash
# The demo (README's first command). Today the furthest step that exists: quantize the
# default model's linear weights into every format and measure the fused kernels
# against OpenBLAS. The model directory is the first argument or $QLORA_MODEL.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${QLORA_MODEL:-../shared/models/tinystories6M}}
if [ ! -f "$model/model.bin" ]; then
  echo "demo: no llama2.c model at '$model' (expected $model/model.bin)." >&2
  echo "      Point at one with: make demo MODEL=/path/to/model  (or QLORA_MODEL=...)" >&2
  exit 1
fi
exec build/bench/bench_quant --model "$model"
