#!/usr/bin/env bash
# Here, before a GPU session's first device call: build llama.cpp's llama-bench with its CUDA
# backend for sm_90 (nvcc is on this machine; no GPU needed), from the llama.cpp that
# llama-cpp-python 0.3.36 vendors (the one the llamacpp runtime runs), into .llamacpp/bin,
# which gpu_check.sh runs when `carry` names .llamacpp. Shared libraries (ggml, ggml-cuda,
# llama) beside the binary, stripped; it links the device's CUDA 13 runtime and cuBLAS.
#   usage: bash reports/device/build_llamacpp_cuda.sh      (about 40 to 60 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qs '^/.llamacpp/$' .git/info/exclude || echo /.llamacpp/ >> .git/info/exclude
work=${G4C_LLAMACPP_BUILD:-/tmp/llamacpp-cuda}
mkdir -p "$work" .llamacpp/bin
if [ ! -d "$work/src" ]; then
  python3 -m pip download -q --no-deps --no-binary :all: -d "$work" llama-cpp-python==0.3.36
  tar xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
  mv "$work"/llama_cpp_python-0.3.36/vendor/llama.cpp "$work/src"
fi
cmake -S "$work/src" -B "$work/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DGGML_CUDA_NCCL=OFF -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON >/dev/null
SECONDS=0
cmake --build "$work/build" --target llama-bench -j "$(nproc)"
echo "built in ${SECONDS}s"
cp "$work"/build/bin/llama-bench .llamacpp/bin/
find "$work/build/bin" -name '*.so*' -exec cp -P {} .llamacpp/bin/ \;
strip --strip-unneeded .llamacpp/bin/* 2>/dev/null || true
du -sh .llamacpp/bin
ldd .llamacpp/bin/llama-bench | grep -E "cuda|cublas|ggml|llama|not found" || true
