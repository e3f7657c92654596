#!/usr/bin/env bash
# One-shot check of edge-spec on an NVIDIA GPU machine without network, in about 10 minutes on 16 cores.
#   bash scripts/gpu_check.sh --source SRC --out DIR [--wheels DIR] [--work DIR] [--keep-wheel] [--small]
# SRC: llama-cpp-python's source (its sdist, or the tarball scripts/trim_sdist.sh makes of it, or an unpacked
#   tree), or a wheel built elsewhere (installed as it is).
# --wheels: pure-Python wheels to install offline where python3 lacks them (gguf, diskcache; README, GPU).
# --work: where the venv, the build and the generated models go (default: /tmp/edge-spec-gpu-check; the 8B
#   tier alone is 4.5 GB). --keep-wheel: copy the llama-cpp-python wheel built into DIR (it is py3-none: a
#   later run takes it as --source and skips the build). --small: small shapes, 1 prompt, a CPU rehearsal.
# WORK/venv is a fresh venv that also reads python3's packages (a .pth file naming python3's site-packages:
#   python3 may itself be a venv, whose packages --system-site-packages would not see), so that nothing is
#   installed into python3's own environment.
# Assumes on the machine: python3 >= 3.10 with pip, numpy, click, jinja2, pyyaml, requests, tqdm, pytest,
#   hypothesis, huggingface-hub, scikit-build-core and setuptools >= 68 (the GPU image has them); CMake, ninja,
#   a C/C++ compiler, and for CUDA nvcc and nvidia-smi. Without nvidia-smi it builds for the CPU (rehearsal).
# Steps, each timed: env, build, install, tests, tiers, doctor, bench (README, GPU). Writes DIR/gpu_check.log
#   (everything printed) and DIR/gpu_check.json (the machine, each step's seconds and status, doctor's
#   reports, bench's summary). Exit status: 0 when every step passed, 1 when some failed, 2 on bad arguments.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
source="" out="" wheels="" work=${TMPDIR:-/tmp}/edge-spec-gpu-check small=0 keep_wheel=0
usage() {
  echo "usage: $0 --source SRC --out DIR [--wheels DIR] [--work DIR] [--keep-wheel] [--small]" >&2
  exit 2
}
while [[ $# -gt 0 ]]; do
  case $1 in
    --source) source=$(realpath "${2:?}"); shift 2 ;;
    --out) out=$(realpath -m "${2:?}"); shift 2 ;;
    --wheels) wheels=$(realpath "${2:?}"); shift 2 ;;
    --work) work=$(realpath -m "${2:?}"); shift 2 ;;
    --keep-wheel) keep_wheel=1; shift ;;
    --small) small=1; shift ;;
    *) usage ;;
  esac
done
[[ -n $source && -e $source && -n $out ]] || usage
mkdir -p "$out" "$work"
log=$out/gpu_check.log steps=$work/steps.jsonl
: >"$log"
: >"$steps"
exec > >(tee -a "$log") 2>&1
venv=$work/venv
py=$venv/bin/python
models=$work/models
failed=0

# step NAME COMMAND...: run, print and record its duration and status.
step() {
  local name=$1 start end rc
  shift
  echo "gpu_check: step $name: $*"
  start=$(date +%s%N)
  "$@"
  rc=$?
  end=$(date +%s%N)
  local seconds=$(((end - start) / 1000000000)).$(((end - start) / 100000000 % 10))
  printf '{"step": "%s", "seconds": %s, "status": %d}\n' "$name" "$seconds" "$rc" >>"$steps"
  echo "gpu_check: step $name: $seconds s, $([[ $rc -eq 0 ]] && echo ok || echo "FAILED (status $rc)")"
  [[ $rc -eq 0 ]] || failed=1
  return "$rc"
}

gpu=$(nvidia-smi --query-gpu=name,compute_cap,memory.total,memory.free,driver_version --format=csv,noheader 2>/dev/null | head -1)
arch=$(cut -d, -f2 <<<"$gpu" | tr -d ' .')
if [[ -n $arch ]]; then
  cmake_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DLLAVA_BUILD=OFF"
else
  cmake_args="-DLLAVA_BUILD=OFF"
  echo "gpu_check: no GPU seen by nvidia-smi: building for the CPU (a rehearsal)"
fi
echo "gpu_check: ${gpu:-no GPU}; $(nproc) cores; CMAKE_ARGS=$cmake_args"

