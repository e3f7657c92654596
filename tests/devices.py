"""Where a test's tiers run: on the CPU, or fully offloaded to a GPU.

`DEVICES` parametrizes a tier fixture by its GPU layers (0, or -1 = all); the GPU case carries the `gpu`
marker and is skipped unless this llama.cpp build offloads to a GPU it sees (`backend.gpu_available()`), so
`pytest -m gpu` runs exactly the offloaded cases on a GPU machine and skips them elsewhere.
"""

from __future__ import annotations

import pytest

from edge_spec.backend import gpu_available

GPU = (
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="no GPU: this llama.cpp build offloads nothing"),
)
"""Marks of a test that needs a GPU."""

DEVICES = (pytest.param(0, id="cpu"), pytest.param(-1, id="gpu", marks=GPU))
"""GPU layers of a tier fixture: none, or all of them on the GPU."""
