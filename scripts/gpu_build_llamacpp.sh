#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize with CUDA for the H200 (sm_90), the engine
# Ollama runs, for the vs-Ollama measurements (issue 15). The H200 machine has no network: the
# sources travel in the ignored .llamacpp/llama.cpp.tar.xz (llama.cpp as vendored by the
# llama-cpp-python sdist, models/docs/tests left out; docs/gpu.md says how to make it). The
# toolchain is the image's: nvcc in /usr/local/cuda, cmake and ninja in /opt/torch/.venv/bin.
#
# Static binaries (one file each, no libggml*.so beside them) in /var/tmp/llamacpp/build/bin, for
# the later calls of the same warm machine. They cannot travel back: 78 and 86 MB, 84 MB as one
# .tar.xz, over the 64 MiB a call returns; so each device sequence builds them (250 s, measured).
#
#   bash scripts/gpu_build_llamacpp.sh [SOURCES_TAR]      (on the device; carry .llamacpp)
#
# It can build in the background while the same call goes on (OUT names where its logs go):
#   (OUT=/var/tmp/llamacpp/logs setsid bash scripts/gpu_build_llamacpp.sh > /var/tmp/llamacpp.out 2>&1 &)
set -euo pipefail
src=${1:-.llamacpp/llama.cpp.tar.xz}
out=${OUT:-/tmp/out}
work=/var/tmp/llamacpp
mkdir -p "$work" "$out"
bin="$work/build/bin"
# Markers for the steps that wait for the build: build.done, or build.failed to stop them at once.
trap '[ $? -eq 0 ] || { mkdir -p "$bin"; touch "$bin/build.failed"; }' EXIT
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
started=$(date +%s)
tar xJf "$src" -C "$work"
cmake -S "$work/llama.cpp" -B "$work/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > "$out/configure.log" 2>&1 \
    || { tail -40 "$out/configure.log"; exit 1; }
echo "configured in $(( $(date +%s) - started )) s"
cmake --build "$work/build" -j "$(nproc)" --target llama-server llama-quantize > "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; exit 1; }
echo "built in $(( $(date +%s) - started )) s"
"$bin/llama-server" --version 2>&1 | tail -2 || true
ls -la "$bin/llama-server" "$bin/llama-quantize"
touch "$bin/build.done"
