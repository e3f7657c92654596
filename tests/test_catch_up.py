"""Goodput weighs a draft's catch-up against the tokens still to come, and a realized-rate veto backs its
cost model (issue 20, item 3, "never lose"): planted costs and acceptance without models, the state that
carries both to the next process, and the verifier's measurement of the catch-up on the tiny models."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_spec import lookahead
from edge_spec.backend import Tier, TierConfig
from edge_spec.calibration import CalibrationFile
from edge_spec.lookahead import (
    ROUND_LAG,
    Backoff,
    ChoiceFactory,
    CostCurve,
    Fixed,
    Goodput,
    Lookahead,
    Measurements,
    Progress,
    RoundReport,
    parse_lookahead,
)
from edge_spec.proposers import Candidates, ModelDrafter, NgramProposer
from edge_spec.pyramid import StageConfig, Verifier, assemble, commit_rounds
from edge_spec.sampling import SamplingConfig

PROMPT_LAG = 150  # tokens a draft lacks at a generation's start: the prompt it has not read


@dataclass(frozen=True)
class Machine:
    """Planted costs, in seconds: a decode of n tokens by the target v0 + v1 * n (0.1 for one token), a
    drafted token `draft`, a catch-up of L tokens lacked c0 + c1 * L (1.52 s for a prompt); drafted tokens
    accepted with probability `alpha` each until the first rejection. Every other drafting round takes
    `slow` times as long (a cost the cost model's low quantile leaves out, as when drafting's decodes are
    slowed by something the model does not see)."""

    alpha: float = 0.9
    draft: float = 0.03
    v0: float = 0.09
    v1: float = 0.01
    c0: float = 0.02
    c1: float = 0.01
    slow: float = 1.0

    def catch_up(self, lag: int) -> float:
        return self.c0 + self.c1 * lag


@dataclass
class Run:
    """A generation's outcome: its seconds, its blocks, and whether the veto held after each round."""

    seconds: float
    blocks: list[int]
    vetoed: list[bool]

    @property
    def drafting(self) -> float:
        """Share of rounds that drafted."""
        return sum(k > 0 for k in self.blocks) / len(self.blocks)


def generate(
    policy: Goodput,
    machine: Machine,
    tokens: int,
    rng: np.random.Generator,
    max_tokens: int | None = None,
    lag: int | None = PROMPT_LAG,
    bad: range = range(0),
) -> Run:
    """One generation of `tokens` tokens (ending then, as at an end-of-generation token, before
    `max_tokens`), run as Verifier.round runs it: the draft starts `lag` tokens behind, a round of k = 0
    leaves it one more behind, a drafting round first catches it up when it lacks more than ROUND_LAG and
    leaves it ROUND_LAG behind. lag=None: a proposer without state (an n-gram), never behind. While the
    tokens produced are in `bad`, no drafted token is accepted. The policy hears the generation's end."""
    max_tokens = max_tokens or tokens
    produced, seconds, blocks, vetoed, slow = 0, 0.0, [], [], False
    while produced < tokens:
        policy.progress = Progress(produced)
        k = policy.next_block(max_tokens - produced - 1, lag=lag or 0)
        caught = lag if lag is not None and k > 0 and lag > ROUND_LAG else 0
        catch_up = machine.catch_up(caught) if caught else 0.0
        accepted = 0
        while accepted < k and produced not in bad and rng.random() < machine.alpha:
            accepted += 1
        scale = machine.slow if k > 0 and slow else 1.0
        slow = slow != (k > 0)  # alternate drafting rounds
        t_p, t_v = scale * machine.draft * k, scale * (machine.v0 + machine.v1 * (k + 1))
        policy.observe(
            RoundReport(k, k, accepted, t_p, t_v, catch_up_tokens=caught, catch_up_seconds=catch_up)
        )
        if lag is not None:
            lag = ROUND_LAG if k > 0 else lag + 1
        produced += min(accepted + 1, tokens - produced)
        seconds += t_p + t_v + catch_up
        blocks.append(k)
        vetoed.append(policy.vetoed)
    policy.finish(produced)
    return Run(seconds, blocks, vetoed)


