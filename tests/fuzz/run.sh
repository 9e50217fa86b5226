#!/bin/sh
# run.sh FUZZER SEEDS SECONDS: runs a libFuzzer target for SECONDS over the seed corpus
# in the repo; what it finds new goes into a corpus beside the binary, never into the repo.
set -eu
fuzzer=$1 seeds=$2 seconds=$3
work="$(dirname "$fuzzer")/fuzz-corpus"
mkdir -p "$work"
exec "$fuzzer" -max_total_time="$seconds" -max_len=4096 -timeout=20 -rss_limit_mb=3072 \
  -print_final_stats=1 "$work" "$seeds"
