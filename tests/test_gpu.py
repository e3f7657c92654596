"""Fully offloaded tiny tiers agree with the CPU, and speculation on them stays on the target's greedy path
with llama.cpp's default GPU kernels (f16 KV cache, flash attention as llama.cpp decides). Marker `gpu`:
skipped unless this llama.cpp build offloads to a GPU it sees. The exactness tests of test_pyramid.py and
the real model's greedy-path check run offloaded too (their `gpu` cases)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from devices import GPU
from test_pyramid import EXACT, N_TOKENS, PROMPT
from test_real_models import GREEDY_PATH_TOLERANCE, greedy_path_deficits

from edge_spec.api import Pyramid
from edge_spec.backend import Tier, TierConfig
from edge_spec.pyramid import StageConfig

pytestmark = list(GPU)

OFFLOADED = dataclasses.replace(EXACT, n_gpu_layers=-1)


def test_offloaded_greedy_output_is_the_cpus(tiny_target: Path) -> None:
    """The tiny models' top logits stand ~8 apart: GPU and CPU kernels must pick the same tokens."""
    outputs = []
    for config in (dataclasses.replace(EXACT, n_gpu_layers=0), OFFLOADED):
        with Tier(tiny_target, config) as tier:
            out = Pyramid(tier).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
            outputs.append((tier.device, out.token_ids))
    (cpu, on_cpu), (gpu, on_gpu) = outputs
    assert cpu == "CPU" and gpu.startswith("GPU (")
    assert on_gpu == on_cpu


@pytest.mark.parametrize(
    ("draft", "stages"),
    [
        ("noisy", [StageConfig(lookahead="fixed:4")]),
        ("ngram", [StageConfig(lookahead="fixed:6")]),
        ("noisy", [StageConfig(lookahead="goodput")]),
    ],
)
def test_offloaded_speculation_stays_on_the_greedy_path(
    tiny_target: Path, tiny_noisy: Path, draft: str, stages: list[StageConfig]
) -> None:
    default_kernels = TierConfig(n_ctx=512, n_gpu_layers=-1)
    with Tier(tiny_target, default_kernels) as target, Tier(tiny_noisy, default_kernels) as noisy:
        pyr = Pyramid(target, None, noisy if draft == "noisy" else draft, stages)
        out = pyr.generate(PROMPT, max_tokens=N_TOKENS, raw=True)
        deficits = greedy_path_deficits(target, pyr.encode(PROMPT, raw=True), out.token_ids)
    assert len(out.token_ids) == N_TOKENS
    assert deficits.max() < GREEDY_PATH_TOLERANCE, f"worst deficit {deficits.max():.3f}"