def alone(machine: Machine, tokens: int) -> float:
    """Seconds of the target alone for `tokens` tokens."""
    return tokens * (machine.v0 + machine.v1)


def warmed(machine: Machine, lengths: list[int], seed: int = 0) -> Callable[[], Goodput]:
    """A factory of goodput policies sharing measurements warmed up by generations of these lengths."""
    factory = parse_lookahead("goodput")
    rng = np.random.default_rng(seed)
    for n in lengths:
        generate(factory(), machine, n, rng)
    return factory


# --- the catch-up in the rule -----------------------------------------------------------------------


def test_the_planted_draft_pays_in_steady_state_but_not_its_catch_up_over_a_short_answer() -> None:
    """The premise of the tests below: drafting saves ~0.034 s a token (15.7 tok/s against 10), a prompt's
    catch-up costs 1.52 s, so it pays from about 45 tokens to come on."""
    factory = warmed(Machine(), [200, 200])
    policy = factory()
    best = policy.best(policy.cap(64))
    assert best > 0 and policy.rate(best) > 1.15 * policy.rate(0)
    assert policy.measurements.catch_up(PROMPT_LAG) == pytest.approx(Machine().catch_up(PROMPT_LAG), rel=0.05)
    assert 35 < policy.measurements.catch_up(PROMPT_LAG) / policy.saving(best) < 55


def test_a_large_lag_keeps_a_short_generation_from_drafting() -> None:
    """Answers that end after 24 tokens (an end-of-generation token, far before max_tokens = 512): once
    goodput has seen a few, it does not pay the draft's catch-up of the prompt, and costs what the target
    alone does, but for a probe on the cannot-pay back-off (every 256 rounds, then 512, ...); the same
    answers without a lag (the draft already caught up) draft."""
    machine = Machine()
    factory = warmed(machine, [200] + [24] * 6)
    policy = factory()
    assert policy.left(511) * policy.saving(policy.best(16)) < policy.measurements.catch_up(PROMPT_LAG)
    rng = np.random.default_rng(1)
    runs = [generate(factory(), machine, 24, rng, max_tokens=512) for _ in range(5)]
    assert sum(k > 0 for run in runs for k in run.blocks) == 1  # the probe
    assert [run.seconds == pytest.approx(alone(machine, 24)) for run in runs] == [True] * 4 + [False]
    policy = factory()
    policy.progress = Progress(0)
    assert policy.next_block(511, lag=PROMPT_LAG) == 0
    assert policy.next_block(511, lag=ROUND_LAG) > 0  # without the lag it drafts
    assert policy.summary()["catch_up_declined"] == 1
    caught_up = generate(factory(), machine, 24, rng, max_tokens=512, lag=None)
    assert caught_up.drafting > 0.5


