"""Unit tests for edge_spec.lookahead (no model): scripted histories and planted cost curves, seeded."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import numpy as np
import pytest

from edge_spec import lookahead
from edge_spec.errors import ConfigError
from edge_spec.lookahead import (
    BLIND_K,
    DEFAULT_LOOKAHEAD,
    Backoff,
    ChoiceFactory,
    Choose,
    Confidence,
    CostCurve,
    Cumulative,
    Entropy,
    Fixed,
    Goodput,
    Lookahead,
    RoundReport,
    fit_to_proposer,
    parse_lookahead,
)
from edge_spec.stats import StageStats

POLICIES: list[Callable[[], Lookahead]] = [Fixed, Confidence, Entropy, Cumulative, Goodput]


# Verify time by batch length 1..17 in one-token decodes, measured on this project's 2-core CPU (Qwen2.5-Coder
# 1.5B Q4_K_M; llama.cpp's repacked kernels make a batch of 4 cheaper than one of 3). Index = block k.
MEASURED_VERIFY = [1.0, 1.5, 2.0, 1.7, 2.2, 2.7, 3.2, 3.3, 3.6, 3.95, 3.95, 3.95, 3.95, 3.9, 3.9, 3.9, 3.9]


def geometric_accepts(rng: np.random.Generator, alpha: float, k: int) -> int:
    """Accepted prefix length of k tokens, each accepted with probability alpha until the first rejection."""
    n = 0
    while n < k and rng.random() < alpha:
        n += 1
    return n


def simulate(
    policy: Goodput,
    rounds: int,
    alpha: float,
    propose: tuple[float, float],  # (c0, c1): propose seconds = c0 + c1 * proposed
    verify: tuple[float, float],  # (v0, v1): verify seconds = v0 + v1 * (proposed + 1)
    seed: int = 0,
    noise: float = 0.01,  # relative standard deviation of the planted times
    limit: int = 64,
    stage: StageStats | None = None,  # also counts the rounds, as the loop does
) -> list[int]:
    """Run `rounds` rounds of a proposer that returns what was asked; the block lengths chosen."""
    rng = np.random.default_rng(seed)
    ks = []
    for _ in range(rounds):
        k = policy.next_block(limit)
        ks.append(k)
        t_p = (propose[0] + propose[1] * k) * (1 + noise * rng.standard_normal()) if k else 0.0
        t_v = (verify[0] + verify[1] * (k + 1)) * (1 + noise * rng.standard_normal())
        accepted = geometric_accepts(rng, alpha, k)
        policy.observe(RoundReport(k, k, accepted, t_p, t_v))
        if stage is not None:
            stage.record(k, accepted, k)
    return ks


def on_measured_curve(
    policy: Goodput,
    rounds: int,
    alpha: float,
    noise: float,
    seed: int,
    scale: float = 1.0,  # every time multiplied by this (a slower machine, a longer context)
) -> list[int]:
    """Run `rounds` rounds against MEASURED_VERIFY (one token: 95 ms) and a 50 ms draft token, each time
    off by `noise` (relative standard deviation); the block lengths chosen."""
    rng = np.random.default_rng(seed)
    ks = []
    for _ in range(rounds):
        k = policy.next_block(64)
        ks.append(k)
        noisy = scale * (1 + noise * rng.standard_normal(2))
        verify = 0.095 * MEASURED_VERIFY[k] * noisy[0]
        policy.observe(RoundReport(k, k, geometric_accepts(rng, alpha, k), 0.05 * k * noisy[1], verify))
    return ks


# --- shared behaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", POLICIES)
def test_protocol_and_clamping(make: Callable[[], Lookahead]) -> None:
    policy = make()
    assert isinstance(policy, Lookahead)
    assert isinstance(policy.name, str) and isinstance(policy.needs_confidence, bool)
    for limit, most in [(0, 0), (-3, 0), (1, 1), (2, 2), (100, 16)]:
        assert 0 <= policy.next_block(limit) <= most
    json.dumps(policy.summary())


@pytest.mark.parametrize("make", [*POLICIES, lambda: ChoiceFactory.of("goodput", 2)()])
def test_every_policy_hears_the_lag_and_the_end_of_a_generation(make: Callable[[], Lookahead]) -> None:
    """Only goodput weighs the proposer's lag and learns from a generation's length; every policy takes
    both (the verifier and the loop pass them to whichever policy a stage has)."""
    policy = make()
    for lag in (0, 500):
        assert 0 <= policy.next_block(8, lag=lag) <= 8
        policy.observe(RoundReport(0, 0, 0, 0.0, 0.05))
    policy.finish(12)
    json.dumps(policy.summary())


@pytest.mark.parametrize("make", POLICIES)
def test_limit_zero_after_history(make: Callable[[], Lookahead]) -> None:
    policy = make()
    for _ in range(20):
        k = policy.next_block(8)
        policy.observe(RoundReport(k, k, k // 2, 0.01 * k, 0.05, (0.9,) * k))
    assert policy.next_block(0) == 0
    assert policy.next_block(1) <= 1


@pytest.mark.parametrize(
    ("make", "needs"),
    # goodput reads confidence once fit_to_proposer has seen a drafter that reports it (tested below)
    [(Fixed, False), (Confidence, True), (Entropy, True), (Cumulative, True), (Goodput, False)],
)
def test_needs_confidence(make: Callable[[], Lookahead], needs: bool) -> None:
    assert make().needs_confidence is needs


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"requested": 2, "proposed": 2, "accepted": 3}, "accepted=3"),
        ({"requested": 2, "proposed": -1, "accepted": 0}, "proposed=-1"),
        ({"requested": -1, "proposed": 0, "accepted": 0}, "requested=-1"),
        ({"requested": 2, "proposed": 2, "accepted": 1, "verify_seconds": -1.0}, "verify=-1.0"),
        ({"requested": 2, "proposed": 2, "accepted": 1, "verify_seconds": math.nan}, "verify=nan"),
        ({"requested": 2, "proposed": 2, "accepted": 1, "propose_seconds": -0.5}, "propose=-0.5"),
    ],
)
def test_round_report_rejects_inconsistent_counts(kwargs: dict, bad: str) -> None:
    """Each bad report is refused with a message naming the bad value."""
    args = {"propose_seconds": 0.0, "verify_seconds": 0.01, **kwargs}
    with pytest.raises(ValueError, match=re.escape(bad)):
        RoundReport(**args)


# --- fixed, confidence, entropy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "limit", "expected"), [(4, 10, 4), (4, 3, 3), (4, 0, 0), (0, 10, 0), (7, 7, 7)]
)
def test_fixed(k: int, limit: int, expected: int) -> None:
    policy = Fixed(k)
    assert policy.next_block(limit) == expected
    assert all(policy.keep_drafting(i, 0.01, 10.0) for i in range(1, 20))


def drafted_until_stop(policy: Lookahead, steps: list[tuple[float, float]]) -> int:
    """Tokens a drafter keeps, given (top1, entropy) per token: it stops after the first False."""
    for i, (top1, entropy) in enumerate(steps, start=1):
        if not policy.keep_drafting(i, top1, entropy):
            return i
    return len(steps)


@pytest.mark.parametrize(
    ("top1s", "kept"),
    [
        ([0.9, 0.8, 0.76, 0.74, 0.99], 4),  # stops at the first top1 < 0.75, keeping it
        ([0.74, 0.99], 1),
        ([0.75, 0.75, 0.75], 3),  # exactly p_min keeps drafting
        ([0.99] * 5, 5),
    ],
)
def test_confidence_stops_at_threshold_crossing(top1s: list[float], kept: int) -> None:
    policy = Confidence(p_min=0.75, max_block=16)
    assert policy.next_block(100) == 16
    assert drafted_until_stop(policy, [(p, 0.0) for p in top1s]) == kept


@pytest.mark.parametrize(
    ("entropies", "kept"),
    [
        ([0.1, 0.59, 0.61, 0.0], 3),  # threshold h^2 / gamma = 0.6 nats, the high-entropy token kept
        ([0.7], 1),
        ([0.0, 0.3, 0.599], 3),
        ([2.0, 0.0], 1),
    ],
)
def test_entropy_stops_at_threshold_crossing(entropies: list[float], kept: int) -> None:
    policy = Entropy(h=0.3, gamma=0.15, max_block=16)
    assert policy.next_block(9) == 9
    assert drafted_until_stop(policy, [(0.5, h) for h in entropies]) == kept
    assert policy.summary()["max_entropy_nats"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("h", "gamma", "entropy", "keep"),
    [
        (0.3, 0.15, 0.6 - 1e-9, True),
        (0.3, 0.15, 0.6 + 1e-9, False),
        (0.5, 0.5, 0.49, True),
        (0.5, 0.5, 0.51, False),
    ],
)
def test_entropy_boundary(h: float, gamma: float, entropy: float, keep: bool) -> None:
    assert Entropy(h=h, gamma=gamma).keep_drafting(1, 0.9, entropy) is keep


# --- cumulative -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top1s", "kept"),
    [
        ([0.9] * 8, 4),  # products 0.9, 0.81, 0.729, 0.656: 1 - 0.656 > 0.3 at the 4th
        ([0.6, 0.99], 1),  # 1 - 0.6 > 0.3 at once
        ([0.99] * 40, 36),  # 0.99^35 = 0.703 keeps going, 0.99^36 = 0.696 stops (token kept)
    ],
)
def test_cumulative_uncalibrated_uses_top1(top1s: list[float], kept: int) -> None:
    policy = Cumulative(h=0.3)
    policy.next_block(100)
    assert drafted_until_stop(policy, [(p, 1.0) for p in top1s]) == kept


def test_cumulative_product_resets_each_block() -> None:
    policy = Cumulative(h=0.3)
    for _ in range(3):
        policy.next_block(16)
        assert drafted_until_stop(policy, [(0.9, 0.0)] * 8) == 4


def test_cumulative_calibration_drifts_to_observed_rate() -> None:
    """A drafter whose top1 is always 0.9 but whose tokens are accepted half the time."""
    rng = np.random.default_rng(7)
    policy = Cumulative(h=0.3)
    blocks = []
    for _ in range(60):
        policy.next_block(16)
        n = drafted_until_stop(policy, [(0.9, 0.2)] * 16)
        blocks.append(n)
        policy.observe(RoundReport(16, n, geometric_accepts(rng, 0.5, n), 0.01 * n, 0.05, (0.9,) * n))
    assert blocks[0] == 4
    assert policy.calibration.estimate(0.9) == pytest.approx(0.5, abs=0.1)
    assert blocks[-10:] == [1] * 10  # 1 - 0.5 > 0.3: stop after the first token
    table = policy.summary()["calibration"]
    assert table[9]["observed"] > 20 and table[9]["accepted"] < table[9]["observed"]
    assert table[0]["observed"] == 0 and table[0]["estimate_at_centre"] == pytest.approx(0.05)
    json.dumps(policy.summary())


@pytest.mark.parametrize(
    ("proposed", "accepted", "hits", "trials"),
    [
        (4, 4, 4, 4),  # all accepted: 4 successes
        (4, 2, 2, 3),  # 2 accepted, the 3rd rejected, the 4th unobserved
        (4, 0, 0, 1),  # the first rejected
        (0, 0, 0, 0),  # nothing proposed
    ],
)
def test_cumulative_observe_counts_positions(proposed: int, accepted: int, hits: int, trials: int) -> None:
    policy = Cumulative()
    policy.observe(RoundReport(4, proposed, accepted, 0.01, 0.05, (0.95,) * proposed))
    assert policy.calibration.hits.sum() == hits and policy.calibration.trials.sum() == trials


def test_cumulative_calibration_upwards() -> None:
    """An underconfident drafter (top1 0.55) that is always right earns longer blocks."""
    policy = Cumulative(h=0.3)
    policy.next_block(16)
    assert drafted_until_stop(policy, [(0.55, 1.0)] * 16) == 1
    for _ in range(30):
        policy.observe(RoundReport(4, 4, 4, 0.01, 0.05, (0.55,) * 4))
    assert policy.calibration.estimate(0.55) > 0.95
    policy.next_block(16)
    assert drafted_until_stop(policy, [(0.55, 1.0)] * 16) >= 8


# --- goodput --------------------------------------------------------------------------------------


def test_goodput_cold_start_measures_each_warmup_length_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not drafting and a few block lengths are measured twice before any length is chosen on the costs."""
    monkeypatch.setattr(lookahead, "WARMUP", (3, 0, 2, 4))
    policy = Goodput()
    assert [policy.next_block(16) for _ in range(2)] == [3, 3]  # nothing observed yet: still the first
    ks = []
    for _ in range(8):
        k = policy.next_block(16)
        ks.append(k)
        policy.observe(RoundReport(k, k, k, 0.001 * k if k else 0.0, 0.05 + 0.001 * (k + 1)))
    assert ks == [3, 0, 2, 4, 3, 0, 2, 4]
    assert policy.measurements.costs.verify.measured() == [1, 3, 4, 5]
    assert policy.next_block(16) == 5  # drafting is cheap: the longest block reachable, one past 4
    assert Goodput().next_block(2) == 2  # the limit still clamps the warm-up


