"""The N-tier loop on tiny generated models: lossless modes reproduce the target's own output exactly."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from devices import DEVICES

from edge_spec.api import Pyramid
from edge_spec.backend import Tier, TierConfig
from edge_spec.errors import ConfigError, ContextOverflowError, EdgeSpecError
from edge_spec.lookahead import BLIND_K
from edge_spec.proposers import ROUND_LAG, ModelDrafter
from edge_spec.pyramid import StageConfig
from edge_spec.sampling import SamplingConfig, warp
from edge_spec.steps import serve

# f32 KV cache without flash attention: batched and single-token decodes agree to ~1e-5, so exact token
# equality is a fair demand (README, notes on llama.cpp: its default kernels differ at near-ties).
EXACT = TierConfig(n_ctx=512, cache_type="f32", flash_attn=False)
PROMPT = "the quick brown fox jumps over the lazy dog and the cat"
N_TOKENS = 96


ON_EVERY_DEVICE = pytest.mark.parametrize("tiers", DEVICES, indirect=True)
"""The tiers on the CPU, and fully offloaded where a GPU is (marker `gpu`, skipped elsewhere)."""


@pytest.fixture(scope="module")
def tiers(
    request: pytest.FixtureRequest, tiny_target: Path, tiny_same: Path, tiny_noisy: Path, tiny_unrelated: Path
) -> Iterator[dict[str, Tier]]:
    """The tiny tiers, on the CPU unless a test asks for a device (ON_EVERY_DEVICE)."""
    config = dataclasses.replace(EXACT, n_gpu_layers=getattr(request, "param", 0))
    loaded = {
        name: Tier(path, config)
        for name, path in [
            ("target", tiny_target),
            ("same", tiny_same),
            ("noisy", tiny_noisy),
            ("unrelated", tiny_unrelated),
        ]
    }
    if config.n_gpu_layers != 0:
        assert all(t.device == f"GPU ({t.n_layer}/{t.n_layer} layers)" for t in loaded.values())
    yield loaded
    for tier in loaded.values():
        tier.close()


def _pyramid(
    tiers: dict[str, Tier], draft: str | None, qualifier: str | None, stages: list[StageConfig]
) -> Pyramid:
    d = None if draft is None else draft if draft == "ngram" else tiers[draft]
    q = None if qualifier is None else tiers[qualifier]
    return Pyramid(tiers["target"], q, d, stages)


@pytest.fixture(scope="module")
def reference(tiers: dict[str, Tier]) -> list[int]:
    """The target's own greedy output, one token per decode."""
    out = _pyramid(tiers, None, None, [StageConfig()]).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
    assert len(out.token_ids) == N_TOKENS
    return out.token_ids


@ON_EVERY_DEVICE
@pytest.mark.parametrize("draft", ["same", "noisy", "unrelated", "ngram"])
@pytest.mark.parametrize("block", [1, 3, 5, 8])
def test_two_tiers_exact_greedy_equals_target(
    tiers: dict[str, Tier], reference: list[int], draft: str, block: int
) -> None:
    out = _pyramid(tiers, draft, None, [StageConfig(lookahead=f"fixed:{block}")]).generate(
        PROMPT, max_tokens=N_TOKENS, raw=True
    )
    assert out.token_ids == reference
    (stage,) = out.stats.stages
    assert stage.proposed > 0 or draft == "ngram"
    rate = stage.accepted / stage.proposed if stage.proposed else 0.0
    if draft == "same":
        assert rate == 1.0
    if draft == "unrelated":
        assert rate < 0.1
    if draft == "noisy":
        assert 0.2 < rate < 0.95


@ON_EVERY_DEVICE
@pytest.mark.parametrize("draft", ["same", "noisy", "unrelated", "ngram"])
@pytest.mark.parametrize(("draft_block", "qualifier_block"), [(1, 1), (2, 5), (4, 8), (6, 3)])
def test_three_tiers_exact_greedy_equals_target(
    tiers: dict[str, Tier], reference: list[int], draft: str, draft_block: int, qualifier_block: int
) -> None:
    qualifier = "noisy" if draft != "noisy" else "same"
    stages = [
        StageConfig(lookahead=f"fixed:{draft_block}"),
        StageConfig(lookahead=f"fixed:{qualifier_block}"),
    ]
    out = _pyramid(tiers, draft, qualifier, stages).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
    assert out.token_ids == reference
    assert len(out.stats.stages) == 2


