"""Adaptive lookahead: how many tokens the proposer below a verifier drafts next round, and when to stop.

Pure Python/numpy, no model. A policy answers three questions for one verifier stage, and hears when
the generation ends:

    next_block(limit, lag)   before a round: ask the proposer for k tokens, 0 <= k <= limit
                             (0 = no speculation this round: the verifier decodes one token alone); the
                             proposer lacks `lag` tokens of the sequence (more than ROUND_LAG: drafting
                             first costs it a catch-up decode);
    keep_drafting(i, p, H)   inside a model drafter's loop, after its i-th token (1-based) with top-1
                             probability p and entropy H (nats): False stops the block there, and the
                             token just drafted is kept;
    observe(report)          after the round: what was proposed, accepted, and what it cost;
    finish(generated)        once, when the generation ended with `generated` new tokens.

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
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_spec.errors import ConfigError

# The default policy; its measurements against the fixed lengths are in bench/README.md.
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
    shared: int = 0  # tokens of other sequences in the verifier's decode (decoded together by the engine)
    catch_up_tokens: int = 0  # tokens the proposer lacked when it caught up before proposing (0: it did not)
    catch_up_seconds: float = 0.0  # wall time of that catch-up (before, and not in, propose_seconds)

    def __post_init__(self) -> None:
        if self.requested < 0 or self.proposed < 0 or not 0 <= self.accepted <= self.proposed:
            raise ValueError(
                f"need requested >= 0 and 0 <= accepted <= proposed, got requested={self.requested}, "
                f"proposed={self.proposed}, accepted={self.accepted}"
            )
        if self.catch_up_tokens < 0 or (self.catch_up_tokens > 0 and self.requested == 0):
            raise ValueError(
                "a catch-up has tokens >= 0 and comes before a proposal, got "
                f"catch_up_tokens={self.catch_up_tokens}, requested={self.requested}"
            )
        times = (self.propose_seconds, self.verify_seconds, self.catch_up_seconds)
        if not all(t >= 0.0 for t in times):  # also rejects NaN
            raise ValueError(
                f"round times must be >= 0, got propose={self.propose_seconds}, "
                f"verify={self.verify_seconds}, catch_up={self.catch_up_seconds}"
            )


@runtime_checkable
class Lookahead(Protocol):
    """A block-length policy for one verifier stage (see the module docstring)."""

    name: str
    needs_confidence: bool  # whether keep_drafting reads top1/entropy (the drafter then computes a softmax)

    def next_block(self, limit: int, lag: int = 0) -> int:
        """Tokens to ask for this round, 0..limit (0 = no speculation: the verifier decodes alone); the
        proposer lacks `lag` tokens of the sequence (only goodput weighs them)."""
        ...

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        """After the `drafted`-th token (1-based): False = stop the block here (that token is kept)."""
        ...

    def observe(self, report: RoundReport) -> None:
        """Learn from the round just verified."""
        ...

    def finish(self, generated: int) -> None:
        """The generation ended, `generated` new tokens long (called once, by whoever runs it)."""
        ...

    def summary(self) -> dict[str, object]:
        """Final estimates for JSON stats (plain floats/ints/lists/dicts)."""
        ...


@dataclass(frozen=True)
class Load:
    """The other sequences decoded in the same steps as this one (`edge_spec.engine` sets it each round):
    how many, and the tokens they committed per round together (a recent average)."""

    others: int = 0
    committed: float = 0.0


ALONE = Load()


@dataclass(frozen=True)
class Progress:
    """Where the generation stands (`pyramid.Verifier.round` sets it before each round): tokens produced
    so far, and at most how many it may still produce (None: the round's limit + 1; a stage that proposes
    to another gets the top stage's, since its own limit is only the block asked of it)."""

    produced: int = 0
    most: int | None = None


ROUND_LAG = 2
"""Tokens a model proposer lacks at the start of a round when every round speculates: its last drafted
token (never decoded) and the verifier's own token. More means it sat out rounds (lookahead 0), or has
not read the prompt yet, and must catch up before drafting (`proposers.catch_up`)."""


def _clamp(k: int, limit: int) -> int:
    return max(0, min(k, limit))


class _Policy:
    """What every policy reports of itself: its name and how often keep_drafting stopped a block. The
    stage's counts (rounds, tokens, block lengths) are the loop's, in `stats.StageStats`."""

    name = "?"

    def __init__(self) -> None:
        self.early_stops = 0  # times keep_drafting returned False
        self.load = ALONE  # what the sequences decoded together with this one put into each step
        self.progress = Progress()  # how far the generation got (set by the verifier each round)

    def _stop(self, keep: bool) -> bool:
        self.early_stops += not keep
        return keep

    def observe(self, report: RoundReport) -> None:
        """Nothing to learn (policies that learn override this)."""

    def finish(self, generated: int) -> None:
        """Nothing to learn from a generation's length (goodput overrides this)."""

    def summary(self) -> dict[str, object]:
        return {"policy": self.name, "early_stops": self.early_stops}


def _check_max_block(max_block: int) -> None:
    if not (isinstance(max_block, int) and max_block >= 1):
        raise ConfigError(f"lookahead max block must be an integer >= 1, got {max_block!r}")


class Fixed(_Policy):
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

    def next_block(self, limit: int, lag: int = 0) -> int:
        return _clamp(self.k, limit)

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        return True

    def summary(self) -> dict[str, object]:
        fallback = {"fallback_for": self.fallback_for} if self.fallback_for else {}
        return {**super().summary(), "k": self.k, **fallback}


BLIND_K = 3
"""Block length of a confidence policy over a proposer without confidences (the best fixed length of the
sweep in bench/README.md)."""


def fit_to_proposer(policy: Lookahead, confident: bool) -> Lookahead:
    """The policy to use over a proposer that does (`confident`) or does not report per-token confidence.
    pmin, entropy and cumulative stop a block on the drafter's confidence; over an n-gram or a qualifier,
    which report none, they would always ask for their longest block, so they become Fixed(BLIND_K).
    Goodput stays itself and reads confidence where there is some (`Goodput.stop_on_confidence`); Choose
    fits each candidate's goodput when it is attached to its candidates (`Choose.attach`)."""
    if isinstance(policy, Goodput):
        policy.stop_on_confidence = confident
    elif policy.needs_confidence and not confident:
        return Fixed(BLIND_K, fallback_for=policy.name)
    return policy


class Confidence(_Policy):
    """Ask for max_block tokens; stop as soon as the drafter's top-1 probability falls below p_min, keeping
    that token. As llama.cpp's draft loop (`common/speculative.cpp`: push the token, then break when
    `cur_p->data[0].p < params.p_min`)."""

    name = "pmin"
    needs_confidence = True

    def __init__(self, p_min: float = 0.75, max_block: int = 16) -> None:
        super().__init__()
        if not 0.0 <= p_min <= 1.0:
            raise ConfigError(f"p_min must be in [0, 1], got {p_min!r}")
        _check_max_block(max_block)
        self.p_min = p_min  # stop after the first drafted token whose top-1 probability is below this
        self.max_block = max_block  # longest block asked for

    def next_block(self, limit: int, lag: int = 0) -> int:
        return _clamp(self.max_block, limit)

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        return self._stop(top1 >= self.p_min)

    def summary(self) -> dict[str, object]:
        return {**super().summary(), "p_min": self.p_min, "max_block": self.max_block}


class Entropy(_Policy):
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

    def next_block(self, limit: int, lag: int = 0) -> int:
        return _clamp(self.max_block, limit)

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


def _counts(state: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hits [n], trials [n]) read from a `state()` dict; ValueError unless 0 <= hits <= trials."""
    hits, trials = np.asarray(state["hits"], dtype=float), np.asarray(state["trials"], dtype=float)
    if (
        hits.shape != (n,)
        or trials.shape != (n,)
        or not (np.all(hits >= 0) and np.all(hits <= trials + 1e-9))
    ):
        raise ValueError(f"bad acceptance counts (expected {n} of each, 0 <= hits <= trials)")
    return hits, trials


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

    def state(self) -> dict[str, list[float]]:
        return {"hits": self.hits.tolist(), "trials": self.trials.tolist()}

    def restore(self, state: dict) -> None:
        self.hits, self.trials = _counts(state, self.bins)

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


class Cumulative(_Policy):
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

    def next_block(self, limit: int, lag: int = 0) -> int:
        self.product = 1.0
        return _clamp(self.max_block, limit)

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        if drafted <= 1:
            self.product = 1.0
        self.product *= self.calibration.estimate(top1)
        return self._stop(1.0 - self.product <= self.h)

    def observe(self, report: RoundReport) -> None:
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

    Batch costs are not linear (llama.cpp's repacked kernels work in tiles of rows: on a 2-core CPU a batch
    of 4 verified faster than one of 3), so a length measured at least twice costs a low quantile
    (`quantile`) of its observations. Disturbances (CPU steal, other processes, page faults) only ever add
    time, so, as with timeit's minimum, the faster observations are the machine's cost: a length that a
    burst of steal made look slow in 5 of its 8 latest rounds keeps its cost, and is not shunned until it
    happens to be measured again.

    Observations also age: the context grows during a generation and shrinks at the next prompt, and a
    shared machine slows down and speeds up, while a length that only exploration visits is observed every
    8 to 64 rounds. Its last 8 observations then date from other conditions than those of the length in
    use, and compared as measured, the stale cost would decide the choice. So when a length is observed,
    its observations from more than `max_age` rounds ago are dropped, all but the newest when fewer than 2
    would remain, and the quantile is the lower order statistic: a length seen now and then costs the lower
    of its last two observations, so one fresh observation corrects a stale cost that is too high, and
    one slowed by a burst does not spoil it; a stale cost that is too low gets the length chosen, and
    measured, again.

    Other lengths read a line y ~ b0 + b1 * x (both >= 0) fitted through the measured
    lengths' costs, weighted by their counts. With a single length the slope is not identifiable: `flat`
    decides the fallback (True: b1 = 0, b0 = that cost, a cost independent of length; False: b0 = 0,
    b1 = cost / x, a cost per item).

    A curve over lengths that rarely repeat (a catch-up's, which is as long as a prompt) keeps at most
    `lengths` of them, those observed last."""

    quantile = 0.25  # of a length's recent observations (the lower order statistic), taken as its cost
    max_age = 32  # rounds of this curve after which a length's observations count as stale

    def __init__(self, per_length: int, flat: bool, lengths: int | None = None) -> None:
        self.per_length = per_length  # observations kept at each length (the most recent)
        self.flat = flat
        self.lengths = lengths  # most lengths kept (those observed last); None: every one
        self.samples: dict[int, deque[tuple[int, float]]] = {}  # length -> recent (round, seconds)
        self.cost_at: dict[int, float] = {}  # length -> the quantile of its samples, refreshed by add()
        self.rounds = 0  # observations ever added
        self.coef = (0.0, 0.0)  # (b0, b1), refreshed by add()

    def add(self, x: int, y: float) -> None:
        ys = self.samples.setdefault(x, deque(maxlen=self.per_length))
        ys.append((self.rounds, float(y)))
        while len(ys) > 2 and ys[0][0] < self.rounds - self.max_age:
            ys.popleft()
        self.cost_at[x] = self._quantile(ys)
        self._forget_oldest_lengths()
        self.rounds += 1
        self.coef = self._fit()

    def _forget_oldest_lengths(self) -> None:
        """Keep the `lengths` lengths observed last (all when it is None)."""
        if self.lengths is None:
            return
        for x in sorted(self.samples, key=lambda v: self.samples[v][-1][0])[: -self.lengths]:
            del self.samples[x], self.cost_at[x]

    def _quantile(self, ys: deque[tuple[int, float]]) -> float:
        return float(np.quantile([t for _, t in ys], self.quantile, method="lower"))

    def identified(self) -> bool:
        return len(self.samples) >= 2

    def state(self) -> dict[str, object]:
        """The observations as plain JSON values (`restore` reads them back)."""
        return {"rounds": self.rounds, "samples": {str(x): list(ys) for x, ys in self.samples.items()}}

    def restore(self, state: dict) -> None:
        """Take the observations of `state()`; raises ValueError on anything malformed."""
        rounds = state["rounds"]
        if not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"bad round count {rounds!r}")
        samples: dict[int, deque[tuple[int, float]]] = {}
        for x, ys in state["samples"].items():
            pairs = [(int(r), float(t)) for r, t in ys]
            if int(x) < 0 or not pairs or any(not (0 <= r < rounds and 0.0 <= t < 1e6) for r, t in pairs):
                raise ValueError(f"bad observations at length {x}")
            samples[int(x)] = deque(pairs[-self.per_length :], maxlen=self.per_length)
        self.samples, self.rounds = samples, rounds
        self.cost_at = {
            x: float(np.quantile([t for _, t in ys], self.quantile, method="lower"))
            for x, ys in samples.items()
        }
        self._forget_oldest_lengths()
        self.coef = self._fit() if self.samples else (0.0, 0.0)

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