def test_goodput_costs_persist_across_generations_of_one_factory() -> None:
    """The cost curve and the acceptance evidence are the machine's and the models': the next generation
    starts from both, without a warm-up, and its own rounds keep fading the evidence it inherited."""
    factory = parse_lookahead("goodput:12")
    first = factory()
    simulate(first, 40, alpha=0.9, propose=(0.0, 0.01), verify=(0.05, 0.002))
    second = factory()
    assert second.measurements is first.measurements and second.measurements.costs.verify.rounds == 40
    assert second.measurements.acceptance.pooled == pytest.approx(first.measurements.acceptance.pooled)
    assert first.measurements.acceptance.pooled > 0.8  # learnt from alpha = 0.9, not the default prior (0.6)
    assert second.measurements.acceptance.trials[0] > 5  # the evidence behind it, not a prior of weight 2
    assert second.next_block(16) == second.best(12)  # no warm-up length: straight to the best k
    simulate(second, 40, alpha=0.3, propose=(0.0, 0.01), verify=(0.05, 0.002), seed=1)
    assert (
        second.measurements.acceptance.pooled < 0.5
    )  # a new kind of prompt outweighs the inherited evidence
    assert (
        parse_lookahead("goodput")().measurements is not first.measurements
    )  # another pyramid measures anew
    with pytest.raises(ConfigError, match="max_block"):
        Goodput(max_block=8, measurements=first.measurements)


