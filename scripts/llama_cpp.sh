#!/usr/bin/env bash
# Build llama.cpp for CPU once, into a cache outside the repository, and print its version.
#
# The source is the llama.cpp vendored in the llama-cpp-python source distribution (a pinned
# version, fetched with pip), so no git checkout is needed. Built: libllama and
# prunectl-llama-logits (scripts/llama_logits.cpp: logits and greedy tokens for the opt-in test,
# llama-bench's prompt/decode speed test for bench/llama_cpp_speed.py). llama-bench itself needs
# llama.cpp's common library, a build several times longer, so it is not built. Re-running reuses
# the cache; delete the cache folder to rebuild from scratch.
#
#   bash scripts/llama_cpp.sh            # then: export PRUNECTL_LLAMA_CPP=<the printed folder>
#
# Environment: PRUNECTL_LLAMA_CPP_CACHE (default ~/.cache/prunectl/llama.cpp), JOBS (default 2).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PRUNECTL_LLAMA_CPP_CACHE:-$HOME/.cache/prunectl/llama.cpp}
SDIST_VERSION=0.3.36
JOBS=${JOBS:-2}
SRC=$CACHE/src
BUILD=$CACHE/build
mkdir -p "$CACHE"

if [ ! -f "$SRC/CMakeLists.txt" ]; then
    tmp=$(mktemp -d)
    python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$tmp"
    tar -xzf "$tmp/llama_cpp_python-$SDIST_VERSION.tar.gz" -C "$tmp"
    rm -rf "$SRC"
    mv "$tmp/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp" "$SRC"
    rm -rf "$tmp"
fi

cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON >"$CACHE/cmake.log"
cmake --build "$BUILD" -j "$JOBS" --target llama >"$CACHE/build.log"
BIN=$BUILD/bin
if [ ! -x "$BIN/prunectl-llama-logits" ] || [ "$REPO/scripts/llama_logits.cpp" -nt "$BIN/prunectl-llama-logits" ]; then
    g++ -O2 -std=c++17 "$REPO/scripts/llama_logits.cpp" -I "$SRC/include" -I "$SRC/ggml/include" \
        -L "$BIN" -lllama -lggml -lggml-base -Wl,-rpath,"$BIN" -o "$BIN/prunectl-llama-logits"
fi

echo "llama.cpp $SDIST_VERSION (vendored in llama-cpp-python $SDIST_VERSION)" >"$CACHE/VERSION"
cat "$CACHE/VERSION"
echo "$BIN"
