"""Adaptive lookahead: how many tokens the proposer below a verifier drafts next round, and when to stop.

Pure Python/numpy, no model. A policy answers three questions for one verifier stage:

    next_block(limit)        before a round: ask the proposer for k tokens, 0 <= k <= limit
                             (0 = no speculation this round: the verifier decodes one token alone);
    keep_drafting(i, p, H)   inside a model drafter's loop, after its i-th token (1-based) with top-1
                             probability p and entropy H (nats): False stops the block there, and the
                             token just drafted is kept;
    observe(report)          after the round: what was proposed, accepted, and what it cost.

Glossary: *requested* = the k asked for; *proposed* = tokens the proposer returned (fewer when an n-gram
has no longer match, a drafter hits end of generation, or keep_drafting stopped it); *accepted* = the
prefix of the proposal the verifier kept (the verifier's own recovered/bonus token is not counted).

Policies keep state per generation: the loop makes a fresh one for every generation through the factory
that `parse_lookahead` returns. Per-token acceptance follows the geometric model of Leviathan et al.
(2023): position i is accepted with probability a given every earlier one was, so a round that accepts
m of k proposed tokens shows m successes and, when m < k, one failure; later positions are unobserved.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_spec.errors import ConfigError

# The best policy measured over both proposers (bench/README.md; Qwen2.5-Coder 0.5B or an n-gram under the
# 1.5B on 2-core CPUs, 10 prompts per class). Xeon, 2026-11-22 runs A-C: within 5% of the best fixed length
# on every class with either proposer in A and B (C: 8% behind on rewrites with the 0.5B); overall 1.00x
# against fixed:3's 0.94x with the n-gram, level with the 0.5B (paired over the three runs 1.002x). AMD
# EPYC, 2026-12-01, where no block pays: ahead of fixed:3 on every class (0.95x against 0.61x with the 0.5B,
# 0.92x against 0.62x with the n-gram; fixed:4 lower still).
DEFAULT_LOOKAHEAD = "goodput"

LOOKAHEAD_HELP = (
    "fixed:K | pmin:P[:MAX] | entropy:H[:MAX] | cumulative:H[:MAX] | goodput[:MAX]  "
    "(MAX = longest block, default 16)"
)


@dataclass(frozen=True)
class RoundReport:
    """What one verification round did (input to `observe`)."""

    requested: int  # block length the policy asked for
    proposed: (
        int  # tokens the proposer returned (<= requested: an n-gram or a confidence stop may give fewer)
    )
    accepted: int  # of those, accepted by the verifier (prefix length)
    propose_seconds: float  # wall time the proposer took for this block (0 for n-gram)
    verify_seconds: float  # wall time of the verifier's one batched decode of proposed + 1 tokens
    confidences: tuple[float, ...] = ()  # proposer's top-1 probability per proposed token, () if it has none

    def __post_init__(self) -> None:
        if self.requested < 0 or self.proposed < 0 or not 0 <= self.accepted <= self.proposed:
            raise ValueError(
                f"need requested >= 0 and 0 <= accepted <= proposed, got requested={self.requested}, "
                f"proposed={self.proposed}, accepted={self.accepted}"
            )
        if not (self.propose_seconds >= 0.0 and self.verify_seconds >= 0.0):  # also rejects NaN
            raise ValueError(
                f"round times must be >= 0, got propose={self.propose_seconds}, verify={self.verify_seconds}"
            )


@runtime_checkable
class Lookahead(Protocol):
    """A block-length policy for one verifier stage (see the module docstring)."""

    name: str
    needs_confidence: bool  # whether keep_drafting reads top1/entropy (the drafter then computes a softmax)

    def next_block(self, limit: int) -> int:
        """Tokens to ask for this round, 0..limit (0 = no speculation: the verifier decodes alone)."""
        ...

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        """After the `drafted`-th token (1-based): False = stop the block here (that token is kept)."""
        ...

    def observe(self, report: RoundReport) -> None:
        """Learn from the round just verified."""
        ...

    def summary(self) -> dict[str, object]:
        """Final estimates for JSON stats (plain floats/ints/lists/dicts)."""
        ...


def _clamp(k: int, limit: int) -> int:
    return max(0, min(k, limit))


class _Tally:
    """Counters every policy reports: rounds, tokens, the histogram of requested block lengths."""

    name = "?"

    def __init__(self) -> None:
        self.rounds = 0  # observed rounds
        self.requested = 0  # tokens asked for
        self.proposed = 0  # tokens returned by the proposer
        self.accepted = 0  # tokens accepted by the verifier
        self.early_stops = 0  # times keep_drafting returned False
        self.k_histogram: dict[int, int] = {}  # requested block length -> rounds
        self.k_asked = 0  # the block length asked for this round

    def _asked(self, k: int) -> int:
        self.k_histogram[k] = self.k_histogram.get(k, 0) + 1
        self.k_asked = k
        return k

    def _stop(self, keep: bool) -> bool:
        self.early_stops += not keep
        return keep

    def observe(self, report: RoundReport) -> None:
        self.rounds += 1
        self.requested += report.requested
        self.proposed += report.proposed
        self.accepted += report.accepted

    def summary(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "rounds": self.rounds,
            "requested": self.requested,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": self.accepted / self.proposed if self.proposed else None,  # accepted/proposed
            "early_stops": self.early_stops,
            "k_histogram": {str(k): n for k, n in sorted(self.k_histogram.items())},
        }


def _check_max_block(max_block: int) -> None:
    if not (isinstance(max_block, int) and max_block >= 1):
        raise ConfigError(f"lookahead max block must be an integer >= 1, got {max_block!r}")


class Fixed(_Tally):
    """Always ask for k tokens (clamped to the limit); never stop early. The classic SD baseline
    (Leviathan et al. 2023; llama.cpp `--spec-draft-n-max` with p_min 0)."""

    name = "fixed"
    needs_confidence = False

    def __init__(self, k: int = 4, fallback_for: str | None = None) -> None:
        super().__init__()
        if not (isinstance(k, int) and k >= 0):
            raise ConfigError(f"fixed lookahead needs an integer k >= 0, got {k!r}")
        self.k = k  # block length asked for every round (0 = never speculate)
        self.fallback_for = fallback_for  # the confidence policy this stands in for (see fit_to_proposer)

    def next_block(self, limit: int) -> int:
        return self._asked(_clamp(self.k, limit))

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        return True

    def summary(self) -> dict[str, object]:
        fallback = {"fallback_for": self.fallback_for} if self.fallback_for else {}
        return {**super().summary(), "k": self.k, **fallback}


BLIND_K = 3
"""Block length of a confidence policy over a proposer without confidences (the best fixed length measured
in the 2026-11-22 sweep: 2, 3 and 4 tried, 3 best on every class with both proposers)."""


def fit_to_proposer(policy: Lookahead, confident: bool) -> Lookahead:
    """The policy to use over a proposer that does (`confident`) or does not report per-token confidence.
    pmin, entropy and cumulative stop a block on the drafter's confidence; over an n-gram or a qualifier,
    which report none, they would always ask for their longest block, so they become Fixed(BLIND_K).
    Goodput stays itself and reads confidence where there is some (`Goodput.stop_on_confidence`)."""
    if isinstance(policy, Goodput):
        policy.stop_on_confidence = confident
    elif policy.needs_confidence and not confident:
        return Fixed(BLIND_K, fallback_for=policy.name)
    return policy


class Confidence(_Tally):
    """Ask for max_block tokens; stop as soon as the drafter's top-1 probability falls below p_min, keeping
    that token. As llama.cpp's draft loop (`common/speculative.cpp`: push the token, then break when
    `cur_p->data[0].p < params.p_min`; defaults p_min 0.75, n_max 16 in `common/common.h`)."""

    name = "pmin"
    needs_confidence = True

    def __init__(self, p_min: float = 0.75, max_block: int = 16) -> None:
        super().__init__()
        if not 0.0 <= p_min <= 1.0:
            raise ConfigError(f"p_min must be in [0, 1], got {p_min!r}")
        _check_max_block(max_block)
        self.p_min = p_min  # stop after the first drafted token whose top-1 probability is below this
        self.max_block = max_block  # longest block asked for

    def next_block(self, limit: int) -> int:
        return self._asked(_clamp(self.max_block, limit))

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        return self._stop(top1 >= self.p_min)

    def summary(self) -> dict[str, object]:
        return {**super().summary(), "p_min": self.p_min, "max_block": self.max_block}


class Entropy(_Tally):
    """Ask for max_block tokens; stop when sqrt(gamma * H) > h, H the drafter's entropy in nats, keeping the
    high-entropy token. SVIP (Zhang et al. 2024) bounds the acceptance rate below by 1 - sqrt(gamma * H);
    AdaEDL (Agrawal et al. 2024) stops on the same bound. Defaults stop at H > h^2 / gamma = 0.6 nats."""

    name = "entropy"
    needs_confidence = True

    def __init__(self, h: float = 0.3, gamma: float = 0.15, max_block: int = 16) -> None:
        super().__init__()
        if not h >= 0.0:
            raise ConfigError(f"entropy threshold h must be >= 0, got {h!r}")
        if not gamma > 0.0:
            raise ConfigError(f"entropy gamma must be > 0, got {gamma!r}")
        _check_max_block(max_block)
        self.h = h  # stop when sqrt(gamma * H) exceeds this
        self.gamma = gamma  # scale of the entropy in the acceptance bound (SVIP's gamma)
        self.max_block = max_block  # longest block asked for

    def next_block(self, limit: int) -> int:
        return self._asked(_clamp(self.max_block, limit))

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        return self._stop(math.sqrt(self.gamma * max(entropy, 0.0)) <= self.h)

    def summary(self) -> dict[str, object]:
        return {
            **super().summary(),
            "h": self.h,
            "gamma": self.gamma,
            "max_entropy_nats": self.h * self.h / self.gamma,
            "max_block": self.max_block,
        }


class Calibration:
    """The chance that a drafted token is accepted given the ones before it were, as a function of the
    drafter's top-1 probability: top-1 is bucketed into `bins` bins, each with a Beta prior of weight
    `prior_weight` centred on top-1 itself (so before any data the estimate is top-1), updated with the
    accepted and rejected positions observed (positions after the first rejection are unobserved)."""

    def __init__(self, bins: int = 10, prior_weight: float = 4.0) -> None:
        if not (isinstance(bins, int) and bins >= 1):
            raise ConfigError(f"calibration bins must be an integer >= 1, got {bins!r}")
        if not prior_weight > 0.0:
            raise ConfigError(f"calibration prior weight must be > 0, got {prior_weight!r}")
        self.bins = bins  # top-1 buckets
        self.prior_weight = prior_weight  # pseudo-observations per bucket, centred on top-1 itself
        self.hits = np.zeros(bins)  # [bins] accepted positions per bucket
        self.trials = np.zeros(bins)  # [bins] observed (accepted or rejected) positions per bucket

    def _bin(self, top1: float) -> int:
        return min(max(int(top1 * self.bins), 0), self.bins - 1)

    def estimate(self, top1: float) -> float:
        """Calibrated chance that a token drafted with this top-1 probability is accepted."""
        top1 = min(max(top1, 0.0), 1.0)
        b = self._bin(top1)
        return float((self.prior_weight * top1 + self.hits[b]) / (self.prior_weight + self.trials[b]))

    def add(self, confidences: tuple[float, ...], accepted: int) -> None:
        """Learn from one round: the proposed tokens' top-1 probabilities, of which `accepted` were kept."""
        for i, top1 in enumerate(confidences[: accepted + 1]):  # past the first rejection: unobserved
            b = self._bin(top1)
            self.trials[b] += 1
            self.hits[b] += i < accepted

    def table(self) -> list[dict[str, object]]:
        """Per bucket: its top-1 range, the positions observed and accepted, the estimate at its centre."""
        return [
            {
                "top1": [b / self.bins, (b + 1) / self.bins],
                "observed": int(self.trials[b]),
                "accepted": int(self.hits[b]),
                "estimate_at_centre": self.estimate((b + 0.5) / self.bins),
            }
            for b in range(self.bins)
        ]