def test_drafting_with_the_catch_up_would_have_lost_on_those_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the rule saves there: with the catch-up left out of it (a free catch-up, as the rule saw it
    before), the same answers draft, pay the catch-up, and take longer than the target alone."""
    machine = Machine()
    factory = warmed(machine, [200] + [24] * 6)
    policy = factory()
    monkeypatch.setattr(policy.measurements, "catch_up", CostCurve(1, flat=False))  # predicts 0 s
    run = generate(policy, machine, 24, np.random.default_rng(1), max_tokens=512)
    assert run.blocks[0] > 0 and run.seconds > 1.05 * alone(machine, 24)


def test_the_same_lag_is_paid_where_the_generation_is_long() -> None:
    """Answers of 400 tokens: the catch-up is repaid many times over, goodput drafts from the first
    round and beats the target alone."""
    machine = Machine()
    factory = warmed(machine, [400, 400])
    rng = np.random.default_rng(2)
    for _ in range(3):
        run = generate(factory(), machine, 400, rng)
        assert run.blocks[0] > 0 and run.drafting > 0.8
        assert run.seconds < 0.9 * alone(machine, 400)


def test_a_generation_that_runs_past_the_average_is_expected_to_go_on() -> None:
    """After answers of 24 tokens, a long one: not worth the catch-up at its start, but once it has
    produced well past the average (33 tokens) it is expected to go on about as long again, and drafts
    (from about 60 tokens on: drafting as many saves about the catch-up of 150 + 60)."""
    machine = Machine()
    factory = warmed(machine, [200] + [24] * 6)
    average = factory().measurements.lengths.mean
    run = generate(factory(), machine, 400, np.random.default_rng(3), max_tokens=512)
    first = next(i for i, k in enumerate(run.blocks) if k > 0)
    assert average < first < 80 and sum(k > 0 for k in run.blocks[first:]) > 0.8 * len(run.blocks[first:])


def test_the_limit_caps_the_tokens_left_and_a_stage_above_sets_it() -> None:
    """Long answers on average, but max_tokens leaves 20 to come: no catch-up. A stage that proposes to
    another reads the top stage's limit from `progress`, not its own (the block asked of it)."""
    factory = warmed(Machine(), [400, 400])
    policy = factory()
    policy.progress = Progress(0)
    assert policy.left(19) == 20 and policy.next_block(19, lag=PROMPT_LAG) == 0
    assert policy.left(1000) == 400 and policy.next_block(1000, lag=PROMPT_LAG) > 0
    policy.progress = Progress(100, most=900)
    assert policy.left(3) == 300 and policy.next_block(3, lag=PROMPT_LAG) > 0
    policy.progress = Progress(390, most=900)
    assert policy.left(3) == 390  # past the average: as long again
    fresh = Goodput()
    assert fresh.left(99) == 100  # no generation ended yet: the limit alone


def test_beside_another_sequence_the_catch_up_is_weighed_against_the_batch_s_saving() -> None:
    """Beside one other sequence the planted draft still pays once caught up (k = 2: rate 20.7 against
    18.2 tokens/s), but it saves the batch ~0.009 s per token of this sequence, not the ~0.04 s this
    sequence alone saves: the other's tokens wait for its longer steps, and for its catch-up. So the
    prompt's catch-up (1.52 s), which 150 tokens to come repay alone (~6 s saved), is declined beside it
    (~1.3 s)."""
    factory = warmed(Machine(), [400, 400])
    beside = lookahead.Load(others=1, committed=1.0)
    for load, lagging in [(lookahead.ALONE, True), (beside, False)]:
        policy = factory()
        policy.load, policy.progress = load, Progress(200)
        assert policy.left(149) == 150
        assert policy.next_block(149, lag=ROUND_LAG) > 0
        assert (policy.next_block(149, lag=PROMPT_LAG) > 0) == lagging
    assert 0 < policy.saving(2) < 0.01 and 0.03 < factory().saving(2) < 0.05


def test_probes_whose_catch_up_could_not_pay_wait_for_the_cannot_pay_back_off() -> None:
    """The draft's tokens are never accepted here, so goodput does not draft and probes now and then (its
    acceptance might change): every 8 to 64 rounds where a probe costs nothing more than its block (the
    draft caught up, or no state at all), but where its catch-up could not pay for itself over what is
    left of a short answer even if every drafted token were accepted, only every 256 rounds, then 512."""
    machine = Machine(alpha=0.0, draft=0.06)
    for lag, fewest, most in [(None, 8, 30), (PROMPT_LAG, 1, 2)]:
        factory = warmed(machine, [200] + [24] * 6)
        rng = np.random.default_rng(4)
        runs = [generate(factory(), machine, 24, rng, max_tokens=512, lag=lag) for _ in range(24)]
        probes = sum(k > 0 for run in runs for k in run.blocks)
        assert fewest <= probes <= most, (lag, probes)


def test_a_catch_up_is_measured_by_the_tokens_lacked() -> None:
    """The reports' catch-ups make the curve: one length gives a cost per token, two a line."""
    policy = Goodput()
    policy.observe(RoundReport(3, 3, 3, 0.03, 0.1, catch_up_tokens=100, catch_up_seconds=0.52))
    assert policy.measurements.catch_up(50) == pytest.approx(0.26)
    policy.observe(RoundReport(3, 3, 3, 0.03, 0.1, catch_up_tokens=4, catch_up_seconds=0.04))
    assert policy.measurements.catch_up(52) == pytest.approx(0.28)
    policy.observe(RoundReport(3, 3, 3, 0.03, 0.1))  # no catch-up: nothing measured
    assert policy.measurements.catch_up.rounds == 2
    summary = json.loads(json.dumps(policy.summary()))
    assert summary["catch_up_cost"]["u1"] == pytest.approx(0.005) and summary["catch_up_cost"]["rounds"] == 2