@ON_EVERY_DEVICE
@pytest.mark.parametrize("divergence", ["js", "js-sym", "kl", "tv"])
def test_fuzzy_tau_zero_is_exact_greedy(
    tiers: dict[str, Tier], reference: list[int], divergence: str
) -> None:
    stages = [
        StageConfig("fuzzy", 0.0, divergence, lookahead="fixed:3"),
        StageConfig("fuzzy", 0.0, divergence, lookahead="fixed:6"),
    ]
    out = _pyramid(tiers, "noisy", "same", stages).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
    assert out.token_ids == reference


def test_fuzzy_accepts_more_as_tau_grows(tiers: dict[str, Tier], reference: list[int]) -> None:
    rates = []
    for tau in (0.0, 0.3, 10.0):
        stage = StageConfig("fuzzy", tau, "js", lookahead="fixed:4")
        out = _pyramid(tiers, "noisy", None, [stage]).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
        (s,) = out.stats.stages
        rates.append(s.accepted / s.proposed)
        if tau == 10.0:  # everything passes: the output is the draft's own greedy text
            assert s.accepted == s.proposed
            assert out.token_ids != reference
    assert rates[0] <= rates[1] <= rates[2]


def test_psd_a_exact_inner_fuzzy_outer_runs(tiers: dict[str, Tier]) -> None:
    stages = [StageConfig("exact", lookahead="fixed:3"), StageConfig("fuzzy", 0.5, "js", lookahead="fixed:6")]
    out = _pyramid(tiers, "unrelated", "noisy", stages).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
    assert len(out.token_ids) == N_TOKENS
    inner, outer = out.stats.stages
    assert inner.verifier == outer.proposer