class Cumulative(_Tally):
    """SpecDec++ (Huang et al. 2024): keep the running product of per-token acceptance estimates within the
    block and stop when 1 - product > h (the chance that some drafted token is rejected). SpecDec++ trains
    an acceptance head; here the estimate is the drafter's top-1 probability calibrated online
    (`Calibration`: `bins` top-1 buckets, a prior of `prior_weight` observations centred on top-1)."""

    name = "cumulative"
    needs_confidence = True

    def __init__(
        self, h: float = 0.3, max_block: int = 16, bins: int = 10, prior_weight: float = 4.0
    ) -> None:
        super().__init__()
        if not 0.0 <= h <= 1.0:
            raise ConfigError(f"cumulative threshold h must be in [0, 1], got {h!r}")
        _check_max_block(max_block)
        self.h = h  # stop when the chance of a rejection within the block exceeds this (SpecDec++: 0.3)
        self.max_block = max_block  # longest block asked for
        self.calibration = Calibration(bins, prior_weight)
        self.product = 1.0  # running product of estimates in the current block

    def next_block(self, limit: int) -> int:
        self.product = 1.0
        return self._asked(_clamp(self.max_block, limit))

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        if drafted <= 1:
            self.product = 1.0
        self.product *= self.calibration.estimate(top1)
        return self._stop(1.0 - self.product <= self.h)

    def observe(self, report: RoundReport) -> None:
        super().observe(report)
        self.calibration.add(report.confidences[: report.proposed], report.accepted)

    def summary(self) -> dict[str, object]:
        return {
            **super().summary(),
            "h": self.h,
            "max_block": self.max_block,
            "calibration": self.calibration.table(),
        }