# Goodput's settings that no interface reaches (read when used: tests override them by monkeypatching).
# The pairs are the first and the longest interval of a Backoff, in rounds.
WARMUP = (3, 0, 2, 4)  # block lengths of a Measurements' first rounds, in turn, twice over
EXPLORE = (8, 64)  # drafting rounds between tries of the best k +- 1
PROBES = (8, 64)  # rounds of k = 0 between probes while drafting could pay
CANNOT_PAY = (256, 4096)  # rounds between probes while no block can pay (counted across generations)
PROBE_K = 4  # block length of a probe
MEMORY = 0.9  # per-round decay of the acceptance evidence (about the last 10 rounds)
PRIOR_ACCEPTANCE = 0.6  # per-token acceptance assumed before any proposal is verified
PRIOR_WEIGHT = 2.0  # pseudo-observations behind that prior
OPTIMISM = 1.0  # standard errors added to the acceptance estimates when deciding whether to draft at all
PER_LENGTH = 8  # observations a cost curve keeps per length
SWITCH = (16, 256)  # rounds of the best candidate between tries of another one (Choose)
CATCH_UP_LENGTHS = 16  # lengths the catch-up cost curve keeps (those observed last)
LENGTH_MEMORY = 0.75  # per-generation decay of the average generated length (about the last 4 weigh in)
LEFT_FLOOR = 16  # tokens still expected of a generation that already ran past the average length
REALIZED_MEMORY = 0.8  # per-round decay of each kind's realized sums (about its last 5 rounds weigh in)
VETO_ROUNDS = 3.0  # rounds of evidence (faded alike) each kind needs before the realized rates may veto