@pytest.mark.parametrize(("draft", "qualifier"), [(None, None), ("noisy", None), ("ngram", "noisy")])
def test_seeded_sampling_is_deterministic(
    tiers: dict[str, Tier], draft: str | None, qualifier: str | None
) -> None:
    n_stages = (draft is not None) + (qualifier is not None)
    pyr = _pyramid(tiers, draft, qualifier, [StageConfig(lookahead="fixed:4")] * max(n_stages, 1))
    runs = [
        pyr.generate(
            PROMPT, max_tokens=48, raw=True, sampling=SamplingConfig(temperature=1.5, seed=seed)
        ).token_ids
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_lossless_sampling_follows_the_target_distribution(tiers: dict[str, Tier]) -> None:
    """Speculative sampling with a noisy draft emits tokens distributed as the target's own sampling.

    The second generated token depends on the draft's acceptance test and the residual, so we compare
    its empirical distribution, given the most common first token, with the target's warped probabilities.
    """
    sampling = SamplingConfig(temperature=2.0)
    pyr = _pyramid(tiers, "noisy", None, [StageConfig(lookahead="fixed:3")])
    prompt_ids = pyr.encode("the cat", raw=True)
    n = 3000
    pairs = Counter(
        tuple(
            pyr.generate(
                "the cat", max_tokens=2, raw=True, sampling=SamplingConfig(temperature=2.0, seed=s)
            ).token_ids
        )
        for s in range(n)
    )
    assert_follows_target(pairs, tiers["target"], prompt_ids, sampling, (0.05, 0.12), least=300)


def assert_follows_target(
    pairs: Counter[tuple[int, ...]],
    target: Tier,
    prompt_ids: list[int],
    sampling: SamplingConfig,
    most_tv: tuple[float, float],
    least: int,
) -> None:
    """`pairs` (counts of generated (first, second) tokens) follow the target's own warped distribution:
    the first token's total variation from it below most_tv[0]; the second's, given the most common
    first token (seen at least `least` times), below most_tv[1]."""
    n = sum(pairs.values())
    p1 = warp(target.score(prompt_ids, 1)[0].copy(), sampling)
    firsts = Counter({t: 0 for t in range(len(p1))})
    for (a, _), c in pairs.items():
        firsts[a] += c
    emp1 = np.array([firsts[t] for t in range(len(p1))]) / n
    assert 0.5 * np.abs(emp1 - p1).sum() < most_tv[0]
    top_first = max(firsts, key=firsts.__getitem__)
    p2 = warp(target.score([*prompt_ids, top_first], 1)[0].copy(), sampling)
    seconds = Counter({b: c for (a, b), c in pairs.items() if a == top_first})
    m = sum(seconds.values())
    emp2 = np.array([seconds[t] for t in range(len(p2))]) / m
    assert m > least
    assert 0.5 * np.abs(emp2 - p2).sum() < most_tv[1]


def test_generation_reaching_the_context_edge_ends_cleanly(tiny_target: Path, tiny_noisy: Path) -> None:
    exact = {"cache_type": "f32", "flash_attn": False}
    with Pyramid.open(tiny_target, draft=tiny_noisy, ctx=48, lookahead="fixed:8", **exact) as pyr:
        n_prompt = len(pyr.encode(PROMPT, raw=True))
        out = pyr.generate(PROMPT, max_tokens=1000, raw=True)
        assert out.finish_reason == "context"
        assert len(out.token_ids) == 48 - n_prompt
        assert all(t.n_past <= 48 for t in pyr.models)
        with pytest.raises(ContextOverflowError, match="context holds 48"):
            pyr.generate(PROMPT * 10, raw=True)


def test_max_tokens_and_stop_strings(tiers: dict[str, Tier], reference: list[int]) -> None:
    pyr = _pyramid(tiers, "noisy", None, [StageConfig(lookahead="fixed:5")])
    out = pyr.generate(PROMPT, max_tokens=7, raw=True)
    assert out.token_ids == reference[:7]
    assert out.finish_reason == "length"
    full = pyr.generate(PROMPT, max_tokens=40, raw=True).text
    stop = full[10:16]
    stopped = pyr.generate(PROMPT, max_tokens=40, raw=True, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]


def test_stream_yields_the_same_text(tiers: dict[str, Tier]) -> None:
    pyr = _pyramid(tiers, "noisy", None, [StageConfig(lookahead="fixed:4")])
    pieces = list(pyr.stream(PROMPT, max_tokens=30, raw=True))
    assert len(pieces) > 1
    assert "".join(pieces) == pyr.generate(PROMPT, max_tokens=30, raw=True).text


def test_chat_prompt_uses_the_template(tiers: dict[str, Tier]) -> None:
    pyr = _pyramid(tiers, None, None, [StageConfig()])
    chat = pyr.encode("hello world")
    raw = pyr.encode("hello world", raw=True)
    assert len(chat) > len(raw)
    assert chat.count(tiers["target"].bos) == 1


def test_one_generation_at_a_time(tiers: dict[str, Tier]) -> None:
    pyr = _pyramid(tiers, None, None, [StageConfig()])
    first = pyr.stream(PROMPT, max_tokens=5, raw=True)
    next(first)
    with pytest.raises(EdgeSpecError, match="already generating"):
        pyr.generate(PROMPT, max_tokens=5, raw=True)
    first.close()
    assert len(pyr.generate(PROMPT, max_tokens=5, raw=True).token_ids) == 5


def test_invalid_settings(tiers: dict[str, Tier]) -> None:
    with pytest.raises(ConfigError):
        StageConfig(accept="maybe")
    with pytest.raises(ConfigError):
        StageConfig(tau=-0.1)
    with pytest.raises(ConfigError):
        StageConfig(divergence="hellinger")
    with pytest.raises(ConfigError):
        StageConfig(lookahead="fixed:-1")
    with pytest.raises(ConfigError):
        StageConfig(lookahead="sometimes")
    with pytest.raises(ConfigError, match="qualifier needs a draft"):
        Pyramid(tiers["target"], tiers["same"], None)
    with pytest.raises(ConfigError, match="stage settings"):
        Pyramid(tiers["target"], None, tiers["same"], [StageConfig(), StageConfig()])
    with pytest.raises(ConfigError, match="max_tokens"):
        _pyramid(tiers, None, None, [StageConfig()]).generate(PROMPT, max_tokens=0)


POLICIES = ["fixed:3", "pmin:0.8", "entropy:0.3", "cumulative:0.3", "goodput", "goodput:6"]


@ON_EVERY_DEVICE
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("draft", "qualifier"), [("noisy", None), ("unrelated", None), ("ngram", "noisy")])
def test_lossless_greedy_output_is_identical_whatever_the_policy(
    tiers: dict[str, Tier], reference: list[int], policy: str, draft: str, qualifier: str | None
) -> None:
    stages = [StageConfig(lookahead=policy)] * (1 + (qualifier is not None))
    out = _pyramid(tiers, draft, qualifier, stages).generate(PROMPT, max_tokens=N_TOKENS, raw=True)
    assert out.token_ids == reference
    for stage in out.stats.stages:
        name = policy.split(":")[0]
        blind = draft == "ngram" or qualifier is not None  # an n-gram below, or a qualifier's blocks
        if blind and name in ("pmin", "entropy", "cumulative"):
            # no per-token confidence from an n-gram or a qualifier: a fixed block stands in
            assert (stage.lookahead["policy"], stage.lookahead["fallback_for"]) == ("fixed", name)
            assert max(stage.block_lengths) <= BLIND_K
        else:
            assert stage.lookahead["policy"] == name
        assert max(stage.block_lengths) <= 16