class CostCurve:
    """A measured cost curve: seconds at each length x, from the last `per_length` observations there.

    Batch costs are not linear (measured on a 2-core CPU, Qwen2.5-Coder 1.5B Q4_K_M: 1, 1.5, 2.0, 1.7, 2.2
    and 3.3 times a one-token decode for batches of 1, 2, 3, 4, 5 and 8; llama.cpp's repacked kernels work
    in tiles of rows), so a length measured at least twice costs a low quantile (`quantile`) of its
    observations. Disturbances (CPU steal, other processes, page faults) only ever add time, so, as with
    timeit's minimum, the faster observations are the machine's cost: a length that a burst of steal made
    look slow in 5 of its 8 latest rounds keeps its cost, and is not shunned until it happens to be
    measured again.

    Observations also age: the context grows during a generation and shrinks at the next prompt, and a
    shared machine slows down and speeds up, while a length that only exploration visits is observed every
    8 to 64 rounds. Its last 8 observations then date from other conditions than those of the length in
    use, and compared as measured, the stale cost decided the choice (run C, 2026-11-22: on rewrites block 3
    kept a cost from earlier prompts and lost to block 4 for whole prompts). So when a length is observed,
    its observations from more than `max_age` rounds ago are dropped, all but the newest when fewer than 2
    would remain, and the quantile is the lower order statistic: a length seen now and then costs the lower
    of its last two observations, so one fresh observation corrects a stale cost that is too high, and
    one slowed by a burst does not spoil it; a stale cost that is too low gets the length chosen, and
    measured, again.

    Other lengths read a line y ~ b0 + b1 * x (both >= 0) fitted through the measured
    lengths' costs, weighted by their counts. With a single length the slope is not identifiable: `flat`
    decides the fallback (True: b1 = 0, b0 = that cost, a cost independent of length; False: b0 = 0,
    b1 = cost / x, a cost per item)."""

    quantile = 0.25  # of a length's recent observations (the lower order statistic), taken as its cost
    max_age = 32  # rounds of this curve after which a length's observations count as stale

    def __init__(self, per_length: int, flat: bool) -> None:
        self.per_length = per_length  # observations kept at each length (the most recent)
        self.flat = flat
        self.samples: dict[int, deque[tuple[int, float]]] = {}  # length -> recent (round, seconds)
        self.cost_at: dict[int, float] = {}  # length -> the quantile of its samples, refreshed by add()
        self.rounds = 0  # observations ever added
        self.coef = (0.0, 0.0)  # (b0, b1), refreshed by add()

    def add(self, x: int, y: float) -> None:
        ys = self.samples.setdefault(x, deque(maxlen=self.per_length))
        ys.append((self.rounds, float(y)))
        while len(ys) > 2 and ys[0][0] < self.rounds - self.max_age:
            ys.popleft()
        self.cost_at[x] = float(np.quantile([t for _, t in ys], self.quantile, method="lower"))
        self.rounds += 1
        self.coef = self._fit()

    def identified(self) -> bool:
        return len(self.samples) >= 2

    def measured(self) -> list[int]:
        """Lengths observed at least twice (their cost is measured, not read from the line)."""
        return sorted(x for x, ys in self.samples.items() if len(ys) >= 2)

    def __call__(self, x: int) -> float:
        if len(self.samples.get(x, ())) >= 2:
            return self.cost_at[x]
        return self.coef[0] + self.coef[1] * x

    def _fit(self) -> tuple[float, float]:
        lengths = sorted(self.samples)
        x = np.array(lengths, dtype=float)  # [lengths]
        y = np.array([self.cost_at[v] for v in lengths])  # [lengths] cost at each
        w = np.array([len(self.samples[v]) for v in lengths], dtype=float)  # [lengths] observations
        if len(x) == 1:
            if self.flat or x[0] == 0:
                return float(y[0]), 0.0
            return 0.0, float(y[0] / x[0])
        xm, ym = np.average(x, weights=w), np.average(y, weights=w)
        b1 = float((w * (x - xm) * (y - ym)).sum() / (w * (x - xm) ** 2).sum())
        b0 = float(ym - b1 * xm)
        if b1 < 0.0:  # noise on a flat curve: the best non-negative fit is flat
            return float(ym), 0.0
        if b0 < 0.0:  # through the origin
            return 0.0, float((w * x * y).sum() / (w * x * x).sum())
        return b0, b1