class Backoff:
    """A doubling interval: `due()`, called once a round, is true every `gap` rounds, the gap starting at
    `first` and doubling (up to `most`) each time it is; `restart()` returns to the first gap and counts
    anew."""

    def __init__(self, first: int, most: int) -> None:
        if not (isinstance(first, int) and isinstance(most, int) and 1 <= first <= most):
            raise ConfigError(f"a back-off needs integers 1 <= first <= most, got {first!r} and {most!r}")
        self.first, self.most = first, most
        self.gap = first  # rounds from one due round to the next
        self.count = 0.0  # rounds counted since the last due round or restart

    def due(self, weight: float = 1.0) -> bool:
        """Count a round (`weight` of one: a schedule shared by sequences decoded together counts steps,
        each of its rounds 1 / the sequences in the step)."""
        self.count += weight
        if self.count < self.gap:
            return False
        self.count, self.gap = 0.0, min(2 * self.gap, self.most)
        return True

    def restart(self) -> None:
        self.gap, self.count = self.first, 0.0

    def state(self) -> list[float]:
        return [self.gap, self.count]

    def restore(self, state: list) -> None:
        gap, count = int(state[0]), float(state[1])
        if not (self.first <= gap <= self.most and 0 <= count < gap):
            raise ValueError(f"bad back-off state {state!r}")
        self.gap, self.count = gap, count


class CostModel:
    """Seconds of a round by block length k, measured on this machine: propose(k) for k > 0 proposed tokens
    and verify(n) for a decode of n tokens, other sequences' included (`CostCurve`s of the last PER_LENGTH
    rounds at each length)."""

    def __init__(self) -> None:
        self.propose = CostCurve(PER_LENGTH, flat=False)  # seconds ~ c0 + c1 * proposed, proposed > 0
        self.verify = CostCurve(PER_LENGTH, flat=True)  # seconds ~ v0 + v1 * (proposed + 1)

    def add(self, report: RoundReport) -> None:
        if report.proposed > 0:
            self.propose.add(report.proposed, report.propose_seconds)
        self.verify.add(report.proposed + 1 + report.shared, report.verify_seconds)

    def seconds(self, k: int, shared: int = 0) -> float:
        """Predicted wall time of a round with block k (propose k, verify k + 1 with `shared` tokens of other
        sequences in the same decode; propose(0) = 0)."""
        return (self.propose(k) if k > 0 else 0.0) + self.verify(k + 1 + shared)

    @property
    def reach(self) -> int:
        """Longest block considered: one more than the longest whose verification was measured twice (the
        curves are not extrapolated further; exploration extends the reach one token at a time)."""
        return max(self.verify.measured() or self.verify.samples)


class Acceptance:
    """Acceptance evidence by drafted position and the estimates read from it. A round with a proposal
    fades the counts by MEMORY, then counts the positions it reached (the accepted ones and the first
    rejection; later ones are unobserved) and those accepted. The pooled ratio, shrunk to PRIOR_ACCEPTANCE
    with weight PRIOR_WEIGHT, is the geometric model's one per-token rate a (Leviathan et al. 2023); each
    position's own ratio is shrunk to that a, so the estimates learn where acceptance is not geometric (an
    n-gram's first token is the risk, the tokens after a correct one mostly follow)."""

    def __init__(self, max_block: int) -> None:
        self.hits = np.zeros(max_block)  # [max_block] decayed accepted counts by drafted position
        self.trials = np.zeros(max_block)  # [max_block] decayed counts of rounds reaching each position

    def add(self, proposed: int, accepted: int) -> None:
        if proposed == 0:  # nothing proposed: no evidence, no fading
            return
        reached = min(accepted + 1, proposed, len(self.trials))
        self.hits *= MEMORY
        self.trials *= MEMORY
        self.trials[:reached] += 1
        self.hits[: min(accepted, reached)] += 1

    @property
    def pooled(self) -> float:
        """The geometric model's per-token rate a."""
        num = self.hits.sum() + PRIOR_WEIGHT * PRIOR_ACCEPTANCE
        return float(num / (self.trials.sum() + PRIOR_WEIGHT))

    def by_position(self) -> np.ndarray:
        """[max_block] chance that drafted token i + 1 is accepted given tokens 1..i were."""
        return (self.hits + PRIOR_WEIGHT * self.pooled) / (self.trials + PRIOR_WEIGHT)

    def optimistic(self) -> np.ndarray:
        """[max_block] by_position raised by OPTIMISM standard errors (at most 1)."""
        a = self.by_position()
        return np.minimum(a + OPTIMISM * np.sqrt(a * (1.0 - a) / (self.trials + PRIOR_WEIGHT)), 1.0)

    def expected_tokens(self, k: int, optimistic: bool = False) -> float:
        """Tokens a round with block k is expected to commit: 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k."""
        a = self.optimistic() if optimistic else self.by_position()
        return 1.0 + float(np.cumprod(a[:k]).sum())

    def state(self) -> dict[str, list[float]]:
        return {"hits": self.hits.tolist(), "trials": self.trials.tolist()}

    def restore(self, state: dict) -> None:
        self.hits, self.trials = _counts(state, len(self.trials))


