#!/usr/bin/env bash
# Every benchmark under bench/, printing tables for docs/performance.md. The recovery table
# (bench/recovery.py) takes about an hour and runs on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/models/tinystories6M}
build/bench/bench_quant --model "$model"
tmp=$(mktemp -d /tmp/qlora-bench-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
build/tool/qlora-tool make-model --dim 2048 --hidden 5632 --layers 2 --heads 16 --kv-heads 16 \
  --vocab 32000 --seq-len 512 --out "$tmp/d2048" >/dev/null
build/bench/bench_train --torch bench/torch_train.py "$model" "$tmp/d2048"
# the model issue's decode shape: 8 layers (1.9 GB in fp32)
build/tool/qlora-tool make-model --dim 2048 --hidden 5632 --layers 8 --heads 16 --kv-heads 16 \
  --vocab 32000 --seq-len 512 --out "$tmp/d2048x8" >/dev/null
build/bench/bench_model "$model" "$tmp/d2048x8"
rm -rf "$tmp/d2048x8"
/usr/bin/python3 bench/bench_daemon.py build "$model"
/usr/bin/python3 bench/bench_tokenizer.py build ../shared
