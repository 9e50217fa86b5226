#!/usr/bin/env bash
# The demo (README's first command): from a fresh clone, install what is missing, build,
# start qlorad on a quantized (nf4) base with a fresh database under /tmp, measure the base,
# train an accuracy-recovery adapter and a Shakespeare adapter through the `qlora` CLI,
# compare, generate, export one adapter in PEFT format, and stop the daemon.
#
# usage: scripts/demo.sh [MODEL_DIR]   (or QLORA_MODEL=DIR; default ../shared/models/tinystories6M)
# QLORA_DEMO_STEPS (default 60) sets the steps of each training job; QLORAD another daemon binary.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${QLORA_MODEL:-../shared/models/tinystories6M}}
data=${QLORA_DATA:-../shared/data}
steps=${QLORA_DEMO_STEPS:-60}
if [ ! -f "$model/model.bin" ] && [ ! -f "$model/config.json" ]; then
  echo "demo: no model at '$model' (expected a llama2.c model.bin or a Hugging Face config.json)." >&2
  echo "      Point at one with: make demo MODEL=/path/to/model  (or scripts/demo.sh DIR, or QLORA_MODEL=DIR)" >&2
  exit 1
fi
for f in tinystories_train.txt tinystories_valid.txt shakespeare_train.txt shakespeare_valid.txt; do
  [ -f "$data/$f" ] || { echo "demo: missing $data/$f (set QLORA_DATA to the data directory)" >&2; exit 1; }
done

scripts/setup.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
qlorad=${QLORAD:-build/daemon/qlorad}
tool=build/tool/qlora-tool
py=/usr/bin/python3

work=$(mktemp -d /tmp/qlora-demo-XXXXXX)
out=$work/out
mkdir -p "$out"
sock=$work/qlorad.sock
export XDG_CACHE_HOME=$work/cache # the loss history `qlora plot` reads stays with the demo
q() { build/clients/cli/qlora --socket "$sock" "$@"; }
field() { $py -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
section() { printf '\n== %s\n' "$*"; }

"$qlorad" --model "$model" --quant nf4 --db "$work/db" --socket "$sock" 2>"$work/qlorad.log" &
pid=$!
stop_daemon() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  rm -rf "$work/db" "$work/qlorad.log" "$work/data" "$work/cache"
}
trap stop_daemon EXIT
for _ in $(seq 600); do
  q ping >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "demo: qlorad did not start:" >&2; cat "$work/qlorad.log" >&2; exit 1; }
  sleep 0.1
done

# Slices of the data keep the demo to a few minutes on a 2-core machine: the training
# jobs see the first 200 KB of their training text, evaluation the first 16 KB of each
# validation text (both are contiguous prefixes, the same for every row of the table).
mkdir -p "$work/data"
head -c 200000 "$data/tinystories_train.txt" >"$work/data/ts_train.txt"
head -c 200000 "$data/shakespeare_train.txt" >"$work/data/sh_train.txt"
head -c 16000 "$data/tinystories_valid.txt" >"$work/data/ts_valid.txt"
head -c 16000 "$data/shakespeare_valid.txt" >"$work/data/sh_valid.txt"
ts=$work/data/ts_valid.txt
sh=$work/data/sh_valid.txt

section "qlora status"
q status

section "base perplexity (first 16 KB of each validation text)"
printf 'TinyStories  %s\nShakespeare  %s\n' "$(q eval "$ts")" "$(q eval "$sh")"

job="--steps $steps --batch 4 --seq-len 128 --eval-every 20 --warmup 8"
section "recovery job: $steps steps of batch 4 x 128 tokens, KL to the f32 model on TinyStories"
q submit --adapter recovery --method recovery --data "$work/data/ts_train.txt" --eval-data "$ts" $job --watch
section "lora job: $steps steps of batch 4 x 128 tokens on Shakespeare"
q submit --adapter shakespeare --data "$work/data/sh_train.txt" --eval-data "$sh" $job --watch
q plot 2 -o "$out/shakespeare-loss.svg"

section "before / after (perplexity, lower is better)"
f32_ts=$("$tool" eval --model "$model" --quant f32 --text "$ts" --json | field ppl)
f32_sh=$("$tool" eval --model "$model" --quant f32 --text "$sh" --json | field ppl)
printf '%-26s %12s %12s\n' model TinyStories Shakespeare
printf '%-26s %12.4f %12.4f\n' "f32 (qlora-tool)" "$f32_ts" "$f32_sh"
for adapter in "" recovery shakespeare; do
  args=()
  [ -n "$adapter" ] && args=(--adapter "$adapter")
  printf '%-26s %12.4f %12.4f\n' "nf4${adapter:+ + $adapter}" \
    "$(q --json eval "${args[@]}" "$ts" | field ppl)" "$(q --json eval "${args[@]}" "$sh" | field ppl)"
done

section "generate (greedy, 48 tokens)"
prompt="once upon a time"
for adapter in "" recovery shakespeare; do
  args=()
  [ -n "$adapter" ] && args=(--adapter "$adapter")
  printf '[%s] %s' "${adapter:-base}" "$prompt"
  q generate "${args[@]}" -n 48 "$prompt"
done

section "export the Shakespeare adapter in PEFT format"
q export shakespeare "$out/shakespeare-peft"

section "adapters and jobs"
q adapters
q jobs

stop_daemon
trap - EXIT
printf '\nqlorad stopped. The exported adapter and the loss chart are in %s\n' "$out"
