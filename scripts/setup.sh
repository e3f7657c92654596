#!/usr/bin/env bash
# Set up edge-spec in .venv: llama-cpp-python compiled for this machine, then edge-spec with its dev and bench tools.
#   CUDA when nvcc is on PATH and nvidia-smi sees a GPU; on CPUs with AMX, a build without AMX kernels (llama.cpp's AMX weight buffer
#   dies with SIGILL in VMs) that keeps every other ISA extension the CPU has, so weight repacking stays on.
#   CMAKE_ARGS in the environment overrides the choice.
set -euo pipefail
cd "$(dirname "$0")/.."

cmake_args() {
  if command -v nvcc >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "-DGGML_CUDA=on"
  elif grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    local args="-DGGML_NATIVE=OFF" flag option
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
                avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
      flag=${pair%%:*} option=${pair##*:}
      if grep -qw "$flag" /proc/cpuinfo; then args="$args -DGGML_$option=ON"; else args="$args -DGGML_$option=OFF"; fi
    done
    echo "$args"
  fi
}

python3 -m venv .venv
args=${CMAKE_ARGS-$(cmake_args)}
echo "setup: building llama-cpp-python with CMAKE_ARGS='$args' (several minutes)" >&2
CMAKE_ARGS="$args" .venv/bin/pip install --no-cache-dir 'llama-cpp-python>=0.3.36,<0.4'
.venv/bin/pip install -e '.[dev,bench]'