def test_goodput_short_generations_keep_drafting_on_inherited_evidence() -> None:
    """Answers of 10-20 tokens (HumanEval here) are 4-6 rounds: one rejection at the first position early
    in one must not stop drafting when the generations before it established a good acceptance (on the
    measured curve the break-even is about 0.9; the truth here is 0.95). With the last generation's
    estimate carried as a prior of weight 2, that one rejection put the estimate near 0.6 and stopped it."""
    for seed in range(5):
        factory = parse_lookahead("goodput")
        on_measured_curve(factory(), 60, alpha=0.95, noise=0.05, seed=seed)
        policy = factory()
        policy.observe(RoundReport(3, 3, 0, 0.15, 0.16))
        assert all(k > 0 for k in on_measured_curve(policy, 5, alpha=0.95, noise=0.05, seed=seed + 10))


def test_goodput_explores_less_while_its_choice_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where one block length is clearly best (the measured curve), the interval between explorations
    doubles up to its longest; where the best length keeps moving, exploration stays frequent."""
    monkeypatch.setattr(lookahead, "EXPLORE", (8, 32))
    policy = Goodput()
    ks = on_measured_curve(policy, 300, alpha=0.95, noise=0.02, seed=0)
    off = [i for i, k in enumerate(ks) if i >= 8 and k != 3]  # after the warm-up
    # 43-44: block 1, never measured, read from the line until measured twice (not an exploration)
    assert off[:6] == [15, 23, 39, 43, 44, 71] and np.diff(off[5:]).tolist() == [32] * (len(off) - 6)
    flat = Goodput()
    simulate(flat, 300, alpha=0.9, propose=(0.0, 0.01), verify=(0.05, 0.002), noise=0.0)
    assert flat.explorations >= 20  # a flat optimum: the best k moves, so exploring restarts often


def test_cost_curve_keeps_each_length_recent_and_remembers_rare_ones() -> None:
    """A length keeps its own last observations: the one-token cost measured at the start is still known
    after a long run of drafting rounds; a burst of slow rounds does not move a length's cost, a lasting
    slowdown does."""
    curve = CostCurve(per_length=4, flat=True)
    assert not curve.identified()
    curve.add(1, 0.1)
    curve.add(1, 0.1)
    assert not curve.identified()  # one length: the slope is unknown
    for _ in range(100):
        curve.add(4, 0.2)
    assert curve.identified() and curve(1) == pytest.approx(0.1)
    for _ in range(2):
        curve.add(4, 0.6)  # stolen CPU: 2 of the last 4 rounds
    assert curve(4) == pytest.approx(0.2)
    for _ in range(4):
        curve.add(4, 0.4)  # the machine slowed down for good
    assert curve(4) == pytest.approx(0.4)
    assert curve.rounds == 108 and curve.measured() == [1, 4]


@pytest.mark.parametrize(("fresh", "cost"), [(0.15, 0.15), (0.6, 0.2)])
def test_cost_curve_drops_stale_observations_when_a_length_is_seen_again(fresh: float, cost: float) -> None:
    """Length 4 measured 8 times, then max_age rounds of length 5 only: its next observation replaces all
    but the newest stale one, and the lower of the two is its cost. A faster machine or a shorter context
    shows at once; one round slowed by a burst of steal does not spoil the old cost."""
    curve = CostCurve(per_length=8, flat=True)
    for _ in range(8):
        curve.add(4, 0.2)
    for _ in range(CostCurve.max_age):
        curve.add(5, 0.25)
    curve.add(4, fresh)
    assert curve(4) == pytest.approx(cost)
    assert len(curve.samples[4]) == 2 and len(curve.samples[5]) == 8


@pytest.mark.parametrize("make", [Confidence, Entropy, Cumulative])
def test_confidence_policies_fall_back_to_fixed_without_confidences(make: Callable[[], Lookahead]) -> None:
    blind = fit_to_proposer(make(), confident=False)
    assert isinstance(blind, Fixed) and blind.next_block(16) == BLIND_K
    assert blind.summary()["fallback_for"] == make().name
    informed = make()
    assert fit_to_proposer(informed, confident=True) is informed


def test_fixed_ignores_confidence() -> None:
    policy = Fixed()
    assert fit_to_proposer(policy, confident=False) is policy
    assert fit_to_proposer(policy, confident=True) is policy and not policy.needs_confidence


@pytest.mark.parametrize("confident", [True, False])
def test_goodput_reads_confidence_where_the_proposer_has_it(confident: bool) -> None:
    policy = Goodput()
    assert fit_to_proposer(policy, confident) is policy
    assert policy.needs_confidence is confident
    assert ("calibration" in policy.summary()) is confident


def confident_drafter(policy: Goodput, rounds: int, seed: int) -> tuple[int, float]:
    """Rounds on MEASURED_VERIFY and a 50 ms draft token, where 85% of drafted tokens come with top-1 0.95
    and are always accepted and the rest with top-1 0.4 and are accepted 30% of the time. The drafter
    asks keep_drafting when the policy reads confidence. (tokens committed, seconds)."""
    rng = np.random.default_rng(seed)
    tokens, seconds = 0, 0.0
    for _ in range(rounds):
        k = policy.next_block(64)
        top1s: list[float] = []
        while len(top1s) < k:
            top1s.append(0.95 if rng.random() < 0.85 else 0.4)
            if policy.needs_confidence and not policy.keep_drafting(len(top1s), top1s[-1], 0.5):
                break
        accepted = 0
        while accepted < len(top1s) and (top1s[accepted] > 0.9 or rng.random() < 0.3):
            accepted += 1
        t_p, t_v = 0.05 * len(top1s), 0.095 * MEASURED_VERIFY[len(top1s)]
        policy.observe(RoundReport(k, len(top1s), accepted, t_p, t_v, tuple(top1s)))
        tokens, seconds = tokens + accepted + 1, seconds + t_p + t_v
    return tokens, seconds


def test_goodput_stops_a_block_after_an_uncertain_token_and_gains_by_it() -> None:
    informed, blind = Goodput(), Goodput()
    fit_to_proposer(informed, confident=True)
    fit_to_proposer(blind, confident=False)
    tokens, seconds = confident_drafter(informed, 400, seed=5)
    blind_tokens, blind_seconds = confident_drafter(blind, 400, seed=5)
    assert tokens / seconds > 1.04 * blind_tokens / blind_seconds
    assert informed.early_stops > 20 and blind.early_stops == 0
    low = informed.measurements.calibration.estimate(0.4)
    assert low == pytest.approx(0.3, abs=0.1) and informed.measurements.calibration.estimate(0.95) > 0.97
    k = informed.next_block(64)
    assert k >= 2
    assert not informed.keep_drafting(1, 0.4, 2.0)  # after an uncertain first token: verify it alone
    informed.next_block(64)
    assert all(informed.keep_drafting(i, 0.95, 0.1) for i in range(1, k))


def test_goodput_warmup_and_probes_run_whole_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measurement rounds are not cut short: the warm-up measures its lengths, a probe its acceptance."""
    monkeypatch.setattr(lookahead, "WARMUP", (3, 4))
    policy = Goodput()
    fit_to_proposer(policy, confident=True)
    for _ in range(4):
        k = policy.next_block(16)
        assert all(policy.keep_drafting(i, 0.01, 5.0) for i in range(1, k + 1))
        policy.observe(RoundReport(k, k, 0, 0.05 * k, 0.1 + 0.01 * k, (0.01,) * k))
    assert policy.early_stops == 0


