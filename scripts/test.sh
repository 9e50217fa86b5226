#!/usr/bin/env bash
# The test command: builds twice (release, and ASan+UBSan with leak checking) and runs
# the whole suite in both, then the wire and GGUF fuzzers for a minute each (a clang build of
# its own, ASan+UBSan), and prints `tests: N passed, N failed` over all of them.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

configure() { # dir, extra meson args... (warnings are errors here, not in a user's build)
  local dir=$1; shift
  [ -f "$dir/build.ninja" ] || meson setup "$dir" -Dwerror=true "$@" >/dev/null || exit 1
}
configure build
configure build-sanitize -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
  -Dc_args=-fno-sanitize-recover=all
CC=clang configure build-fuzz -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
  -Dfuzz=true "-Dc_args=-fsanitize=fuzzer-no-link -fno-sanitize-recover=all"

status=0
for dir in build build-sanitize; do
  ninja -C "$dir" >/dev/null || { echo "build failed in $dir"; ninja -C "$dir" | tail -30; exit 1; }
  rm -f "$dir/meson-logs/testlog.json"
  rm -rf "$dir/tests/xdg-cache" # the model cache files of the last run's temporary models
  echo "== tests ($dir)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    meson test -C "$dir" --print-errorlogs "$@" || status=1
done
fuzzers="tests/fuzz_wire tests/fuzz_gguf"
ninja -C build-fuzz $fuzzers >/dev/null || { echo "build failed in build-fuzz"; ninja -C build-fuzz $fuzzers | tail -30; exit 1; }
rm -f build-fuzz/meson-logs/testlog.json
echo "== fuzzers (build-fuzz)"
meson test -C build-fuzz --no-rebuild --print-errorlogs fuzz_wire fuzz_gguf || status=1
grep -h -E '^(stat::|Done )|cov: ' build-fuzz/meson-logs/testlog.txt | tail -6
/usr/bin/python3 scripts/test-summary.py build/meson-logs/testlog.json \
  build-sanitize/meson-logs/testlog.json build-fuzz/meson-logs/testlog.json || status=1
exit $status