class CostModel:
    """What a stage measures that belongs to the machine and the pair of models more than to one
    generation: the costs propose(k) for k > 0 proposed tokens and verify(n) for a batch of n
    (`CostCurve`s), and the acceptance evidence (decayed counts by drafted position, see Goodput).

    A pyramid shares one CostModel between the Goodput policies of its successive generations: each starts
    where the last one ended, without a warm-up, and its acceptance evidence keeps fading per round, so a
    new kind of prompt outweighs the last one within about ten rounds. (A point prior carried with the
    weight of two observations was too light: in short HumanEval answers one early rejection stopped
    drafting for the rest of the answer.)"""

    def __init__(self, per_length: int = 8, max_block: int = 16) -> None:
        self.propose = CostCurve(per_length, flat=False)  # seconds ~ c0 + c1 * proposed, proposed > 0
        self.verify = CostCurve(per_length, flat=True)  # seconds ~ v0 + v1 * (proposed + 1)
        self.hits = np.zeros(max_block)  # [max_block] decayed accepted counts by drafted position
        self.trials = np.zeros(max_block)  # [max_block] decayed reached counts by drafted position
        self.calibration = Calibration()  # acceptance by the drafter's top-1 (a model drafter's rounds)
        self.hopeless = 0  # rounds since the last probe in which drafting could not pay (Goodput.can_pay)
        self.hopeless_gap: int | None = None  # rounds between such probes now (None: hopeless_every)