def _amounts(state: object, n: int) -> list[float]:
    """n finite, non-negative numbers read from a `state()` list; ValueError otherwise."""
    if not isinstance(state, list) or len(state) != n:
        raise ValueError(f"expected a list of {n} numbers, got {state!r}")
    values = [float(v) for v in state]
    if not all(0.0 <= v < 1e12 for v in values):  # also rejects NaN and infinities
        raise ValueError(f"expected finite numbers >= 0, got {state!r}")
    return values


class Lengths:
    """How long generations run: an average of their generated tokens that fades by LENGTH_MEMORY per
    generation."""

    def __init__(self) -> None:
        self.weight = 0.0  # generations behind the average, faded
        self.total = 0.0  # their generated tokens, faded alike

    def add(self, generated: int) -> None:
        self.weight = LENGTH_MEMORY * self.weight + 1.0
        self.total = LENGTH_MEMORY * self.total + float(generated)

    @property
    def mean(self) -> float | None:
        """The average generated length, None before any generation ended."""
        return self.total / self.weight if self.weight > 0.0 else None

    def state(self) -> list[float]:
        return [self.weight, self.total]

    def restore(self, state: object) -> None:
        self.weight, self.total = _amounts(state, 2)


class Realized:
    """What rounds realized, the check on every cost estimate: tokens and wall seconds of the rounds the
    rule drafted in (the tokens it expected of them, see Goodput) and of the rounds that did not draft,
    each kind's sums fading by REALIZED_MEMORY per round of that kind, with their count of rounds (faded
    alike)."""

    def __init__(self) -> None:
        self.drafting = np.zeros(3)  # [tokens, seconds, rounds] of rounds the rule drafted in
        self.plain = np.zeros(3)  # [tokens, seconds, rounds] of rounds of k = 0
        self.trial = False  # the drafting evidence was dropped (`retry`) and has not built up again

    def add(self, drafted: bool, tokens: float, seconds: float) -> None:
        sums = self.drafting if drafted else self.plain
        sums *= REALIZED_MEMORY
        sums += (tokens, seconds, 1.0)
        if drafted and sums[2] >= VETO_ROUNDS:
            self.trial = False

    def charge(self, seconds: float) -> None:
        """Add to the drafting rounds' seconds (a catch-up that the rounds after it did not pay off)."""
        self.drafting[1] += seconds

    def rate(self, drafted: bool) -> float | None:
        """Tokens per second that kind of round realized; None before VETO_ROUNDS rounds of evidence."""
        tokens, seconds, rounds = self.drafting if drafted else self.plain
        return float(tokens / max(seconds, 1e-9)) if rounds >= VETO_ROUNDS else None

    @property
    def vetoes(self) -> bool:
        """Whether drafting rounds realized fewer tokens per second than rounds without drafting."""
        drafting, plain = self.rate(True), self.rate(False)
        return drafting is not None and plain is not None and drafting < plain

    def retry(self) -> None:
        """Drop the drafting evidence: the rule's next drafting rounds are measured afresh."""
        self.drafting = np.zeros(3)
        self.trial = True

    def state(self) -> dict[str, object]:
        return {"drafting": self.drafting.tolist(), "plain": self.plain.tolist(), "trial": self.trial}

    def restore(self, state: dict) -> None:
        drafting, plain, trial = _amounts(state["drafting"], 3), _amounts(state["plain"], 3), state["trial"]
        if not isinstance(trial, bool):
            raise ValueError(f"bad trial flag {trial!r}")
        self.drafting, self.plain, self.trial = np.array(drafting), np.array(plain), trial


class Measurements:
    """What a stage measures that belongs to the machine and the pair of models more than to one
    generation: the costs, the acceptance evidence, the calibration by the drafter's top-1, the probe
    back-offs (their rounds count across generations), the catch-up costs, how long generations run, and
    the realized rates. A pyramid's generations share one (through parse_lookahead's factory): each starts
    where the last one ended, without a warm-up, and the evidence keeps fading per round, so a new kind of
    prompt outweighs the last one within about ten rounds. `state()` / `restore()` carry them to the next
    process (`edge_spec.calibration`).

    The catch-up cost (`catch_up`) is a curve of seconds by the tokens the proposer lacked, a
    CostCurve(PER_LENGTH, flat=False) over the CATCH_UP_LENGTHS lengths observed last. A catch-up is one
    batched decode of what the proposer lacks, a prefill, whose cost grows about linearly with its tokens
    from an intercept (one pass over the weights): the curve's line through its measured lengths has both.
    Its lengths are as varied as prompts, so the line decides most predictions; while a single length
    is known (the first prompt's), a cost per token (flat=False) extrapolates to a catch-up of a few tokens
    after a pause far better than a flat cost, which would charge it the whole prompt's."""

    def __init__(self, max_block: int) -> None:
        self.max_block = max_block  # longest block the acceptance evidence covers
        self.costs = CostModel()
        self.acceptance = Acceptance(max_block)
        self.calibration = Calibration()  # acceptance by the drafter's top-1 (a model drafter's rounds)
        self.cannot_pay = Backoff(*CANNOT_PAY)  # rounds between probes while no block can pay
        self.probing = Backoff(*PROBES)  # rounds of k = 0 between probes while drafting could pay
        self.catch_up = CostCurve(PER_LENGTH, flat=False, lengths=CATCH_UP_LENGTHS)  # seconds by lag
        self.lengths = Lengths()  # tokens per generation
        self.realized = Realized()  # tokens per second of rounds that drafted and of rounds that did not

    def state(self) -> dict[str, object]:
        """Everything measured, as plain JSON values."""
        return {
            "propose": self.costs.propose.state(),
            "verify": self.costs.verify.state(),
            "acceptance": self.acceptance.state(),
            "calibration": self.calibration.state(),
            "cannot_pay": self.cannot_pay.state(),
            "probing": self.probing.state(),
            "catch_up": self.catch_up.state(),
            "lengths": self.lengths.state(),
            "realized": self.realized.state(),
        }

    def restore(self, state: dict) -> None:
        """Take what `state()` gave, all or nothing: raises ValueError, KeyError or TypeError on anything
        malformed, leaving these measurements as they were. A state saved before catch-ups, lengths and
        realized rates were measured (no such key) restores them empty."""
        fresh = Measurements(self.max_block)
        fresh.costs.propose.restore(state["propose"])
        fresh.costs.verify.restore(state["verify"])
        fresh.acceptance.restore(state["acceptance"])
        fresh.calibration.restore(state["calibration"])
        fresh.cannot_pay.restore(state["cannot_pay"])
        fresh.probing.restore(state["probing"])
        if "catch_up" in state:
            fresh.catch_up.restore(state["catch_up"])
        if "lengths" in state:
            fresh.lengths.restore(state["lengths"])
        if "realized" in state:
            fresh.realized.restore(state["realized"])
        self.__dict__.update(fresh.__dict__)

    def add(self, report: RoundReport) -> None:
        """Learn from one verified round."""
        self.calibration.add(report.confidences[: report.proposed], report.accepted)
        self.acceptance.add(report.proposed, report.accepted)
        self.costs.add(report)
        if report.catch_up_tokens > 0:
            self.catch_up.add(report.catch_up_tokens, report.catch_up_seconds)


