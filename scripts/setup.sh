#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run qlorad.
# Idempotent: when everything is present it does nothing (no apt-get, no npm at all).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  gcc pkg-config meson ninja-build          # build
  libopenblas-dev libuv1-dev libmsgpack-dev liblmdb-dev nettle-dev   # libraries
  libonig-dev libutf8proc-dev               # tokenizer.json: regex pre-tokenizers, NFC
  python3 python3-numpy python3-msgpack python3-torch     # references, peers, Python client
  python3-jinja2                            # the chat templates' reference (transformers' renderer)
  nodejs                                    # Hugging Face tokenizers, the tokenizer's reference
  valgrind
  clang libclang-rt-14-dev                  # the wire fuzzer (libFuzzer, ASan, UBSan)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Some nodejs builds carry npm inside; Debian's own nodejs needs its npm package.
command -v npm >/dev/null || missing+=(npm)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Hugging Face tokenizers (its Rust library, as a Node binding) for the tokenizer tests
# (tests/test_tokenizer_hf.py), pinned, in a git-ignored folder of the work tree.
HF_TOKENIZERS=@anush008/tokenizers@0.6.0
if [ ! -f .deps/node/node_modules/@anush008/tokenizers/package.json ] ||
   ! grep -q '"version": "0.6.0"' .deps/node/node_modules/@anush008/tokenizers/package.json; then
  echo "setup: installing $HF_TOKENIZERS into .deps/node"
  mkdir -p .deps/node
  npm install --prefix .deps/node --no-save --no-audit --no-fund --loglevel=error "$HF_TOKENIZERS" >/dev/null
fi

# llama.cpp itself, the reference for GGUF, ggml's quant blocks and GGUF adapters
# (tests/ref/llama_ref.c): node-llama-cpp's prebuilt libllama/libggml for this CPU family
# and, from the same npm release, the git bundle of the llama.cpp source it was built from
# (headers for the shim, gguf-py for writing test files). Pinned, in .deps/llama.
NLC_VERSION=3.22.1
case "$(uname -m)" in
  x86_64) NLC_ARCH=linux-x64 ;;
  aarch64) NLC_ARCH=linux-arm64 ;;
  *) NLC_ARCH="" ;;
esac
if [ -n "$NLC_ARCH" ] && [ "$(cat .deps/llama/version 2>/dev/null)" != "$NLC_VERSION $NLC_ARCH" ]; then
  echo "setup: installing llama.cpp (node-llama-cpp $NLC_VERSION, $NLC_ARCH) into .deps/llama"
  rm -rf .deps/llama && mkdir -p .deps/llama/pack
  ( cd .deps/llama/pack &&
    npm pack --loglevel=error "node-llama-cpp@$NLC_VERSION" "@node-llama-cpp/$NLC_ARCH@$NLC_VERSION" >/dev/null &&
    tar xzf "node-llama-cpp-$NLC_VERSION.tgz" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json &&
    mkdir bins && tar xzf "node-llama-cpp-$NLC_ARCH-$NLC_VERSION.tgz" -C bins )
  git -c advice.detachedHead=false clone -q .deps/llama/pack/package/llama/gitRelease.bundle .deps/llama/src
  rm -rf .deps/llama/src/.git
  mv ".deps/llama/pack/bins/package/bins/$NLC_ARCH" .deps/llama/lib
  cp .deps/llama/pack/package/llama/llama.cpp.info.json .deps/llama/
  rm -rf .deps/llama/pack
  echo "$NLC_VERSION $NLC_ARCH" > .deps/llama/version
fi
