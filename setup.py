"""Builds edge_spec._rowmath, the C kernel for row math; all other metadata: pyproject.toml."""

import sys

from setuptools import Extension, setup

# -ffast-math lets the compiler vectorise expf/logf (glibc's libmvec) and the float sums; the kernel
# clamps -inf logits itself, so it assumes nothing else of IEEE special values.
FLAGS = ["/O2", "/fp:fast"] if sys.platform == "win32" else ["-O3", "-ffast-math"]

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