class Goodput(_Tally):
    """SmartSpec (Liu et al. 2024) / SpecServe (Huang et al. 2025): choose k in 0..limit maximising
    expected committed tokens per second,

        rate(k) = (1 + a_1 + a_1 a_2 + ... + a_1 ... a_k)  /  (propose(k) + verify(k + 1)),

    propose(0) = 0, with a_i the chance that the i-th drafted token is accepted given the ones before it
    were, and costs measured online from the rounds' wall times: propose(k) and verify(n) are a low
    quantile of the seconds of the recent rounds at that length, or lines c0 + c1 * k and v0 + v1 * n
    where a length is not measured yet (`CostCurve`). k = 0 (no speculation) is chosen when drafting costs
    more than it saves.

    Acceptance: exponentially weighted counts (`memory` per round) of positions reached and accepted.
    Their pooled ratio, shrunk to a prior, is the geometric model's one per-token rate a (Leviathan et al.
    2023); each position's own ratio is shrunk to that a, so the estimates learn where acceptance is not
    geometric: an n-gram's first token is the risk, and the tokens after a correct one mostly follow.
    The block length is chosen on the estimates; whether to draft at all (k = 0 or that length) on an
    optimistic one, a_i + `optimism` standard errors (UCB): on a machine where speculation gains 10%, the
    break-even acceptance is near the true one, and a few rejections would otherwise stop drafting on thin
    evidence, after which nothing is learnt until the next probe.

    Cold start: the first rounds a cost model sees (it is shared across a pyramid's generations with the
    acceptance evidence, see CostModel) go twice through the `warmup` lengths, so that not drafting (k = 0)
    and a few block lengths are measured before any is chosen on a guess. Exploration: after
    `explore_every` drafting rounds the best k is moved by +-1 so the curves stay measured around it; the
    interval doubles (up to `max_explore_every`) while the best k stays the one found at the last
    exploration, and starts over when it moved: on the 2-core CPU curve measured here a block of 2 or 4
    instead of 3 costs 12-20% of a round's rate, so a settled choice should rarely be left. k never goes
    more than one past the longest block whose verification was measured twice (`reach`).
    While k = 0 wins, a probe of `probe_k` tokens is sent after `explore_every` zero rounds,
    then after twice as many (up to `max_probe_every`), since the acceptance estimate only moves on
    proposals; a winning k > 0 resets the interval. Where no block would beat not drafting even if every
    drafted token were accepted (`can_pay` is False: verification costs about as much per token as
    decoding alone, as on a 2-core AMD EPYC, where 5 tokens of the 1.5B cost 4.2x one), better acceptance
    cannot help and only a change of costs could: a probe then goes out after `hopeless_every` such
    rounds of the cost model, counted across generations, then after twice as many while drafting still
    cannot pay (up to `max_hopeless_every`). A probe after a pause also costs the drafter a catch-up
    decode of every token it missed (there: 0.35-0.67 s, a tenth of a 128-token generation; with 4 probes
    a generation the 0.5B draft cost a fifth of the decode time).

    Over a drafter that reports each token's top-1 probability (`stop_on_confidence`, set by
    fit_to_proposer), a chosen block also stops early (keep_drafting): after each token, drafting goes on
    while some longer block is expected to add tokens faster than the round's predicted rate, the tokens
    drafted so far counting with their calibrated acceptance (`Calibration` by top-1, in the CostModel)
    and later ones with the positional estimates. On Qwen2.5-Coder 0.5B drafting for the 1.5B, tokens
    drafted with top-1 >= 0.8 were accepted 97-100% of the time and those below 0.7 about half the time
    (code, chat and rewrites), so a block stops after an uncertain token and its draft time is saved."""

    name = "goodput"

    def __init__(
        self,
        max_block: int = 16,
        explore_every: int = 8,
        warmup: tuple[int, ...] = (3, 0, 2, 4),
        probe_k: int = 4,
        max_probe_every: int = 64,
        max_explore_every: int = 64,
        hopeless_every: int = 256,
        max_hopeless_every: int = 4096,
        memory: float = 0.9,
        prior_acceptance: float = 0.6,
        prior_weight: float = 2.0,
        optimism: float = 1.0,
        per_length: int = 8,
        costs: CostModel | None = None,
    ) -> None:
        super().__init__()
        _check_max_block(max_block)
        if not (isinstance(explore_every, int) and explore_every >= 2):
            raise ConfigError(f"goodput explore_every must be an integer >= 2, got {explore_every!r}")
        if not (isinstance(hopeless_every, int) and 1 <= hopeless_every <= max_hopeless_every):
            raise ConfigError(
                f"goodput needs integers 1 <= hopeless_every <= max_hopeless_every, got {hopeless_every!r} "
                f"and {max_hopeless_every!r}"
            )
        if not warmup or any(not (isinstance(k, int) and k >= 0) for k in warmup):
            raise ConfigError(f"goodput warm-up lengths must be integers >= 0, got {warmup!r}")
        if not (isinstance(probe_k, int) and probe_k >= 1):
            raise ConfigError(f"goodput probe_k must be an integer >= 1, got {probe_k!r}")
        if not 0.0 < memory <= 1.0:
            raise ConfigError(f"goodput memory must be in (0, 1], got {memory!r}")
        if not 0.0 <= prior_acceptance <= 1.0 or not prior_weight > 0.0:
            raise ConfigError("goodput prior acceptance must be in [0, 1] and its weight > 0")
        if not optimism >= 0.0:
            raise ConfigError(f"goodput optimism must be >= 0, got {optimism!r}")
        self.max_block = max_block  # longest block considered
        self.explore_every = explore_every  # rounds before trying best k +- 1 (and before a first re-probe)
        self.warmup = warmup  # block lengths of a cost model's first 2 * len(warmup) rounds
        self.probe_k = probe_k  # block length of a re-probe while k = 0 wins
        self.max_probe_every = max_probe_every  # longest run of k = 0 rounds between probes
        self.max_explore_every = max_explore_every  # longest interval between explorations
        self.hopeless_every = hopeless_every  # rounds before a probe once drafting cannot pay (see can_pay)
        self.max_hopeless_every = max_hopeless_every  # longest such interval (doubles while it cannot)
        self.memory = memory  # per-round decay of the acceptance evidence (0.9: about the last 10 rounds)
        self.prior_acceptance = prior_acceptance  # acceptance assumed before any proposal is verified
        self.prior_weight = prior_weight  # pseudo-observations behind that prior
        self.optimism = optimism  # standard errors added to each acceptance estimate when deciding
        self.costs = costs or CostModel(per_length, max_block)  # per_length: rounds kept per length
        if self.costs.hits.shape != (max_block,):
            raise ConfigError(f"goodput max_block {max_block} differs from its shared cost model's")
        self.zero_run = 0  # consecutive rounds where k = 0 won
        self.probe_every = explore_every  # zero rounds before the next probe (doubles while probes fail)
        self.explore_gap = explore_every  # drafting rounds between explorations (doubles while best stays)
        self.since_exploration = 0  # drafting rounds since the last exploration
        self.explored_around: int | None = None  # the best k at the last exploration
        self.probes = 0  # probes sent while k = 0 won
        self.explorations = 0  # rounds moved off the best k to keep the fit identifiable
        self._step = 1  # direction of the next exploration step
        self.stop_on_confidence = False  # set by fit_to_proposer over a drafter that reports confidence
        self._rate = 0.0  # predicted rate of this round's choice, what a further token must beat (0: none)
        self._reached = 1.0  # chance that every token drafted so far this round is accepted

    @property
    def needs_confidence(self) -> bool:
        """Whether the drafter should report each token's top-1 probability (see keep_drafting)."""
        return self.stop_on_confidence

    @property
    def propose_cost(self) -> CostCurve:
        return self.costs.propose

    @property
    def verify_cost(self) -> CostCurve:
        return self.costs.verify

    @property
    def hits(self) -> np.ndarray:
        """[max_block] decayed accepted counts by drafted position (the shared CostModel's)."""
        return self.costs.hits

    @property
    def trials(self) -> np.ndarray:
        """[max_block] decayed counts of rounds that reached each drafted position (the CostModel's)."""
        return self.costs.trials

    @property
    def acceptance(self) -> float:
        """Pooled per-token acceptance estimate (the geometric model's rate)."""
        num = self.hits.sum() + self.prior_weight * self.prior_acceptance
        return float(num / (self.trials.sum() + self.prior_weight))

    def acceptance_by_position(self) -> np.ndarray:
        """[max_block] chance that drafted token i + 1 is accepted given tokens 1..i were."""
        return (self.hits + self.prior_weight * self.acceptance) / (self.trials + self.prior_weight)

    def optimistic_acceptance(self) -> np.ndarray:
        """[max_block] acceptance_by_position raised by `optimism` standard errors (at most 1)."""
        a = self.acceptance_by_position()
        return np.minimum(a + self.optimism * np.sqrt(a * (1.0 - a) / (self.trials + self.prior_weight)), 1.0)

    def expected_tokens(self, k: int, optimistic: bool = False) -> float:
        """Tokens a round with block k is expected to commit (accepted drafts + the verifier's own)."""
        a = self.optimistic_acceptance() if optimistic else self.acceptance_by_position()
        return 1.0 + float(np.cumprod(a[:k]).sum())

    def expected_seconds(self, k: int) -> float:
        """Predicted wall time of a round with block k (propose k, verify k + 1)."""
        return (self.propose_cost(k) if k > 0 else 0.0) + self.verify_cost(k + 1)

    def rates(self, cap: int) -> list[float]:
        """[cap + 1] predicted committed tokens per second for k = 0..cap."""
        return [self.expected_tokens(k) / max(self.expected_seconds(k), 1e-9) for k in range(cap + 1)]

    def best(self, cap: int) -> int:
        """The k in 1..cap with the highest predicted rate (the shortest on ties), or 0 when not drafting
        beats it even with the optimistic acceptance estimate."""
        if cap == 0:
            return 0
        rates = self.rates(cap)
        k = 1 + int(np.argmax(rates[1:]))
        hopeful = self.expected_tokens(k, optimistic=True) / max(self.expected_seconds(k), 1e-9)
        return k if hopeful >= rates[0] else 0

    def next_block(self, limit: int) -> int:
        self._rate = 0.0  # warm-up rounds and probes are measurements: keep_drafting lets them run whole
        cap = _clamp(self.max_block, limit)
        if cap == 0:
            return self._asked(0)
        if self.verify_cost.rounds < 2 * len(self.warmup):
            return self._asked(min(self.warmup[self.verify_cost.rounds % len(self.warmup)], cap))
        cap = min(cap, self.reach)
        best = self.best(cap)
        if best == 0 and not self.can_pay(cap):
            gap = self.costs.hopeless_gap or self.hopeless_every
            self.costs.hopeless += 1
            if self.costs.hopeless < gap:
                return self._asked(0)
            self.costs.hopeless = 0
            self.costs.hopeless_gap = min(2 * gap, self.max_hopeless_every)
            return self._probe(cap)
        self.costs.hopeless, self.costs.hopeless_gap = 0, None
        if best == 0:
            self.zero_run += 1
            if self.zero_run < self.probe_every:
                return self._asked(0)
            self.zero_run = 0
            self.probe_every = min(2 * self.probe_every, self.max_probe_every)
            return self._probe(cap)
        self.zero_run = 0
        self.probe_every = self.explore_every
        self._rate = self.expected_tokens(best) / max(self.expected_seconds(best), 1e-9)
        self._reached = 1.0
        self.since_exploration += 1
        if self.since_exploration < self.explore_gap:
            return self._asked(best)
        if best == self.explored_around:  # settled: explore half as often
            self.explore_gap = min(2 * self.explore_gap, self.max_explore_every)
        else:
            self.explore_gap = self.explore_every
        self.explored_around = best
        self.since_exploration = 0
        self._step = -self._step
        k = _clamp(best + self._step, cap)
        if k == best:
            k = _clamp(best - self._step, cap)
        self.explorations += k != best
        return self._asked(k)

    def _probe(self, cap: int) -> int:
        """A block of probe_k tokens sent while not drafting wins, to measure acceptance and costs anew."""
        self.probes += 1
        return self._asked(min(self.probe_k, cap))

    def can_pay(self, cap: int) -> bool:
        """Whether some block of 1..cap tokens, every one accepted, would commit tokens faster than not
        drafting: if none would, only a change of costs, not of acceptance, can make drafting pay."""
        alone = 1.0 / max(self.expected_seconds(0), 1e-9)
        return any((k + 1) / max(self.expected_seconds(k), 1e-9) > alone for k in range(1, cap + 1))

    @property
    def reach(self) -> int:
        """Longest block considered: one more than the longest whose verification was measured twice (the
        cost curves are not extrapolated further; exploration extends the reach one token at a time)."""
        return max(self.verify_cost.measured() or self.verify_cost.samples)

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        """Over a drafter reporting confidence: go on while some longer block is expected to add tokens
        faster than this round's predicted rate (the marginal value of more drafting, with the tokens so
        far accepted with the calibrated chance of their top-1 and later ones with the positional
        estimates)."""
        block = self.k_asked
        if not self.stop_on_confidence or self._rate == 0.0 or drafted >= block:
            return True
        self._reached *= self.costs.calibration.estimate(top1)
        a = self.acceptance_by_position()[drafted:block]  # [m] the next positions' estimates
        more = self._reached * np.cumsum(np.cumprod(a))  # [m] expected extra tokens drafting 1..m more
        now = self.expected_seconds(drafted)
        extra = np.array([self.expected_seconds(drafted + m) - now for m in range(1, len(a) + 1)])
        return self._stop(bool(np.any(more - self._rate * extra > 0.0)))

    def observe(self, report: RoundReport) -> None:
        super().observe(report)
        self.costs.calibration.add(report.confidences[: report.proposed], report.accepted)
        if report.proposed > 0:
            reached = min(report.accepted + 1, report.proposed, self.max_block)  # later ones: unobserved
            self.hits[:] *= self.memory
            self.trials[:] *= self.memory
            self.trials[:reached] += 1
            self.hits[: min(report.accepted, reached)] += 1
            self.propose_cost.add(report.proposed, report.propose_seconds)
        self.verify_cost.add(report.proposed + 1, report.verify_seconds)

    def summary(self) -> dict[str, object]:
        c0, c1 = self.propose_cost.coef
        v0, v1 = self.verify_cost.coef
        return {
            **super().summary(),
            "max_block": self.max_block,
            "acceptance_estimate": self.acceptance,
            "acceptance_by_position": [round(float(a), 4) for a in self.acceptance_by_position()],
            "propose_cost": {"c0": c0, "c1": c1, "rounds": self.propose_cost.rounds},  # seconds, s/token
            "verify_cost": {"v0": v0, "v1": v1, "rounds": self.verify_cost.rounds},  # seconds, s/token
            "verify_seconds_per_token": {  # verify(n) / n by batch length n: what batching buys
                str(n): self.verify_cost(n) / n for n in range(1, self.max_block + 2)
            },
            "best_k": self.best(self.max_block) if self.verify_cost.samples else None,
            "probes": self.probes,
            "can_pay": self.can_pay(min(self.max_block, self.reach)) if self.verify_cost.samples else None,
            "explorations": self.explorations,
            **({"calibration": self.costs.calibration.table()} if self.stop_on_confidence else {}),
        }