@dataclass
class _Round:
    """The round under way, as keep_drafting and observe read it (next_block sets it)."""

    block: int = 0  # tokens asked for
    rate: float | None = None  # the rule's predicted tokens/s for this round; None: a measurement, run whole
    reached: float = 1.0  # chance that every token drafted so far this round is accepted
    plain: float = 0.0  # the rule's predicted tokens/s without drafting, when it chose this round
    left: int = 1  # tokens the generation was expected still to produce when this round was chosen


class Goodput(_Policy):
    """SmartSpec (Liu et al. 2024) / SpecServe (Huang et al. 2025). The rule: ask for the block length k in
    0..max_block (and the limit) with the most expected committed tokens per second,

        rate(k) = (1 + a_1 + a_1 a_2 + ... + a_1 ... a_k)  /  (propose(k) + verify(k + 1)),

    a_i the chance that the i-th drafted token is accepted given the ones before it were (`Acceptance`),
    the costs measured on this machine (`CostModel`), propose(0) = 0. The length is the best rate's among
    1..reach (the shortest on ties; `reach`: one past the longest block whose verification was measured
    twice); k = 0 (no speculation) when not drafting beats it even with optimistic acceptance estimates
    (a_i + OPTIMISM standard errors: a few rejections must not stop drafting on thin evidence, after which
    nothing is learnt until the next probe).

    Catch-up. A proposer that lacks more than ROUND_LAG tokens of the sequence (`lag`: a model draft that
    sat out rounds or has not read the prompt yet) first decodes them in one batch, catch_up(lag) seconds
    (measured, `Measurements.catch_up`), after which rounds that keep drafting owe nothing more. So the
    rule's k > 0 is asked for only when the time it saves over the tokens still to come repays that:

        left  = min(limit + 1, max(average length - produced, produced, LEFT_FLOOR))
        saved = left * (seconds(0) - seconds(k) / (1 + a_1 + a_1 a_2 + ... + a_1 ... a_k))
        k > 0 only if saved > catch_up(lag), else k = 0

    left estimating the tokens still to come: generations often end (end of generation) long before
    their limit, so by the average generated length (fading by LENGTH_MEMORY per generation; `finish`
    reports each one's), less the tokens this one produced; one that ran past the average is expected to
    go on about as long as it already has (lengths are heavy-tailed), and at least LEFT_FLOOR tokens.
    Before any generation ended, left = limit + 1; a stage that proposes to another takes the top stage's
    limit (`progress`). seconds(k) / expected tokens is this sequence's seconds per token at block k
    (1 / rate(k) when it is decoded alone).

    Realized rates (`Realized`), the check on every cost estimate. Rounds without drafting count their
    token over their seconds; rounds the rule drafted in expecting a gain (by its mean estimates) count
    the tokens those estimates expected of the proposal over their wall seconds: propose + verify + their
    share of the catch-up; beside other sequences, both kinds add the tokens the others commit in the
    step (`load`), so the rates are the batch's. Each kind's sums fade by REALIZED_MEMORY per round of
    that kind. Once both kinds have VETO_ROUNDS rounds of evidence and the drafting rounds realized fewer
    tokens per second, the rule is vetoed: k = 0, as where no block can pay, until the cannot-pay
    back-off comes due; then the drafting evidence is dropped and the rule drafts again, measured afresh
    (a trial).

    A catch-up is charged over the tokens it was paid for, not to the one round that paid it: each round
    after it owes a share of what is still unpaid, in proportion to the tokens it commits out of the
    tokens `left`; drafting rounds add theirs to their seconds, the others' is forgiven (drafting stopped
    for its acceptance), and what the generation's end leaves unpaid goes to the drafting rounds then
    (the generation ended before the catch-up was repaid). Expected rather than committed tokens, since
    committed ones bring acceptance luck into a check of costs, and a bias: the rule's drafting runs end
    on rejections (it stops after bad news), so over the few rounds a veto can wait for they vetoed
    drafts that pay; acceptance has its own evidence and probes. For the same reason the rounds drafted
    on the optimistic estimates alone stay out, as do the measurement rounds (warm-up, probes), whose
    catch-ups after pauses are the price of measuring.

    Schedules, the rounds that measure instead of following the rule; all but the warm-up are a `Backoff`,
    an interval that doubles (up to its longest) each time it comes due and restarts when its case ends;
    those counted across generations count steps (beside others, a round is 1 / the sequences in it):

    - warm-up: a Measurements' first 2 * len(WARMUP) rounds ask for the WARMUP lengths in turn, so that
      k = 0 and a few blocks are measured before any is chosen on a guess (catch-ups included);
    - cannot pay: where no block would beat not drafting even with every drafted token accepted
      (`can_pay` False: verification costs about as much per token as decoding alone), only a change of
      costs can help: k = 0, and a probe of PROBE_K tokens every CANNOT_PAY rounds, counted across the
      generations of the Measurements, catch-up or not (rare enough that a probe's catch-up costs little
      overall). The same back-off times the veto's trials, and the probes whose catch-up what they might
      find could not repay over the tokens left (the rule above with every a_i = 1 where the estimates
      stop drafting, with the optimistic a_i where only the catch-up does). It restarts when the rule
      drafts (outside a trial);
    - probes: otherwise, while the rule does not draft (k = 0 wins, or its gain does not repay the
      catch-up) but drafting could pay, a probe of PROBE_K tokens every PROBES rounds of k = 0 (counted
      across generations too), since the acceptance estimates only move on proposals; a round of the
      rule restarts it;
    - exploration: every EXPLORE drafting rounds, the best k +- 1 (alternately), so the costs stay measured
      around it, or k = 0 where drafting realized less than rate(0) while too few rounds without
      drafting were realized to tell (the veto's evidence); the interval restarts when the best k moved
      since the last exploration.

    Over a drafter that reports each token's top-1 probability (`stop_on_confidence`, set by
    fit_to_proposer), keep_drafting also stops a block of the rule early: after each token, drafting goes
    on while some longer block is expected to add tokens faster than the round's predicted rate, the
    tokens so far counting with their calibrated acceptance (`Calibration`), later ones with the
    positional estimates. Measurement rounds run whole.

    Under load (several sequences decoded together, `load` set by the engine each round), the rule weighs
    the batch's goodput: the others' committed tokens join the numerator, and a round's seconds are the
    step's (`seconds`): this block's drafting and one verification of every sequence's tokens.
    Verification costs are measured by the decode's total tokens, so as the batch grows, a block's
    marginal cost grows with it and the best k falls, to 0 once the batch alone fills what a decode can do
    cheaply (SmartSpec's observation). A catch-up stalls the whole step and a block slows the others'
    tokens, so what drafting must repay a catch-up with is the batch's saving (`saving`). The measurements
    behind these settings are in bench/README.md."""

    name = "goodput"

    def __init__(self, max_block: int = 16, measurements: Measurements | None = None) -> None:
        super().__init__()
        _check_max_block(max_block)
        self.max_block = max_block  # longest block considered
        self.measurements = measurements if measurements is not None else Measurements(max_block)
        if self.measurements.acceptance.hits.shape != (max_block,):
            raise ConfigError(f"goodput max_block {max_block} differs from its shared measurements'")
        self.exploring = Backoff(*EXPLORE)  # drafting rounds between explorations
        self.explored_around: int | None = None  # the best k at the last exploration
        self._step = 1  # direction of the last exploration step
        self.probes = 0  # probes sent (either back-off)
        self.explorations = 0  # rounds moved off the best k
        self.declined = 0  # rounds the rule would have drafted in but for the catch-up
        self.owed = 0.0  # seconds of the rule's catch-ups not yet charged to its drafting rounds
        self.stop_on_confidence = False  # set by fit_to_proposer over a drafter that reports confidence
        self.round = _Round()

    @property
    def needs_confidence(self) -> bool:
        """Whether the drafter should report each token's top-1 probability (see keep_drafting)."""
        return self.stop_on_confidence

    def seconds(self, k: int) -> float:
        """Predicted wall time of a round with block k: decoded together with other sequences (`load`), the
        step that verifies their tokens too, each counted at one token (the others' own blocks are being
        chosen in the same step; weighing each block against a step without them keeps one sequence's
        drafting from making drafting look cheap to the others)."""
        return self.measurements.costs.seconds(k, self.load.others)

    def rate(self, k: int, optimistic: bool = False) -> float:
        """Predicted committed tokens per second of a round with block k: this sequence's and, decoded
        together with others, theirs (the batch's goodput)."""
        expected = self.measurements.acceptance.expected_tokens(k, optimistic) + self.load.committed
        return expected / max(self.seconds(k), 1e-9)

    def best(self, cap: int) -> int:
        """The k in 1..cap with the highest rate (the shortest on ties), or 0 when not drafting beats it
        even at the optimistic acceptance estimates."""
        if cap == 0:
            return 0
        rates = [self.rate(k) for k in range(cap + 1)]
        k = 1 + int(np.argmax(rates[1:]))
        return k if self.rate(k, optimistic=True) >= rates[0] else 0

    @property
    def warming_up(self) -> bool:
        """Whether its measurements are still in their first 2 * len(WARMUP) rounds."""
        return self.measurements.costs.verify.rounds < 2 * len(WARMUP)

    def cap(self, limit: int) -> int:
        """The longest block the rule weighs in a round of at most `limit` tokens, once warmed up: up to
        max_block, and one past the longest block whose verification was measured (CostModel.reach)."""
        return min(self.max_block, limit, max(1, self.measurements.costs.reach - self.load.others))

    def can_pay(self, cap: int) -> bool:
        """Whether some block of 1..cap tokens, every one accepted, would commit tokens faster than not
        drafting (the batch's saving positive): if none would, only a change of costs, not of acceptance,
        can make drafting pay."""
        return any(self.saving(k, k + 1.0) > 0 for k in range(1, cap + 1))

    @property
    def vetoed(self) -> bool:
        """Whether the rule's drafting rounds realized fewer tokens per second than rounds without."""
        return self.measurements.realized.vetoes

    def left(self, limit: int) -> int:
        """Tokens the generation is expected still to produce (see the class docstring): at most limit + 1
        (or `progress.most`)."""
        most = limit + 1 if self.progress.most is None else self.progress.most
        average, produced = self.measurements.lengths.mean, self.progress.produced
        if average is not None:
            most = min(most, max(round(average) - produced, produced, LEFT_FLOOR))
        return max(most, 0)

    def saving(self, k: int, tokens: float | None = None) -> float:
        """Seconds the batch saves per committed token of this sequence with blocks of k that commit
        `tokens` a round (default: the expected tokens at the mean acceptance estimates): the time the
        step's committed tokens (this sequence's and the others', `load`) take without drafting, less the
        step's, per token of this sequence. Alone: seconds(0) - seconds(k) / tokens. Beside others it
        counts what drafting slows them down, as the catch-up it must repay (`repays`) stalls them too."""
        if tokens is None:
            tokens = self.measurements.acceptance.expected_tokens(k)
        others = self.load.committed
        plain = self.seconds(0) / (1.0 + others)  # seconds a committed token of the batch takes, no drafting
        return ((tokens + others) * plain - self.seconds(k)) / tokens

    def repays(self, lag: int, left: int, saving: float) -> bool:
        """Whether saving `saving` seconds a token over `left` tokens pays for first catching up `lag`
        tokens (always when lag <= ROUND_LAG: nothing to catch up)."""
        return lag <= ROUND_LAG or left * saving > self.measurements.catch_up(lag)

    def next_block(self, limit: int, lag: int = 0) -> int:
        self.round = self._choose(limit, lag)
        self.round.left = self.left(limit)
        return self.round.block

    def _choose(self, limit: int, lag: int) -> _Round:
        """The rule's block for this round, or the measurement a schedule calls for."""
        m = self.measurements
        cap = _clamp(self.max_block, limit)
        if cap == 0:
            return _Round(0)
        if self.warming_up:
            return _Round(min(WARMUP[m.costs.verify.rounds % len(WARMUP)], cap))
        cap = self.cap(cap)
        best = self.best(cap)
        left = self.left(limit)
        drafts = best > 0 and self.repays(lag, left, self.saving(best))  # the rule, its catch-up weighed
        if best > 0 and not drafts:
            self.declined += 1
        if drafts and not self.vetoed:
            return self._rule(best, cap)
        rare = self.vetoed or not self.can_pay(cap)
        if not rare and lag > ROUND_LAG:  # a probe's catch-up against what it might find
            rare = not self.repays(lag, left, self._hope(best, cap))
        if rare:
            if not m.cannot_pay.due(self._step_share):
                return _Round(0)
            if drafts:  # vetoed: the veto's trial
                m.realized.retry()
                return self._rule(best, cap)
            return self._probe(cap)
        return self._probe(cap) if m.probing.due(self._step_share) else _Round(0)

    @property
    def _step_share(self) -> float:
        """This round's share of its step, as the shared schedules count it: a probe slows every sequence
        of the step, so they come due by steps, not by the rounds of all the sequences."""
        return 1.0 / (1 + self.load.others)

    def _hope(self, best: int, cap: int) -> float:
        """The most a probe might find drafting saves a token: with every drafted token accepted where the
        estimates stop the rule (best == 0), at the optimistic estimates where only the catch-up does."""
        expected = self.measurements.acceptance.expected_tokens
        return max(
            self.saving(k, k + 1.0 if best == 0 else expected(k, optimistic=True)) for k in range(1, cap + 1)
        )

    def _rule(self, best: int, cap: int) -> _Round:
        """A round of the rule: `best`, or an exploration around it."""
        m = self.measurements
        m.probing.restart()
        if not (self.vetoed or m.realized.trial):
            m.cannot_pay.restart()
        k = self._explore(best, cap) if self.exploring.due() else best
        # an exploration's further tokens are weighed at the best k's rate
        return _Round(k, self.rate(best), plain=self.rate(0))

    def _probe(self, cap: int) -> _Round:
        self.probes += 1
        return _Round(min(PROBE_K, cap))

    def _explore(self, best: int, cap: int) -> int:
        """best + 1 and best - 1 in turn (the other one at 0 or the cap), or 0 where drafting realized less
        than not drafting is predicted to, while rounds without drafting lack the evidence to tell; a
        best k that moved since the last exploration restarts the interval."""
        if best != self.explored_around:
            self.exploring.restart()
        self.explored_around = best
        realized = self.measurements.realized
        drafting = realized.rate(drafted=True)
        if realized.rate(drafted=False) is None and drafting is not None and drafting < self.rate(0):
            self.explorations += 1
            return 0
        self._step = -self._step
        k = _clamp(best + self._step, cap)
        if k == best:
            k = _clamp(best - self._step, cap)
        self.explorations += k != best
        return k

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        """Over a drafter reporting confidence, in a round of the rule: go on while some longer block is
        expected to add tokens faster than the round's predicted rate."""
        r, m = self.round, self.measurements
        if not self.stop_on_confidence or r.rate is None or drafted >= r.block:
            return True
        r.reached *= m.calibration.estimate(top1)
        a = m.acceptance.by_position()[drafted : r.block]  # [n] the next positions' estimates
        more = r.reached * np.cumsum(np.cumprod(a))  # [n] expected extra tokens drafting 1..n more
        now = self.seconds(drafted)
        extra = np.array([self.seconds(drafted + j) - now for j in range(1, len(a) + 1)])  # [n] seconds
        return self._stop(bool(np.any(more - r.rate * extra > 0.0)))

    def observe(self, report: RoundReport) -> None:
        m, r = self.measurements, self.round
        counted = report.requested > 0 and r.rate is not None and r.rate > r.plain  # see the class doc
        if counted:
            self.owed += report.catch_up_seconds
        share = min(self.owed, self.owed * (report.accepted + 1) / max(r.left, 1))  # of what is unpaid
        self.owed -= share
        others = self.load.committed  # the batch's rates: the others commit theirs in the same step
        if report.requested == 0:
            m.realized.add(False, 1.0 + others, report.verify_seconds)
        elif counted:
            expected = m.acceptance.expected_tokens(report.proposed)
            m.realized.add(True, expected + others, report.propose_seconds + report.verify_seconds + share)
        m.add(report)

    def finish(self, generated: int) -> None:
        """Charge the drafting rounds what this generation's catch-ups still owe; learn its length."""
        if not (isinstance(generated, int) and generated >= 0):
            raise ValueError(f"a generation's length is an integer >= 0, got {generated!r}")
        m = self.measurements
        if self.owed > 0.0:
            m.realized.charge(self.owed)
            self.owed = 0.0
        m.lengths.add(generated)

    def summary(self) -> dict[str, object]:
        m = self.measurements
        c0, c1 = m.costs.propose.coef
        v0, v1 = m.costs.verify.coef
        u0, u1 = m.catch_up.coef
        measured = bool(m.costs.verify.samples)
        return {
            **super().summary(),
            "max_block": self.max_block,
            "acceptance_estimate": m.acceptance.pooled,
            "acceptance_by_position": [round(float(a), 4) for a in m.acceptance.by_position()],
            "propose_cost": {"c0": c0, "c1": c1, "rounds": m.costs.propose.rounds},  # seconds, s/token
            "verify_cost": {"v0": v0, "v1": v1, "rounds": m.costs.verify.rounds},  # seconds, s/token
            "verify_seconds_per_token": {  # verify(n) / n by batch length n: what batching buys
                str(n): m.costs.verify(n) / n for n in range(1, self.max_block + 2)
            },
            "best_k": self.best(self.max_block) if measured else None,
            "probes": self.probes,
            "can_pay": self.can_pay(min(self.max_block, m.costs.reach)) if measured else None,
            "explorations": self.explorations,
            "catch_up_cost": {"u0": u0, "u1": u1, "rounds": m.catch_up.rounds},  # seconds, s/token lacked
            "catch_up_declined": self.declined,
            "average_length": m.lengths.mean,
            "realized_rate": {"drafting": m.realized.rate(True), "plain": m.realized.rate(False)},  # tok/s
            "vetoed": self.vetoed,
            **({"calibration": m.calibration.table()} if self.stop_on_confidence else {}),
        }


