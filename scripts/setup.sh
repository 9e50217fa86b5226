#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run qlorad.
# Idempotent: when every package is present it does nothing (no apt-get at all).
set -euo pipefail

packages=(
  gcc pkg-config meson ninja-build          # build
  libopenblas-dev libuv1-dev libmsgpack-dev liblmdb-dev nettle-dev   # libraries
  python3 python3-numpy python3-msgpack python3-torch     # references, peers, Python client
  python3-jinja2                            # the chat templates' reference (transformers' renderer)
  valgrind
  clang libclang-rt-14-dev                  # the wire fuzzer (libFuzzer, ASan, UBSan)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