def test_the_catch_up_curve_keeps_the_lengths_seen_last() -> None:
    curve = CostCurve(8, flat=False, lengths=4)
    for n in range(10, 20):
        curve.add(n, 0.01 * n)
    assert sorted(curve.samples) == [16, 17, 18, 19] and sorted(curve.cost_at) == [16, 17, 18, 19]
    curve.add(16, 0.16)
    curve.add(30, 0.3)
    assert sorted(curve.samples) == [16, 18, 19, 30]
    assert curve(100) == pytest.approx(1.0)
    big = CostCurve(8, flat=False)
    for n in range(10, 20):
        big.add(n, 0.01 * n)
    curve.restore(big.state())  # a state with more lengths keeps the latest
    assert sorted(curve.samples) == [16, 17, 18, 19]


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"catch_up_tokens": -1}, "catch_up_tokens=-1"),
        ({"requested": 0, "proposed": 0, "accepted": 0, "catch_up_tokens": 5}, "requested=0"),
        ({"catch_up_seconds": -0.1}, "catch_up=-0.1"),
        ({"catch_up_seconds": float("nan")}, "catch_up=nan"),
    ],
)
def test_round_report_rejects_bad_catch_ups(kwargs: dict, bad: str) -> None:
    args = {"requested": 3, "proposed": 3, "accepted": 1, "propose_seconds": 0.0, "verify_seconds": 0.1}
    with pytest.raises(ValueError, match=re.escape(bad)):
        RoundReport(**{**args, **kwargs})


def test_choice_weighs_each_candidates_own_lag() -> None:
    """Among candidate drafts, the candidate the rule picks weighs its own catch-up (`Candidates.lags`),
    not the one of the candidate that proposed last."""
    machine = Machine()
    factory = ChoiceFactory.of("goodput", 2)
    policy = factory()

    class Two:
        """What Choose steers: two candidates, and each one's lag at the latest round."""

        def __init__(self) -> None:
            self.proposers = [type("P", (), {"name": f"c{i}", "confident": False})() for i in range(2)]
            self.current = 0
            self.lags: list[int] = []

    two = Two()
    policy.attach(two)
    policy.switching = Backoff(10**6, 10**6)  # no round for the other candidate in this test
    rng = np.random.default_rng(5)
    for _ in range(40):  # both warm up on the planted machine, caught up
        k = policy.next_block(64)
        accepted = int(np.argmin(np.append(rng.random(k) < machine.alpha, False)))
        policy.observe(RoundReport(k, k, accepted, machine.draft * k, machine.v0 + machine.v1 * (k + 1)))
    for p in policy.policies:
        p.measurements.catch_up.add(PROMPT_LAG, machine.catch_up(PROMPT_LAG))
        p.finish(24)
    best, k = policy._best(23)
    assert k > 0
    two.lags = [0, 0]
    two.lags[best] = PROMPT_LAG
    assert policy.next_block(23) == 0 and policy.policies[best].declined == 1
    two.lags[best] = ROUND_LAG
    assert policy.next_block(23) > 0


# --- the realized-rate veto ------------------------------------------------------------------------


