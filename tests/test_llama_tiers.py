"""scripts/llama_tiers.py: random Llama-shaped tiers whose greedy next token is a shared permutation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_spec.backend import Tier, TierConfig

_SPEC = importlib.util.spec_from_file_location(
    "llama_tiers", Path(__file__).resolve().parents[1] / "scripts" / "llama_tiers.py"
)
llama_tiers = sys.modules["llama_tiers"] = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(llama_tiers)

N_VOCAB = 4096  # the shapes' vocabulary, cut down for a test


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llama_tiers")
    patch = pytest.MonkeyPatch()
    patch.setattr(llama_tiers, "N_VOCAB", N_VOCAB)
    shapes = {"target": (2, 0.0), "draft": (1, 0.3)}  # (layers, disagreeing share)
    paths = {
        name: llama_tiers.write_tier(out / f"{name}.gguf", llama_tiers.Shape(n, 128, 256, 4, 2, d), seed)
        for seed, (name, (n, d)) in enumerate(shapes.items())
    }
    patch.undo()
    return paths


def _greedy(tier: Tier, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """n greedy tokens one decode at a time, and each step's margin of the top logit over the second."""
    tokens, margins = list(prompt), []
    rows = tier.score(tokens, 1)
    for _ in range(n):
        top2 = np.sort(rows[0])[-2:]
        margins.append(float(top2[1] - top2[0]))
        tokens.append(int(rows[0].argmax()))
        rows = tier.decode(tokens[-1:], 1)
    return tokens[len(prompt) :], margins


def test_the_greedy_chain_is_the_successor_permutation(tiers: dict[str, Path]) -> None:
    patch = pytest.MonkeyPatch()
    patch.setattr(llama_tiers, "N_VOCAB", N_VOCAB)
    succ = llama_tiers._successors(np.random.default_rng(0), 0.0)
    patch.undo()
    with Tier(tiers["target"], TierConfig(n_ctx=256, n_threads=1)) as target:
        assert target.n_vocab == N_VOCAB and target.n_layer == 2
        out, margins = _greedy(target, target.tokenize("the quick brown fox"), 64)
    assert out[1:] == [int(succ[t]) for t in out[:-1]]
    assert min(margins) > 10  # no near-ties: GPU and CPU kernels pick the same tokens


def test_a_draft_agrees_on_all_but_its_disagreeing_share(tiers: dict[str, Path]) -> None:
    config = TierConfig(n_ctx=512, n_threads=1)
    with Tier(tiers["target"], config) as target, Tier(tiers["draft"], config) as draft:
        target.check_compatible(draft)
        prompt = target.tokenize("the quick brown fox")
        out, _ = _greedy(target, prompt, 300)
        seq = prompt + out
        guesses = draft.score(seq, len(out) + 1)[:-1].argmax(axis=1)  # teacher-forced next-token guesses
    agreement = float(np.mean(guesses == np.array(out)))
    assert 0.6 < agreement < 0.8  # 0.3 of the tokens have another successor in the draft