@pytest.mark.parametrize("policy", POLICIES)
def test_no_policy_can_exceed_the_context(tiny_target: Path, tiny_same: Path, policy: str) -> None:
    exact = {"cache_type": "f32", "flash_attn": False}
    with Pyramid.open(
        tiny_target, draft="ngram", qualifier=tiny_same, ctx=40, lookahead=policy, **exact
    ) as pyr:
        for max_tokens in (1, 2, 5, 1000):
            out = pyr.generate(PROMPT, max_tokens=max_tokens, raw=True)
            assert len(out.token_ids) == min(max_tokens, 40 - len(pyr.encode(PROMPT, raw=True)))
            assert all(t.n_past <= 40 for t in pyr.models)


def test_goodput_costs_carry_over_to_the_next_generation_of_a_pyramid(tiers: dict[str, Tier]) -> None:
    """The second generation starts from the costs the first measured (no warm-up), not from scratch."""
    pyr = _pyramid(tiers, "noisy", None, [StageConfig(lookahead="goodput")])
    first = pyr.generate(PROMPT, max_tokens=24, raw=True).stats.stages[0].lookahead
    second = pyr.generate(PROMPT, max_tokens=24, raw=True).stats.stages[0].lookahead
    assert first["verify_cost"]["rounds"] == first["rounds"]  # a fresh pyramid measures from its first round
    assert second["verify_cost"]["rounds"] == first["rounds"] + second["rounds"]
    fresh = _pyramid(tiers, "noisy", None, [StageConfig(lookahead="goodput")])
    anew = fresh.generate(PROMPT, max_tokens=24, raw=True).stats.stages[0].lookahead
    assert anew["verify_cost"]["rounds"] == anew["rounds"]  # another pyramid: its own measurements


def test_a_drafter_that_sat_out_rounds_catches_up_in_one_batch(tiers: dict[str, Tier]) -> None:
    """After lookahead-0 rounds the drafter lacks many tokens: catch_up decodes them before the timed
    round, and leaves the usual lag of a speculating round alone (no extra decode per round)."""
    tier, seq = tiers["noisy"], list(range(1, 41))
    tier.reset()
    tier.score(seq[:10], 1)
    drafter = ModelDrafter(tier, SamplingConfig())
    serve(drafter.catch_up(seq[: 10 + ROUND_LAG]))
    assert tier.n_past == 10 and tier.missing(seq[: 10 + ROUND_LAG]) == ROUND_LAG
    serve(drafter.catch_up(seq))
    assert tier.n_past == len(seq) - 1 and tier.missing(seq) == 1  # the last token: the first draft's decode


def test_tiers_below_the_target_are_prefilled_only_when_first_asked_to_draft(
    tiny_target: Path, tiny_same: Path, tiny_noisy: Path
) -> None:
    with (
        Tier(tiny_target, EXACT) as target,
        Tier(tiny_same, EXACT) as qualifier,
        Tier(tiny_noisy, EXACT) as draft,
    ):
        never = [StageConfig(lookahead="fixed:3"), StageConfig(lookahead="fixed:0")]  # the target never asks
        Pyramid(target, qualifier, draft, never).generate(PROMPT, max_tokens=8, raw=True)
        assert target.n_past > 0 and qualifier.n_past == draft.n_past == 0  # as cheap as the target alone
        asks = [StageConfig(lookahead="fixed:3"), StageConfig(lookahead="fixed:4")]
        out = Pyramid(target, qualifier, draft, asks).generate(PROMPT, max_tokens=8, raw=True)
        assert qualifier.n_past > 0 and draft.n_past > 0 and out.stats.stages[0].proposed > 0


@pytest.mark.parametrize("candidates", [["noisy", "ngram"], ["unrelated", "same", "ngram"]])
def test_candidate_drafts_keep_the_target_greedy_output(
    tiers: dict[str, Tier], reference: list[int], candidates: list[str]
) -> None:
    """Goodput choosing a draft per round among candidates: every candidate warms up, and the output is
    the target's own (which candidate wins depends on this machine's timings: test_lookahead's choice
    tests plant them)."""
    draft = [c if c == "ngram" else tiers[c] for c in candidates]
    out = Pyramid(tiers["target"], None, draft, [StageConfig()]).generate(
        PROMPT, max_tokens=N_TOKENS, raw=True
    )
    assert out.token_ids == reference
    (stage,) = out.stats.stages
    names = [c if c == "ngram" else f"{c}.gguf" for c in candidates]
    assert stage.proposer == "|".join(names)
    chosen = {c["proposer"]: c["chosen"] for c in stage.lookahead["candidates"]}
    assert list(chosen) == names and all(n > 0 for n in chosen.values())
    assert sum(chosen.values()) == stage.rounds
