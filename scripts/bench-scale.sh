#!/usr/bin/env bash
# Issue 17's realistic scale: random weights of TinyLlama-1.1B's and Qwen2.5-0.5B's real
# shapes (make-model), forward pass per format and nf4 training with and without
# recompute, for docs/performance.md ("Realistic scale"). Took 45 minutes on 2 loaded
# cores and 7 GB of disk (the fp32 checkpoints, deleted at the end); bench_model holds
# five formats of TinyLlama at once, 8.5 GB of RAM (13 GB at the peak of the last load).
# usage: scripts/bench-scale.sh [DIR]   (DIR for the checkpoints, default /tmp/qlora-scale)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/qlora-scale}
mkdir -p "$dir"
trap 'rm -rf "$dir/tinyllama" "$dir/qwen05"' EXIT
# TinyLlama-1.1B: Llama, separate head, max_position_embeddings 2048
build/tool/qlora-tool make-model --arch llama --untied --dim 2048 --hidden 5632 --layers 22 --heads 32 \
  --kv-heads 4 --vocab 32000 --seq-len 2048 --out "$dir/tinyllama"
# Qwen2.5-0.5B: Qwen2 (q, k, v biases), tied, max_position_embeddings 32768, rope_theta 1e6
build/tool/qlora-tool make-model --arch qwen2 --dim 896 --hidden 4864 --layers 24 --heads 14 \
  --kv-heads 2 --vocab 151936 --seq-len 32768 --rope-theta 1000000 --out "$dir/qwen05"
# as in docs/performance.md; TinyLlama without fp4 and bitnet1 and with 2 rounds, for time
uptime
build/bench/bench_model --prefill 256 --decode 32 --rounds 3 --threads 1,2 "$dir/qwen05"
uptime
build/bench/bench_model --formats nf4,int8,int4,ternary --prefill 256 --decode 32 --rounds 2 \
  --threads 2,1 "$dir/tinyllama"
for m in tinyllama qwen05; do
  for r in "" --recompute; do
    uptime
    build/bench/bench_train --threads 2 --steps 2 $r "$dir/$m"
  done
done
uptime
