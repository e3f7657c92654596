#!/usr/bin/env bash
# Trim the llama-cpp-python source distribution to what a CPU or CUDA build needs, so that it can be carried
# to a machine without network (scripts/gpu_check.sh builds it there).
#   usage: bash scripts/trim_sdist.sh SDIST.tar.gz OUT.tar.gz
# Drops the git history (.git: 38 MiB of the 73), documentation, examples, tests, the vocabulary files under models/, llama.cpp's tools other than mtmd
# (llama-cpp-python's CMakeLists builds it), its Python converters and every ggml backend but CPU and CUDA.
# The 0.3.36 sdist: 73 MiB, trimmed: see bench/README.md. Prints both sizes.
set -euo pipefail
if [[ $# -ne 2 || ! -f $1 ]]; then
  echo "usage: $0 SDIST.tar.gz OUT.tar.gz" >&2
  exit 2
fi
sdist=$(realpath "$1")
out=$(realpath -m "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tar -xzf "$sdist" -C "$work"
shopt -s nullglob
roots=("$work"/*/)
if [[ ${#roots[@]} -ne 1 || ! -f ${roots[0]}CMakeLists.txt ]]; then
  echo "trim_sdist: $1 is not a llama-cpp-python source distribution" >&2
  exit 2
fi
root=${roots[0]%/}
name=$(basename "$root")
lc=$root/vendor/llama.cpp

rm -rf "$root"/{.git,.github,docs,docker,examples,tests,scripts,mkdocs.yml}
rm -rf "$lc"/{.git,.github,.devops,models,docs,examples,pocs,benches,tests,media,gguf-py,conversion,scripts,grammars,requirements,skills,ci,app}
rm -f "$lc"/convert_*.py
for tool in "$lc"/tools/*/; do
  [[ $(basename "$tool") == mtmd ]] || rm -rf "$tool"
done
for backend in "$lc"/ggml/src/ggml-*/; do
  case $(basename "$backend") in
    ggml-cpu | ggml-cuda) ;;
    *) rm -rf "$backend" ;;
  esac
done

mkdir -p "$(dirname "$out")"
tar -czf "$out" -C "$work" "$name"
mib() { echo "$(( ($(stat -c %s "$1") + 524287) / 1048576 )) MiB"; }
echo "trim_sdist: $(basename "$sdist") $(mib "$sdist") -> $(basename "$out") $(mib "$out")"