def test_the_veto_stops_drafting_whose_rounds_realize_less_than_not_drafting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every other drafting round takes 3x as long: the cost model keeps the fast rounds' costs (its low
    quantile treats the slow ones as disturbances) and predicts drafting at +50%, while drafting rounds
    realize about 15% less than not drafting. The veto stops it (trials now and then, on the cannot-pay
    back-off) and the generations cost about what the target alone does; without it goodput keeps
    drafting and loses."""
    machine = Machine(alpha=0.8, draft=0.02, slow=3.0)
    for veto, drafting, most in [(True, 0.1, 1.05), (False, 0.9, None)]:
        if not veto:
            monkeypatch.setattr(lookahead, "VETO_ROUNDS", 1e9)
        factory = warmed(machine, [100], seed=6)
        rng = np.random.default_rng(7)
        runs = [generate(factory(), machine, 200, rng, lag=None) for _ in range(4)]
        policy = factory()
        assert policy.rate(policy.best(policy.cap(64))) > 1.2 * policy.rate(0)  # what the model predicts
        seconds = sum(r.seconds for r in runs)
        share = sum(sum(k > 0 for k in r.blocks) for r in runs) / sum(len(r.blocks) for r in runs)
        if veto:
            assert share < drafting and seconds < most * 4 * alone(machine, 200)
            assert policy.vetoed and policy.summary()["vetoed"] is True
            realized = policy.summary()["realized_rate"]
            assert realized["drafting"] < realized["plain"]
        else:
            assert share > drafting and seconds > 1.1 * 4 * alone(machine, 200)


def test_beside_other_sequences_the_veto_weighs_the_batch_s_tokens() -> None:
    """Drafting rounds whose step takes 0.5 s against 0.2 s for a step without drafting, their proposals
    three quarters accepted: this sequence realizes more tokens per second drafting (about 3 / 0.5
    against 1 / 0.2), so alone the veto stays off; beside three other sequences, committing 3 tokens a
    step between them, the batch realizes fewer ((3 + 3) / 0.5 against 4 / 0.2), and the veto holds."""
    for load, vetoed in [(lookahead.ALONE, False), (lookahead.Load(others=3, committed=3.0), True)]:
        policy = Goodput()
        policy.load = load
        for _ in range(20):
            policy.round = lookahead._Round(4, rate=10.0, plain=5.0)  # a round of the rule, expecting a gain
            policy.observe(RoundReport(4, 4, 3, 0.0, 0.5, shared=load.others))
            policy.round = lookahead._Round(0)
            policy.observe(RoundReport(0, 0, 0, 0.0, 0.2, shared=load.others))
        assert policy.vetoed == vetoed


def test_a_vetoed_draft_is_tried_again_and_resumes_once_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vetoed, the rule drafts again when the cannot-pay back-off comes due, its drafting evidence
    dropped; while the trials end vetoed the interval doubles, and once drafting realizes what it
    should (the slowness gone), the trial ends the veto for good."""
    monkeypatch.setattr(lookahead, "CANNOT_PAY", (16, 64))
    slow, fast = Machine(alpha=0.8, draft=0.02, slow=3.0), Machine(alpha=0.8, draft=0.02)
    factory = warmed(slow, [100], seed=8)
    rng = np.random.default_rng(9)
    vetoed = [generate(factory(), slow, 200, rng, lag=None) for _ in range(3)]
    blocks = [k for r in vetoed for k in r.blocks]
    assert factory().vetoed
    starts = [i for i in range(1, len(blocks)) if blocks[i] > 0 and blocks[i - 1] == 0]
    assert len(starts) >= 3 and np.all(np.diff(starts[-3:]) > 16)  # trials, further apart
    resumed = [generate(factory(), fast, 200, rng, lag=None) for _ in range(2)]
    assert not factory().vetoed
    assert resumed[-1].drafting > 0.9 and not any(resumed[-1].vetoed)


