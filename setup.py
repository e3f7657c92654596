"""Builds edge_spec._rowmath, the C kernel for row math; all other metadata: pyproject.toml."""

import sys

from setuptools import Extension, setup

# Vectorised expf/logf and float sums (omp simd reductions) without -ffast-math: its reassociation costs the
# divergences 1e-4 of precision. The kernel clamps -inf logits itself and reads no NaN.
FLAGS = (
    ["/O2"]
    if sys.platform == "win32"
    else [
        "-O3",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-ffinite-math-only",
        "-fno-signed-zeros",
        "-fopenmp-simd",
    ]
)

setup(
    ext_modules=[
        Extension(
            "edge_spec._rowmath",
            ["edge_spec/_rowmath.c"],
            extra_compile_args=FLAGS,
            libraries=[] if sys.platform == "win32" else ["m"],
        )
    ]
)