env_step() {
  if [[ ! -x $py ]]; then
    python3 -m venv --without-pip "$venv" || return
    python3 -c "import site; print('\n'.join(site.getsitepackages()))" \
      >"$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/python3-packages.pth" || return
  fi
  if [[ -n $wheels ]]; then
    "$py" -m pip install -q --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl || return
  fi
  "$py" - <<'EOF'
import importlib.util, sys
need = "numpy gguf click jinja2 yaml requests tqdm pytest hypothesis huggingface_hub diskcache scikit_build_core setuptools"
missing = [m for m in need.split() if importlib.util.find_spec(m) is None]
print(f"gpu_check: Python {sys.version.split()[0]} at {sys.executable}" + (f"; missing: {' '.join(missing)}" if missing else ""))
sys.exit(1 if missing else 0)
EOF
}

build_step() {
  if [[ $source == *.whl ]]; then
    "$py" -m pip install -q --no-index --no-deps --force-reinstall "$source"
  else
    rm -rf "$work/wheel"
    CMAKE_ARGS=$cmake_args CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$py" -m pip wheel --no-deps --no-build-isolation --no-index -w "$work/wheel" "$source" &&
      "$py" -m pip install -q --no-index --no-deps --force-reinstall "$work"/wheel/llama_cpp_python-*.whl &&
      if [[ $keep_wheel -eq 1 ]]; then cp "$work"/wheel/llama_cpp_python-*.whl "$out/"; fi
  fi || return
  "$py" -c "import llama_cpp as lc; lc.llama_backend_init(); print('gpu_check: GPU offload:', bool(lc.llama_supports_gpu_offload()))"
  if [[ -n $arch ]]; then
    "$py" -c "import llama_cpp as lc, sys; lc.llama_backend_init(); sys.exit(0 if lc.llama_supports_gpu_offload() else 1)"
  fi
}

install_step() {
  (cd "$repo" && "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e .)
}

tests_step() {
  (cd "$repo" && "$py" -m pytest -q -p no:cacheprovider -m "gpu and not real" -rs tests/test_pyramid.py tests/test_gpu.py)
}

tiers_step() {
  "$py" "$repo/scripts/llama_tiers.py" "$models" $([[ $small -eq 1 ]] && echo --small)
}

doctor_step() {
  local tier rc=0
  for tier in llama-1b llama-3b llama-8b; do
    "$venv/bin/edge-spec" doctor -m "$models/$tier.gguf" --draft none --json >"$work/doctor-$tier.json" || rc=1
  done
  "$venv/bin/edge-spec" doctor -m "$models/llama-8b.gguf" -md "$models/llama-1b.gguf" \
    --qualifier "$models/llama-3b.gguf" --json >"$work/doctor-pyramid.json" || rc=1
  "$py" -c "
import json, sys
for name in sys.argv[1:]:
    for line in json.load(open(name))['verdict']:
        print('gpu_check: doctor', name.rsplit('/', 1)[-1], line)" "$work"/doctor-*.json
  return $rc
}

bench_step() {
  local limit=2 tokens=128
  [[ $small -eq 1 ]] && limit=1 tokens=64
  (cd "$work" && "$venv/bin/edge-spec" bench --target "$models/llama-8b.gguf" --qualifier "$models/llama-3b.gguf" \
    --draft "$models/llama-1b.gguf" --modes sd,psd-a,psd-f --lookahead fixed:15,fixed:25 --lookahead goodput \
    --suite code --limit $limit --max-tokens $tokens --max-steal 1 --no-progress --out "$work/bench")
}

step env env_step && step build build_step && step install install_step && {
  step tests tests_step
  step tiers tiers_step && { step doctor doctor_step; step bench bench_step; }
}

"$py" - "$out/gpu_check.json" "$steps" "$work" "$gpu" "$cmake_args" "$small" <<'EOF' || failed=1
import json, os, platform, sys
from pathlib import Path
dest, steps, work, gpu, cmake_args, small = sys.argv[1:]
work = Path(work)
def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
bench = read(work / "bench.json")
doc = {
    "machine": {"gpu": gpu or None, "cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
    "cmake_args": cmake_args,
    "small": small == "1",
    "steps": [json.loads(line) for line in Path(steps).read_text().splitlines()],
    "doctor": {p.stem.removeprefix("doctor-"): read(p) for p in sorted(work.glob("doctor-*.json"))},
    "bench": None if bench is None else {k: bench.get(k) for k in ("machine", "models", "settings", "summary")},
}
Path(dest).write_text(json.dumps(doc, indent=1))
print(f"gpu_check: wrote {dest}")
EOF
echo "gpu_check: $([[ $failed -eq 0 ]] && echo 'every step passed' || echo 'some steps FAILED'); log: $log"
exit "$failed"