def test_goodput_calibration_is_shared_across_generations() -> None:
    factory = parse_lookahead("goodput")
    first = fit_to_proposer(factory(), confident=True)
    first.observe(RoundReport(3, 3, 1, 0.15, 0.2, (0.99, 0.35, 0.99)))
    second = factory()
    assert second.measurements.calibration.trials.sum() == 2  # the rejected second token, and the first
    assert second.measurements.calibration.estimate(0.35) < 0.35


def test_goodput_chooses_zero_when_drafting_does_not_pay() -> None:
    """Drafting a token costs as much as verifying a block and acceptance is low."""
    policy = Goodput()
    ks = simulate(policy, 200, alpha=0.3, propose=(0.0, 0.05), verify=(0.05, 0.001))
    tail = ks[50:]
    assert tail.count(0) / len(tail) > 0.9
    assert policy.best(16) == 0
    assert (
        policy.measurements.acceptance.pooled < 0.55
    )  # few proposals to learn from: the prior (0.6) still weighs in


def test_goodput_long_blocks_when_drafting_is_cheap() -> None:
    policy = Goodput()
    ks = simulate(policy, 200, alpha=0.9, propose=(0.0, 0.005), verify=(0.05, 0.002))
    tail = ks[50:]
    assert 0 not in tail
    assert 6 <= float(np.median(tail)) <= 12  # optimum for a = 0.9 is k = 8
    assert policy.measurements.acceptance.pooled == pytest.approx(
        0.9, abs=0.15
    )  # a 10-round memory: sd about 0.03


def test_goodput_respects_max_block_and_limit() -> None:
    policy = Goodput(max_block=5)
    ks = simulate(policy, 60, alpha=0.99, propose=(0.0, 0.001), verify=(0.05, 0.0001), limit=64)
    assert max(ks) <= 5 and ks[-1] >= 4
    assert policy.next_block(2) <= 2 and policy.next_block(0) == 0