def test_a_paying_draft_is_not_vetoed_for_its_catch_ups_after_pauses() -> None:
    """A draft that agrees with the target (every token accepted) at a tenth of its cost, a block of 4
    verified at 1.5x one token. Every answer starts with the prompt's catch-up (the round that pays it,
    alone, realizes less than not drafting), and in each a stretch of 40 tokens (a quotation, say)
    defeats the draft: goodput stops drafting there and probes, each probe after the pause paying a
    catch-up, until one finds the draft right again. With the rule's catch-ups charged over the tokens
    they were paid for, and the probes' left to them (a measurement's price), the veto never holds:
    drafting resumes after each stretch and the answers take about half the target's time."""
    good = Machine(alpha=1.0, draft=0.01, v0=0.0875, v1=0.0125)
    factory = warmed(good, [400], seed=10)
    rng = np.random.default_rng(11)
    for _ in range(4):
        run = generate(factory(), good, 400, rng, bad=range(150, 190))
        assert not any(run.vetoed)
        k = run.blocks[0]
        assert k > 0 and run.seconds < 0.6 * alone(good, 400)
        first = (k + 1) / (good.draft * k + good.v0 + good.v1 * (k + 1) + good.catch_up(PROMPT_LAG))
        assert first < 1 / (good.v0 + good.v1)
        paused = [i for i, k in enumerate(run.blocks) if k == 0]
        assert any(run.blocks[i] > 0 for i in range(paused[0], paused[-1]))  # probes after pauses
        after = run.blocks[paused[-1] + 1 :]
        assert len(after) >= 10 and all(k > 0 for k in after)  # drafting to the end


# --- state ----------------------------------------------------------------------------------------


def measured() -> Measurements:
    """Measurements with catch-ups, lengths and realized rates (vetoed)."""
    machine = Machine(alpha=0.8, draft=0.02, slow=3.0)
    factory = warmed(machine, [100, 60, 200], seed=12)
    m = factory().measurements
    assert m.catch_up.rounds > 0 and m.lengths.mean is not None and m.realized.rate(True) is not None
    return m


def test_state_round_trip_with_catch_ups_lengths_and_realized_rates() -> None:
    m = measured()
    state = json.loads(json.dumps(m.state()))
    restored = Measurements(16)
    restored.restore(state)
    assert restored.state() == m.state()
    a, b = Goodput(measurements=m), Goodput(measurements=restored)
    assert a.summary() == b.summary()
    rng_a, rng_b = np.random.default_rng(13), np.random.default_rng(13)
    assert generate(a, Machine(), 48, rng_a).blocks == generate(b, Machine(), 48, rng_b).blocks


def test_a_state_saved_before_catch_ups_were_measured_still_restores(tmp_path: Path) -> None:
    """Calibration files on disk from before: no catch-up curve, lengths or realized rates in them. They
    load, with those empty, and everything else as saved."""
    m = measured()
    old = {key: value for key, value in m.state().items() if key not in ("catch_up", "lengths", "realized")}
    restored = Measurements(16)
    restored.restore(json.loads(json.dumps(old)))
    assert restored.catch_up.rounds == 0 and restored.lengths.mean is None
    assert restored.realized.rate(True) is None and not restored.realized.trial
    assert {k: v for k, v in restored.state().items() if k in old} == old
    file = CalibrationFile({"test": "old"}, tmp_path)
    file.save([m])
    doc = json.loads(file.path.read_text())
    doc["stages"] = [old]
    file.path.write_text(json.dumps(doc))
    fresh = Measurements(16)
    assert file.load([fresh]) and fresh.costs.verify.rounds == m.costs.verify.rounds
    assert fresh.catch_up.rounds == 0


def test_finish_wants_a_length() -> None:
    with pytest.raises(ValueError, match="integer >= 0"):
        Goodput().finish(-1)
    policy = Fixed(3)
    policy.finish(10)  # every policy hears it; only goodput learns from it
    assert isinstance(policy, Lookahead)


# --- the verifier measures the catch-up (tiny models) ---------------------------------------------------

EXACT = TierConfig(n_ctx=512, cache_type="f32", flash_attn=False)


@pytest.fixture(scope="module")
def tiny(tiny_target: Path, tiny_same: Path, tiny_noisy: Path) -> Iterator[dict[str, Tier]]:
    """The tiny target, a qualifier with its weights, and a noisy draft, loaded once; each test resets
    their caches (a tier that has read nothing lacks the whole prompt)."""
    tiers = {
        name: Tier(path, EXACT)
        for name, path in [("target", tiny_target), ("same", tiny_same), ("noisy", tiny_noisy)]
    }
    yield tiers
    for tier in tiers.values():
        tier.close()


def fresh(tiers: dict[str, Tier]) -> dict[str, Tier]:
    for tier in tiers.values():
        tier.reset()
    return tiers


