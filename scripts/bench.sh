#!/usr/bin/env bash
# Every benchmark under bench/, printing tables for docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/models/tinystories6M}
build/bench/bench_quant --model "$model"