# --- CLI specs --------------------------------------------------------------------------------------

_NAMES = ("fixed", "pmin", "entropy", "cumulative", "goodput")


def _number(spec: str, text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(
            f"invalid lookahead {spec!r}: {text!r} is not {'an integer' if kind is int else 'a number'} "
            f"(expected {LOOKAHEAD_HELP})"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"invalid lookahead {spec!r}: {text!r} is not a finite number")
    return value


def parse_lookahead(spec: str) -> Callable[[], Lookahead]:
    """A factory of fresh policies (one per generation) from a CLI string: `fixed:K`, `pmin:P`,
    `entropy:H`, `cumulative:H`, `goodput`; the threshold policies and goodput take an optional `:MAX`
    (longest block). A bare name uses the defaults. Goodput policies from one factory share one CostModel.
    Raises ConfigError with a one-line message on anything else."""
    name, *args = spec.strip().lower().split(":")
    if name not in _NAMES:
        raise ConfigError(f"unknown lookahead {spec!r}: expected {LOOKAHEAD_HELP}")
    most = {"fixed": 1, "goodput": 1}.get(name, 2)
    if len(args) > most:
        raise ConfigError(f"invalid lookahead {spec!r}: too many ':' fields (expected {LOOKAHEAD_HELP})")
    kwargs: dict[str, float | int] = {}
    if name == "fixed" and args:
        kwargs["k"] = _number(spec, args[0], int)
    elif name == "goodput" and args:
        kwargs["max_block"] = _number(spec, args[0], int)
    elif args:
        kwargs[{"pmin": "p_min", "entropy": "h", "cumulative": "h"}[name]] = _number(spec, args[0], float)
        if len(args) == 2:
            kwargs["max_block"] = _number(spec, args[1], int)
    cls: type = {"fixed": Fixed, "pmin": Confidence, "entropy": Entropy, "cumulative": Cumulative}.get(
        name, Goodput
    )
    try:
        first = cls(**kwargs)  # validate now, not at the first generation
    except ConfigError as e:
        raise ConfigError(f"invalid lookahead {spec!r}: {e}") from None
    if isinstance(first, Goodput):
        kwargs["costs"] = first.costs  # shared by every policy this factory makes
    return lambda: cls(**kwargs)