class Scripted(Fixed):
    """Blocks from a script (then 0), recording what each round was told and what it reported."""

    def __init__(self, blocks: list[int]) -> None:
        super().__init__(0)
        self.script = list(blocks)
        self.calls: list[tuple[int, int, Progress]] = []  # (limit, lag, progress)
        self.reports: list[RoundReport] = []

    def next_block(self, limit: int, lag: int = 0) -> int:
        self.calls.append((limit, lag, self.progress))
        return min(self.script.pop(0) if self.script else 0, max(limit, 0))

    def observe(self, report: RoundReport) -> None:
        self.reports.append(report)


def run_rounds(top: Verifier, prompt: list[int], n: int) -> list[int]:
    out: list[int] = []
    for tokens in commit_rounds(top, prompt, n):
        out += tokens
    return out


def test_the_verifier_times_the_catch_up_and_reports_the_lag(tiny: dict[str, Tier]) -> None:
    """A draft that has not read the prompt lacks all of it: the policy is told, the first drafting round
    catches it up and reports the tokens and seconds; consecutive drafting rounds catch nothing up; rounds
    of k = 0 leave it one more token behind each, and the next drafting round catches those up."""
    target, draft = fresh(tiny)["target"], tiny["noisy"]
    prompt = target.tokenize("the quick brown fox jumps over the lazy dog")
    policy = Scripted([0, 3, 3, 0, 0, 0, 2])
    top = assemble(draft, [target], [StageConfig()], [lambda: policy], SamplingConfig())
    run_rounds(top, prompt, 16)
    lags = [lag for _, lag, _ in policy.calls]
    assert lags[0] == len(prompt) and lags[1] == len(prompt) + 1
    first, second = policy.reports[1], policy.reports[2]
    assert first.catch_up_tokens == lags[1] and first.catch_up_seconds > 0.0
    assert lags[2] <= ROUND_LAG and second.catch_up_tokens == 0 and second.catch_up_seconds == 0.0
    assert lags[6] == lags[3] + 3 > ROUND_LAG and policy.reports[6].catch_up_tokens == lags[6]
    assert all(r.catch_up_tokens == 0 for r in policy.reports if r.requested == 0)
    produced = [p.produced for _, _, p in policy.calls]
    assert produced[0] == 0 and produced == sorted(produced)
    assert all(p.most == limit + 1 for limit, _, p in policy.calls)


def test_a_qualifier_reports_its_own_and_its_drafts_lag(tiny: dict[str, Tier]) -> None:
    """Proposing to the target, a qualifier lacks what its tier lacks (beyond ROUND_LAG) plus what its
    draft lacks; its own policy reads the target's limit as the generation's, not the block asked of it."""
    tiers = fresh(tiny)
    target, qualifier, draft = tiers["target"], tiers["same"], tiers["noisy"]
    prompt = target.tokenize("the quick brown fox jumps over the lazy dog")
    top_policy, inner_policy = Scripted([4, 4]), Scripted([2, 2, 2, 2, 2, 2])
    top = assemble(
        draft,
        [qualifier, target],
        [StageConfig(), StageConfig()],
        [lambda: inner_policy, lambda: top_policy],
        SamplingConfig(),
    )
    run_rounds(top, prompt, 12)
    assert top_policy.calls[0][1] == 2 * len(prompt)  # neither has read the prompt
    assert top_policy.reports[0].catch_up_tokens == 2 * len(prompt)
    assert inner_policy.calls[0][1] <= ROUND_LAG  # caught up by the target's round
    assert inner_policy.calls[0][2].most == top_policy.calls[0][0] + 1  # the top's limit + 1
    assert inner_policy.calls[0][0] < top_policy.calls[0][0]  # its own limit: the block asked of it


def test_candidates_report_each_ones_lag(tiny: dict[str, Tier]) -> None:
    draft = fresh(tiny)["noisy"]
    seq = list(range(5, 25))
    candidates = Candidates([NgramProposer(), ModelDrafter(draft, SamplingConfig())])
    assert candidates.lag(seq) == 0 and candidates.lags == [0, len(seq)]
    candidates.current = 1
    assert candidates.lag(seq) == len(seq)
