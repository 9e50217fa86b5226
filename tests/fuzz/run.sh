#!/bin/sh
# run.sh FUZZER SEEDS SECONDS [MAX_LEN]: runs a libFuzzer target for SECONDS over the seed
# corpus in the repo, inputs up to MAX_LEN bytes (default 4096); what it finds new goes into
# a corpus of its own beside the binary, never into the repo.
set -eu
fuzzer=$1 seeds=$2 seconds=$3 max_len=${4:-4096}
work="$(dirname "$fuzzer")/fuzz-corpus-$(basename "$fuzzer")"
mkdir -p "$work"
exec "$fuzzer" -max_total_time="$seconds" -max_len="$max_len" -timeout=20 -rss_limit_mb=3072 \
  -print_final_stats=1 "$work" "$seeds"