class Choose(_Policy):
    """Adaptive choice among candidate proposers for one stage, as DEL ("Context-Aware Dynamic Exit
    Layer", 2025) chooses a draft per round by its measured acceptance and cost: each candidate has its
    own Goodput (its costs, acceptance, warm-up and schedules), and each round the candidate whose best
    block has the highest predicted rate proposes, its Goodput sizing the block. A candidate still in its
    warm-up goes first; while the best candidate drafts, every SWITCH rounds (a Backoff) the next other
    candidate proposes a block of the best one's length instead, so the estimates of those not chosen
    stay current; while no candidate's rule drafts, the candidates take the rounds in turn, each running
    its own probe schedules (so the probes of all of them together keep one Goodput's pace). The
    candidates (a proposer with `proposers` and a `current` index, see proposers.Candidates) are attached
    by the verifier (`attach`)."""

    name = "choose"

    def __init__(self, policies: list[Goodput]) -> None:
        if len(policies) < 2 or not all(isinstance(p, Goodput) for p in policies):
            raise ConfigError("choosing among several drafts needs the goodput lookahead")
        self.policies = policies  # one per candidate, in the candidates' order
        super().__init__()
        self.current = 0  # the candidate of the round under way
        self.chosen = [0] * len(policies)  # rounds proposed by each candidate
        self.switching = Backoff(*SWITCH)
        self.switches = 0  # rounds given to a candidate other than the best
        self.idle = 0  # rounds where no candidate's rule drafts
        self._candidates: object | None = None

    def attach(self, candidates: object) -> None:
        """Fit each candidate's goodput to its proposer and steer `candidates.current` from now on."""
        proposers = candidates.proposers  # type: ignore[attr-defined]
        if len(proposers) != len(self.policies):
            raise ConfigError(f"{len(self.policies)} policies for {len(proposers)} candidate drafts")
        for policy, proposer in zip(self.policies, proposers, strict=True):
            fit_to_proposer(policy, proposer.confident)
        self._candidates = candidates

    @property
    def needs_confidence(self) -> bool:
        return self.policies[self.current].needs_confidence

    def next_block(self, limit: int, lag: int = 0) -> int:
        """`lag` is the current candidate's; where the candidates report each one's (`lags`, as
        proposers.Candidates does), each candidate's policy weighs its own. Every candidate's policy
        weighs this round's load and progress (set on this one)."""
        for p in self.policies:
            p.load, p.progress = self.load, self.progress
        lags = getattr(self._candidates, "lags", None) or [lag] * len(self.policies)
        warming = [i for i, p in enumerate(self.policies) if p.warming_up]
        if warming:
            self.current = warming[0]
            k = self.policies[self.current].next_block(limit, lags[self.current])
        else:
            best, k = self._best(limit)
            self.current = best
            if k == 0:  # no candidate drafts by the rule: each in turn runs its own probe schedules
                self.current = self.idle % len(self.policies)
                self.idle += 1
                k = self.policies[self.current].next_block(limit, lags[self.current])
            elif self.switching.due():
                self.switches += 1
                self.current = (best + 1 + self.switches % (len(self.policies) - 1)) % len(self.policies)
                self.policies[self.current].round = _Round(k)  # a measurement: its block runs whole
            else:
                k = self.policies[best].next_block(limit, lags[best])
        self.chosen[self.current] += 1
        if self._candidates is not None:
            self._candidates.current = self.current  # type: ignore[attr-defined]
        return k

    def _best(self, limit: int) -> tuple[int, int]:
        """The candidate with the highest predicted rate at its rule's block (0 where its realized rates
        veto drafting), and that block (every candidate warmed up)."""
        picks = []
        for p in self.policies:
            k = 0 if p.vetoed else p.best(p.cap(limit))
            picks.append((p.rate(k), k))
        best = int(np.argmax([rate for rate, _ in picks]))
        return best, picks[best][1]

    def keep_drafting(self, drafted: int, top1: float, entropy: float) -> bool:
        return self.policies[self.current].keep_drafting(drafted, top1, entropy)

    def observe(self, report: RoundReport) -> None:
        self.policies[self.current].observe(report)

    def finish(self, generated: int) -> None:
        for p in self.policies:
            p.finish(generated)

    def summary(self) -> dict[str, object]:
        names = [p.name for p in getattr(self._candidates, "proposers", [])] or list(
            range(len(self.policies))
        )
        summaries = [p.summary() for p in self.policies]
        return {
            **super().summary(),
            "switches": self.switches,
            "can_pay": any(s["can_pay"] for s in summaries)
            if any(s["can_pay"] is not None for s in summaries)
            else None,
            "candidates": [
                {"proposer": name, "chosen": n, **s}
                for name, n, s in zip(names, self.chosen, summaries, strict=True)
            ],
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


def parse_lookahead(spec: str) -> PolicyFactory:
    """A factory of fresh policies (one per generation) from a CLI string: `fixed:K`, `pmin:P`,
    `entropy:H`, `cumulative:H`, `goodput`; the threshold policies and goodput take an optional `:MAX`
    (longest block). A bare name uses the defaults. Goodput policies from one factory share one
    `Measurements`.
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
        kwargs["measurements"] = first.measurements  # shared by every policy this factory makes
    return PolicyFactory(cls, kwargs)


@dataclass(frozen=True)
class PolicyFactory:
    """Makes a fresh policy per generation; goodput's share the `measurements` of their factory."""

    cls: type
    kwargs: dict

    def __call__(self) -> Lookahead:
        return self.cls(**self.kwargs)

    @property
    def measured(self) -> tuple[Measurements | None]:
        """What this factory's goodput policies measure ((None,) for the other policies)."""
        return (self.kwargs.get("measurements"),)


@dataclass(frozen=True)
class ChoiceFactory:
    """Makes a fresh Choose per generation over `n` candidates, each with a goodput policy from its own
    factory of `spec` (so each candidate's measurements are shared across generations)."""

    factories: tuple[PolicyFactory, ...]

    @classmethod
    def of(cls, spec: str, n: int) -> ChoiceFactory:
        factories = tuple(parse_lookahead(spec) for _ in range(n))
        if not all(f.cls is Goodput for f in factories):
            raise ConfigError(f"choosing among several drafts needs the goodput lookahead, got {spec!r}")
        return cls(factories)

    def __call__(self) -> Choose:
        return Choose([f() for f in self.factories])

    @property
    def measured(self) -> tuple[Measurements | None, ...]:
        """Each candidate's measurements, in the candidates' order."""
        return tuple(m for f in self.factories for m in f.measured)