def test_goodput_cost_model_converges_to_planted_curve() -> None:
    rng = np.random.default_rng(3)
    policy = Goodput()
    c0, c1, v0, v1 = 0.002, 0.03, 0.08, 0.004
    for _ in range(200):
        k = int(rng.integers(0, 10))
        t_p = (c0 + c1 * k) * (1 + 0.01 * rng.standard_normal()) if k else 0.0
        t_v = (v0 + v1 * (k + 1)) * (1 + 0.01 * rng.standard_normal())
        policy.observe(RoundReport(k, k, k // 2, t_p, t_v))
    s = policy.summary()
    assert s["propose_cost"]["c1"] == pytest.approx(c1, rel=0.03)
    assert s["propose_cost"]["c0"] == pytest.approx(c0, abs=0.003)  # small intercept: absolute tolerance
    assert s["verify_cost"]["v0"] == pytest.approx(v0, rel=0.03)
    assert s["verify_cost"]["v1"] == pytest.approx(v1, rel=0.05)
    per_token = s["verify_seconds_per_token"]
    assert per_token["1"] == pytest.approx(v0 + v1, rel=0.03)
    assert per_token["17"] == pytest.approx((v0 + 17 * v1) / 17, rel=0.03)
    assert list(per_token.values()) == sorted(per_token.values(), reverse=True)  # batching amortises v0


def test_goodput_fit_through_own_exploration() -> None:
    """Only the policy's own choices (warm-up, k +- 1) identify the verify slope."""
    policy = Goodput()
    simulate(policy, 300, alpha=0.8, propose=(0.0, 0.004), verify=(0.04, 0.003), noise=0.005)
    assert policy.explorations > 0
    costs = policy.measurements.costs
    assert costs.verify.coef[1] == pytest.approx(0.003, rel=0.3)
    assert costs.verify.coef[0] == pytest.approx(0.04, rel=0.1)
    assert costs.propose.coef[1] == pytest.approx(0.004, rel=0.1)


def test_goodput_reprobes_after_zeros_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is accepted, but drafting would pay if it were (a draft token at 0.4 of a target token,
    cheap batches): the acceptance may change, so probes go on."""
    monkeypatch.setattr(lookahead, "PROBES", (8, 64))
    policy = Goodput()
    ks = simulate(policy, 400, alpha=0.0, propose=(0.0, 0.02), verify=(0.05, 0.001))
    assert policy.can_pay(16)
    tail = ks[20:]
    probes = [i for i, k in enumerate(tail) if k > 0]
    assert len(probes) >= 4  # keeps re-probing ...
    gaps = np.diff(probes)
    assert gaps[-1] >= gaps[0] and gaps.max() <= 65  # ... less often, within the cap
    assert policy.probes >= 4


def test_goodput_stops_probing_where_costs_alone_rule_drafting_out() -> None:
    """Verification about as dear per token as decoding alone (a 2-core AMD EPYC: 29, 54, 80, 110 and
    122 ms for 1-5 tokens of the 1.5B) and a draft token at 20 ms: even blocks accepted whole lose, so
    after the first generation's warm-up goodput does not draft, and probes after 256 rounds, then 512,
    counted across the generations of one cost model, instead of 4 times in each 128-round generation."""
    factory = parse_lookahead("goodput")
    verify = [0.029, 0.054, 0.080, 0.110, 0.122] + [0.03 * n for n in range(6, 18)]  # [n - 1] seconds
    ks: list[int] = []
    for _ in range(8):
        policy = factory()
        for _ in range(128):
            k = policy.next_block(64)
            ks.append(k)
            policy.observe(RoundReport(k, k, k, 0.02 * k, verify[k]))
    assert not policy.can_pay(16) and policy.summary()["can_pay"] is False
    probes = [i for i, k in enumerate(ks) if i >= 8 and k > 0]
    assert probes == [8 + 255, 8 + 255 + 512]  # 2 probes in 8 generations, not 32


def test_schedules_shared_by_sequences_decoded_together_count_steps() -> None:
    """The same costs, four sequences decoded together (a step: one round of each): the cannot-pay probe
    comes after 256 steps, as it does alone after 256 rounds, not after 256 of all four's rounds (64
    steps), since a probe slows every sequence of its step."""
    factory = parse_lookahead("goodput")
    verify = [0.029, 0.054, 0.080, 0.110, 0.122] + [0.03 * n for n in range(6, 24)]  # [n - 1] seconds
    policies = [factory() for _ in range(4)]
    probes = []
    for step in range(600):
        for policy in policies:
            policy.load = lookahead.Load(others=3, committed=3.0)
            k = policy.next_block(64)
            if step >= 2 and k > 0:
                probes.append(step)
            policy.observe(RoundReport(k, k, k, 0.02 * k, verify[k + 3], shared=3))
    assert not policies[0].can_pay(16)
    assert probes == [2 + 255]  # as alone: [8 + 255] above


@pytest.mark.parametrize(("first", "most"), [(0, 4096), (512, 256), (2.5, 4096)])
def test_backoff_rejects_bad_intervals(first: float, most: int) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"1 <= first <= most, got {first!r} and {most!r}")):
        Backoff(first, most)  # type: ignore[arg-type]


def test_backoff_doubles_its_interval_up_to_the_longest_and_restarts() -> None:
    """Due after 2 rounds, then 4, then 4 (the longest); a restart counts 2 rounds anew."""
    backoff = Backoff(2, 4)
    assert [i for i in range(1, 13) if backoff.due()] == [2, 6, 10]
    backoff.due()
    backoff.restart()
    assert [backoff.due() for _ in range(2)] == [False, True]


def test_goodput_recovers_when_acceptance_improves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Acceptance jumps from 0 to 0.95 (e.g. the output starts quoting the prompt): a probe finds it."""
    monkeypatch.setattr(lookahead, "PROBES", (8, 32))
    policy = Goodput()
    simulate(policy, 100, alpha=0.0, propose=(0.0, 0.004), verify=(0.05, 0.002))
    assert policy.next_block(16) == 0 or policy.best(16) == 0
    ks = simulate(policy, 100, alpha=0.95, propose=(0.0, 0.004), verify=(0.05, 0.002), seed=1)
    assert all(k > 0 for k in ks[-30:])


def test_goodput_free_proposer_full_acceptance() -> None:
    """An n-gram proposer: no propose cost, acceptance 1: the longest block wins (a = 1 handled)."""
    policy = Goodput(max_block=8)
    ks = simulate(policy, 60, alpha=1.0, propose=(0.0, 0.0), verify=(0.05, 0.0005))
    assert ks[-1] >= 7
    assert math.isfinite(policy.summary()["acceptance_estimate"])


def test_goodput_summary_json() -> None:
    """The policy's summary as a stage reports it, with the stage's counts of its rounds."""
    policy, stage = Goodput(), StageStats("target", "draft")
    assert json.loads(json.dumps(policy.summary()))["best_k"] is None  # no data yet
    simulate(policy, 50, alpha=0.7, propose=(0.001, 0.01), verify=(0.05, 0.003), stage=stage)
    stage.policy = policy.summary()
    s = json.loads(json.dumps(stage.summary()["lookahead"]))
    assert s["policy"] == "goodput" and s["rounds"] == 50
    assert set(s) >= {"acceptance_estimate", "propose_cost", "verify_cost", "verify_seconds_per_token"}
    assert sum(s["k_histogram"].values()) == 50
    assert len(s["verify_seconds_per_token"]) == 17


# --- parse_lookahead ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls", "attrs"),
    [
        ("fixed:4", Fixed, {"k": 4}),
        ("fixed:0", Fixed, {"k": 0}),
        (" Fixed:7 ", Fixed, {"k": 7}),
        ("fixed", Fixed, {"k": 4}),
        ("pmin:0.6", Confidence, {"p_min": 0.6, "max_block": 16}),
        ("pmin:0.8:8", Confidence, {"p_min": 0.8, "max_block": 8}),
        ("pmin", Confidence, {"p_min": 0.75}),
        ("entropy:0.4", Entropy, {"h": 0.4, "gamma": 0.15}),
        ("entropy:0.4:12", Entropy, {"h": 0.4, "max_block": 12}),
        ("cumulative:0.2", Cumulative, {"h": 0.2}),
        ("cumulative:0.3:24", Cumulative, {"h": 0.3, "max_block": 24}),
        ("goodput", Goodput, {"max_block": 16}),
        ("goodput:10", Goodput, {"max_block": 10}),
        (DEFAULT_LOOKAHEAD, Goodput, {"max_block": 16}),
    ],
)
def test_parse_lookahead_valid(spec: str, cls: type, attrs: dict) -> None:
    factory = parse_lookahead(spec)
    first, second = factory(), factory()
    assert type(first) is cls and first is not second  # a fresh policy per generation
    for key, value in attrs.items():
        assert getattr(first, key) == value


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown lookahead"),
        ("magic:3", "unknown lookahead"),
        ("fixed:x", "not an integer"),
        ("fixed:2.5", "not an integer"),
        ("fixed:-1", "k >= 0"),
        ("fixed:4:5", "too many"),
        ("pmin:1.5", "p_min must be in [0, 1]"),
        ("pmin:abc", "not a number"),
        ("pmin:0.5:0", "max block"),
        ("entropy:-0.1", "h must be >= 0"),
        ("entropy:nan", "finite"),
        ("cumulative:2", "[0, 1]"),
        ("cumulative:0.3:1:2", "too many"),
        ("goodput:0", "max block"),
        ("goodput:1:2", "too many"),
    ],
)
def test_parse_lookahead_invalid(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_lookahead(spec)
    text = str(info.value)
    assert message in text and "\n" not in text and repr(spec) in text


def test_cost_curve_prefers_measured_costs_over_the_line() -> None:
    fit = CostCurve(per_length=8, flat=True)
    for n, seconds in [(1, 1.0), (1, 1.0), (5, 1.8), (5, 1.8), (4, 1.1), (4, 1.1), (8, 2.2)]:
        fit.add(n, seconds)
    assert fit(4) == pytest.approx(1.1)  # a tile-friendly batch, cheaper than the line predicts
    assert fit(4) < fit.coef[0] + 4 * fit.coef[1]
    assert fit(8) == pytest.approx(fit.coef[0] + 8 * fit.coef[1])  # seen once: the line
    assert fit(3) == pytest.approx(fit.coef[0] + 3 * fit.coef[1])


def test_cost_line_shrugs_off_rounds_slowed_by_the_machine() -> None:
    """Rounds slowed 5x (CPU steal) at the ends of the range would tilt a least-squares line; the line
    through each length's measured cost stays on the planted curve."""
    fit = CostCurve(per_length=8, flat=True)
    for x in range(1, 9):
        for _ in range(5):
            fit.add(x, 0.05 + 0.02 * x)
    for x in (1, 8, 8):
        fit.add(x, 5 * (0.05 + 0.02 * x))
    assert fit.coef == pytest.approx((0.05, 0.02), rel=0.05)


def test_goodput_finds_the_tile_friendly_block_on_a_measured_curve() -> None:
    """The measured verify curve (a batch of 4 is cheaper than one of 3), a draft token at half a target
    token and 95% acceptance: block 3 (a batch of 4) is the only one that beats the target alone, and the
    policy finds it from the costs it measures; a line through them would see no such dip."""
    policy = Goodput()
    tail = on_measured_curve(policy, 300, alpha=0.95, noise=0.02, seed=11)[50:]
    assert tail.count(3) / len(tail) > 0.7
    assert policy.measurements.costs.verify(4) < policy.measurements.costs.verify(3)


def test_goodput_compares_block_lengths_with_fresh_costs() -> None:
    """The measured curve, first at 1.5x its times (a longer context, a slower machine) with block 3
    chosen; then the machine is faster and 8 rounds of block 4 are measured at the new speed, as when
    exploration or a change of prompt made goodput draft 4. Compared with its 8 stale observations, block
    3 lost to block 4 in 72% of the next 200 rounds, explorations included (run C on rewrites, 2026-11-22).
    With stale observations dropped, the first exploration that measures block 3 afresh (a batch of 4,
    the cheap tile) brings it back for good."""
    for seed in range(3):
        policy = Goodput()
        on_measured_curve(policy, 100, 0.95, 0.02, seed, scale=1.5)
        for _ in range(8):
            policy.observe(RoundReport(4, 4, 4, 0.2, 0.095 * MEASURED_VERIFY[4]))
        ks = on_measured_curve(policy, 200, 0.95, 0.02, seed + 10)
        back = ks[ks.index(3) :]  # from the first exploration of block 3
        assert len(back) > 100 and back.count(3) / len(back) > 0.9
        assert policy.measurements.costs.verify(4) == pytest.approx(0.095 * MEASURED_VERIFY[3], rel=0.05)


def test_goodput_cold_start_settles_on_the_measured_best_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first generation, 10% timing noise, a prior acceptance carried high (0.97) where the truth is 0.9,
    the measured verify curve: after the warm-up, block 3 is the choice in most rounds (five seeds pooled).
    A line fitted to a handful of noisy rounds used to wander to blocks of 1 or 5-6 for a whole generation."""
    monkeypatch.setattr(lookahead, "PRIOR_ACCEPTANCE", 0.97)
    chosen = []
    for seed in range(5):
        chosen += on_measured_curve(Goodput(), 24, alpha=0.9, noise=0.1, seed=seed)[8:]
    assert chosen.count(3) / len(chosen) > 0.5


def test_goodput_grows_its_block_one_past_the_longest_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    """Free drafting at full acceptance favours the longest block, but the cost curves are only trusted
    one token past what was measured twice: the block grows by one every second round."""
    monkeypatch.setattr(lookahead, "WARMUP", (1, 2))
    policy = Goodput(max_block=16)
    ks = []
    for _ in range(60):
        k = policy.next_block(64)
        twice = [
            n - 1 for n in policy.measurements.costs.verify.measured()
        ]  # blocks whose verification was measured
        assert k <= max(twice, default=2) + 1
        policy.observe(RoundReport(k, k, k, 0.001 * k if k else 0.0, 0.05 + 0.001 * (k + 1)))
        ks.append(k)
    assert ks[:7] == [1, 2, 1, 2, 3, 3, 4] and max(ks) == 16  # warm-up twice, then 3 twice, then 4


def test_goodput_learns_acceptance_by_position_for_all_or_nothing_proposals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An n-gram's proposal is right as a whole or wrong from its first token (here 40% right): the first
    position's estimate falls to 0.4, the later ones rise toward 1, and a block of 4 is expected to commit
    what it does (1 + 4 * 0.4 tokens), not what the pooled geometric rate would say."""
    monkeypatch.setattr(lookahead, "MEMORY", 1.0)
    rng = np.random.default_rng(5)
    policy = Goodput()
    for _ in range(300):
        accepted = 4 if rng.random() < 0.4 else 0
        policy.observe(RoundReport(4, 4, accepted, 0.0, 0.1))
    acceptance = policy.measurements.acceptance
    by_position = acceptance.by_position()
    assert by_position[0] == pytest.approx(0.4, abs=0.06)
    assert (by_position[1:4] > 0.97).all()
    a = acceptance.pooled
    assert acceptance.expected_tokens(4) == pytest.approx(1 + 4 * 0.4, abs=0.15)
    assert (1 - a**5) / (1 - a) > 1 + 4 * 0.4 + 0.3  # the geometric model overrates it


def _all_or_nothing(monkeypatch: pytest.MonkeyPatch, optimism: float, rounds: int) -> Goodput:
    """Blocks of 4 that are right 3 times in 4 (wholly) and wrong from their first token otherwise, with
    costs that put the break-even just above that: drafting 85 ms a token, verifying about 100 ms. The
    settings stay patched for the rest of the test."""
    monkeypatch.setattr(lookahead, "OPTIMISM", optimism)
    monkeypatch.setattr(lookahead, "MEMORY", 1.0)
    policy = Goodput()
    for i in range(rounds):
        policy.observe(RoundReport(4, 4, 0 if i % 4 == 0 else 4, 0.085 * 4, 0.105))
    for n in (1, 2, 3):
        for _ in range(2):
            policy.observe(RoundReport(0, 0, 0, 0.0, 0.1 + 0.001 * n))
    return policy


@pytest.mark.parametrize("rounds", [4, 8])
def test_goodput_keeps_drafting_on_thin_evidence_against_it(
    monkeypatch: pytest.MonkeyPatch, rounds: int
) -> None:
    assert (
        _all_or_nothing(monkeypatch, optimism=0.0, rounds=rounds).best(4) == 0
    )  # the estimates say stop ...
    assert (
        _all_or_nothing(monkeypatch, optimism=1.0, rounds=rounds).best(4) == 1
    )  # ... but not by a std error


def test_goodput_stops_drafting_once_the_evidence_is_in(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _all_or_nothing(monkeypatch, optimism=1.0, rounds=200).best(4) == 0


@pytest.mark.parametrize(
    ("alpha", "k", "expected"),
    [(0.0, 4, 1.0), (1.0, 4, 5.0), (0.5, 3, 1.875), (0.8, 0, 1.0), (0.9, 5, sum(0.9**j for j in range(6)))],
)
def test_goodput_expected_tokens_before_any_round_is_geometric(
    monkeypatch: pytest.MonkeyPatch, alpha: float, k: int, expected: float
) -> None:
    """With no evidence every position's estimate is the prior: (1 - a^(k+1)) / (1 - a) tokens a round."""
    monkeypatch.setattr(lookahead, "PRIOR_ACCEPTANCE", alpha)
    assert Goodput().measurements.acceptance.expected_tokens(k) == pytest.approx(expected)


# --- choice among candidate drafts -------------------------------------------------------------------


class _Candidate:
    def __init__(self, name: str) -> None:
        self.name, self.confident = name, False


class _Candidates:
    """What Choose steers: proposers.Candidates without models."""

    def __init__(self, n: int) -> None:
        self.proposers = [_Candidate(f"c{i}") for i in range(n)]
        self.current = 0


def run_choice(
    policy: Choose, alphas: list[float], rounds: int, seed: int = 0, cost: float = 0.01
) -> list[int]:
    """Rounds where candidate i's tokens are accepted with alphas[i] (each token `cost` seconds to draft,
    verification 50 ms + 2 ms a token); the candidate of each round."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(rounds):
        k = policy.next_block(64)
        i = policy.current
        chosen.append(i)
        t_v = (0.05 + 0.002 * (k + 1)) * (1 + 0.01 * rng.standard_normal())
        policy.observe(RoundReport(k, k, geometric_accepts(rng, alphas[i], k), cost * k, t_v))
    return chosen


def chooser(n: int) -> tuple[Choose, _Candidates]:
    policy, candidates = ChoiceFactory.of("goodput", n)(), _Candidates(n)
    policy.attach(candidates)
    return policy, candidates


def test_choice_needs_goodput_and_several_candidates() -> None:
    with pytest.raises(ConfigError, match="goodput"):
        ChoiceFactory.of("fixed:3", 2)
    with pytest.raises(ConfigError, match="goodput"):
        Choose([Goodput()])
    policy = ChoiceFactory.of("goodput", 2)()
    with pytest.raises(ConfigError, match="2 policies for 3"):
        policy.attach(_Candidates(3))


def test_choice_warms_each_candidate_up_then_prefers_the_better_one() -> None:
    policy, candidates = chooser(2)
    chosen = run_choice(policy, [0.3, 0.9], 400)
    warmup = 2 * len(lookahead.WARMUP)
    assert chosen[:warmup] == [0] * warmup and chosen[warmup : 2 * warmup] == [1] * warmup
    later = chosen[2 * warmup :]
    assert later.count(1) > 0.9 * len(later)
    assert 0 < later.count(0) <= 8 and policy.switches == later.count(0)  # tried now and then, less often
    assert candidates.current == policy.current
    summary = policy.summary()
    assert [c["proposer"] for c in summary["candidates"]] == ["c0", "c1"]
    assert [c["chosen"] for c in summary["candidates"]] == [chosen.count(0), chosen.count(1)]
    assert (
        summary["candidates"][1]["acceptance_estimate"]
        > 0.8
        > 0.5
        > summary["candidates"][0]["acceptance_estimate"]
    )


def test_choice_weighs_cost_against_acceptance() -> None:
    """A candidate accepted a little less often but five times cheaper to run proposes (DEL's trade-off of
    an earlier exit: cheaper, a little less accurate)."""
    factory = ChoiceFactory.of("goodput", 2)
    policy = factory()
    policy.attach(_Candidates(2))
    rng = np.random.default_rng(0)
    chosen = []
    for _ in range(300):
        k = policy.next_block(64)
        i = policy.current
        chosen.append(i)
        cost = (0.04, 0.008)[i] * k
        policy.observe(
            RoundReport(k, k, geometric_accepts(rng, (0.9, 0.8)[i], k), cost, 0.05 + 0.002 * (k + 1))
        )
    assert chosen[100:].count(1) > 0.9 * 200


def test_choice_follows_a_change_of_context() -> None:
    """The better candidate changes halfway (prose, then code that repeats the prompt): the choice follows
    within a few dozen rounds, through its tries of the other candidate."""
    policy, _ = chooser(2)
    first = run_choice(policy, [0.9, 0.3], 300)
    second = run_choice(policy, [0.2, 0.95], 300, seed=1)
    assert first[100:].count(0) > 0.9 * 200
    assert second[100:].count(1) > 0.9 * 200


def test_choice_where_nothing_pays_takes_turns_and_probes_rarely() -> None:
    """Drafting cannot pay (a draft token costs more than a verification saves): the candidates take the
    rounds in turn, each on its own probe schedule, so all of them together probe about once in 256
    rounds, as one goodput would."""
    policy, _ = chooser(3)
    rng = np.random.default_rng(0)
    ks, chosen = [], []
    for _ in range(3000):
        k = policy.next_block(64)
        ks.append(k)
        chosen.append(policy.current)
        policy.observe(RoundReport(k, k, geometric_accepts(rng, 0.9, k), 0.2 * k, 0.05 * (k + 1)))
    tail = ks[100:]
    assert sum(k > 0 for k in tail) <= 2 + len(tail) // 256
    counts = [chosen[100:].count(i) for i in range(3)]
    assert max(counts) - min(counts) <= 1 + sum(k > 0 for k in tail)
    assert policy.summary()["can_pay"] is False


def test_goodput_under_load_stops_drafting_where_the_batch_fills_the_decode() -> None:
    """Planted costs of a CPU where a decode of 4 tokens costs 2.5x one and 8 tokens 6x: a free draft with
    90% acceptance pays alone (rate(4) 13.7 > rate(0) 12.5 tokens/s) but not beside 3 other sequences,
    whose one token each already fills the cheap part of the decode (rate(0) 20 > rate(4) 14.2)."""
    policy = lookahead.Goodput(max_block=4)
    costs, acceptance = policy.measurements.costs, policy.measurements.acceptance
    for _ in range(2):
        for n, seconds in [
            (1, 0.08),
            (2, 0.12),
            (3, 0.16),
            (4, 0.2),
            (5, 0.3),
            (6, 0.36),
            (7, 0.43),
            (8, 0.5),
        ]:
            costs.verify.add(n, seconds)
    for _ in range(200):
        acceptance.add(4, 3)
        acceptance.add(4, 4)
    assert not policy.warming_up
    assert policy.next_block(16) > 0
    policy.load = lookahead.Load(others=3, committed=3.0)
    assert policy.rate(0) == pytest.approx(4 / 0.2)
    assert policy.next_block(16) == 0
    policy.load = lookahead.Load(others=1, committed=1.0)  # beside one: 3.7 / verify(4) beats 2 / verify(2)
    assert policy.next_block(16) > 0
