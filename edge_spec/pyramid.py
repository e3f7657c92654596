"""The decoding loop over N tiers: drafter -> [qualifier ->] target, or the target alone.

Every tier above the bottom is a `Verifier`: one round asks the tier below for a block of k tokens, scores
block + 1 positions in ONE batched decode, keeps the accepted prefix and appends its own token (recovered
or bonus). A verifier that sits under another keeps running rounds until it holds the block asked of it
(PyramidSD's qualifier); the top verifier (the target) runs one round per commit. Classic SD, PSD_F,
PSD_A and HSD are settings of the stages (exact or fuzzy, tau, lookahead), not separate code paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from edge_spec import acceptance
from edge_spec.acceptance import Verdict
from edge_spec.backend import Tier
from edge_spec.errors import ConfigError
from edge_spec.lookahead import (
    DEFAULT_LOOKAHEAD,
    ROUND_LAG,
    Choose,
    Lookahead,
    Progress,
    RoundReport,
    fit_to_proposer,
    parse_lookahead,
)
from edge_spec.options import NGRAM
from edge_spec.proposers import Block, Candidates, ModelDrafter, NgramProposer, Proposer, catch_up
from edge_spec.sampling import SamplingConfig, Warped, make_rng
from edge_spec.stats import StageStats
from edge_spec.steps import Score, Steps, serve

ACCEPT_RULES = ("exact", "fuzzy")


@dataclass(frozen=True)
class StageConfig:
    """How one verifier judges the tier below it."""

    accept: str = "exact"  # exact: greedy match / lossless sampling; fuzzy: divergence <= tau also accepts
    tau: float = 0.0  # fuzzy threshold on the divergence; 0 = exact
    divergence: str = "js"  # js (FSD form) | js-sym | kl | tv, on raw logits
    top_k: int | None = None  # approximate the divergence on the verifier's top-k tokens + one tail bucket
    lookahead: str = DEFAULT_LOOKAHEAD  # policy sizing the block asked of the tier below (l_D, l_Q)

    def __post_init__(self) -> None:
        if self.accept not in ACCEPT_RULES:
            raise ConfigError(f"acceptance must be one of {', '.join(ACCEPT_RULES)}, got {self.accept!r}")
        acceptance.validate_tau(self.tau)
        if self.divergence not in acceptance.DIVERGENCES:
            raise ConfigError(
                f"divergence must be one of {', '.join(acceptance.DIVERGENCES)}, got {self.divergence!r}"
            )
        parse_lookahead(self.lookahead)
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"divergence top-k must be positive, got {self.top_k}")


class Verifier:
    """A model tier verifying the proposer below it; itself a proposer for the tier above."""

    confident = False  # its blocks carry no per-token confidence

    def __init__(
        self,
        tier: Tier,
        below: Proposer | None,
        stage: StageConfig,
        sampling: SamplingConfig,
        rng: np.random.Generator,
        keep_logits: bool,
        policy: Lookahead,
        slot: int = 0,
    ) -> None:
        self.tier, self.below, self.stage, self.sampling, self.rng = tier, below, stage, sampling, rng
        self.slot = slot  # the tier's sequence this generation decodes in
        self.batch_size = 1  # sequences decoded together in this round (set by the engine)
        self.name = tier.path.name
        self.keep_logits = keep_logits  # hand our logits rows up: the stage above needs them
        # a fresh policy per generation, from the pyramid's factory (which shares goodput's cost model)
        self.policy = fit_to_proposer(policy, below is not None and below.confident)
        if isinstance(self.policy, Choose):  # a choice among candidate drafts steers which one proposes
            self.policy.attach(below)
        self.stats = StageStats(self.name, below.name) if below is not None else None

    started: int | None = None  # the sequence's length at this generation's first round
    remaining: int | None = None  # most tokens the generation may still produce, set by the stage above

    def round(self, seq: list[int], limit: int) -> Steps[Block]:
        """One verification: ask the tier below for as many tokens as the lookahead policy decides (at most
        `limit`; the policy weighs what the proposer lacks of `seq`), catch it up when it lacks more than
        ROUND_LAG tokens, time that and the proposal, score the block in ONE decode, keep the accepted
        prefix and append our own token."""
        below = self.below
        k = 0
        if below is not None:
            if self.started is None:
                self.started = len(seq)
            most = limit + 1 if self.remaining is None else self.remaining  # the top stage's limit
            if isinstance(below, Verifier):
                below.remaining = most
            self.policy.progress = Progress(len(seq) - self.started, most)
            k = self.policy.next_block(limit, lag=below.lag(seq))
        block, propose_seconds, lagged, catch_up_seconds = Block([], None), 0.0, 0, 0.0
        if below is not None and k > 0:
            lag = below.lag(seq)  # this round's proposer's (the policy may have chosen another candidate)
            t0 = time.perf_counter()
            yield from below.catch_up(seq)
            t1 = time.perf_counter()
            block = yield from below.propose(seq, k, self.policy)
            propose_seconds = time.perf_counter() - t1
            if lag > ROUND_LAG:
                lagged, catch_up_seconds = lag, t1 - t0
        draft = block.tokens
        verify = Score(self.tier, seq + draft, len(draft) + 1, self.slot)
        rows = yield verify  # [len(draft) + 1, V]
        verdict = self._judge(np.asarray(draft, dtype=np.int64), rows, block.logits)
        n = verdict.n_accepted
        if self.stats is not None:
            report = RoundReport(
                k,
                len(draft),
                n,
                propose_seconds,
                verify.seconds,
                block.confidences,
                verify.shared,
                catch_up_tokens=lagged,
                catch_up_seconds=catch_up_seconds,
            )
            self.policy.observe(report)
            self.stats.record(len(draft), n, k, self.batch_size)
        return Block([*draft[:n], verdict.token], rows[: n + 1].copy() if self.keep_logits else None)

    def catch_up(self, seq: list[int]) -> Steps[None]:
        yield from catch_up(self.tier, seq, self.slot)
        if self.below is not None:
            yield from self.below.catch_up(seq)

    def lag(self, seq: list[int]) -> int:
        """What a catch-up would decode, proposing to the stage above: our tier's missing tokens when
        they are more than ROUND_LAG (fewer are decoded by the next round anyway), plus our proposer's
        lag. So it is more than ROUND_LAG exactly when catch_up decodes something."""
        own = self.tier.missing(seq, seq=self.slot)
        return (own if own > ROUND_LAG else 0) + (self.below.lag(seq) if self.below is not None else 0)

    def propose(self, seq: list[int], n: int, policy: Lookahead | None = None) -> Steps[Block]:
        """Run rounds until holding n tokens (or an end-of-generation token): the stage above chose n, our
        own policy sizes each inner round."""
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        while len(tokens) < n:
            block = yield from self.round(seq + tokens, n - len(tokens) - 1)
            tokens += block.tokens
            if block.logits is not None:
                rows.append(block.logits)
            if self.tier.is_eog(tokens[-1]):
                break
        return Block(tokens, np.concatenate(rows) if rows else None)

    def _judge(self, draft: np.ndarray, rows: np.ndarray, q_logits: np.ndarray | None) -> Verdict:
        """draft [k] int; rows [k+1, V] our logits; q_logits [k, V'] the proposer's, None = one-hot."""
        greedy, stage = self.sampling.greedy, self.stage
        if q_logits is not None and q_logits.shape[1] != rows.shape[1]:  # vocab sizes may differ by <= 128
            width = min(q_logits.shape[1], rows.shape[1])
            rows, q_logits = rows[:, :width], q_logits[:, :width]
        if stage.accept == "exact" and greedy:
            return acceptance.greedy_verify(draft, rows)
        p = Warped(rows, self.sampling)
        q = None if greedy or q_logits is None else Warped(q_logits, self.sampling)
        if stage.accept == "exact":
            return acceptance.speculative_verify(draft, p, q, self.rng)
        if q_logits is None:  # a proposer without a distribution has no divergence to measure
            div = np.full(len(draft), np.inf)
        else:
            div = acceptance.LazyDivergence(rows[: len(draft)], q_logits, stage.divergence, stage.top_k)
        return acceptance.fuzzy_verify(draft, p, q, div, stage.tau, None if greedy else self.rng)


def stage_needs_logits(stage: StageConfig, sampling: SamplingConfig) -> bool:
    """Whether a stage reads the proposer's logits (fuzzy divergence or lossless sampling)."""
    return stage.accept == "fuzzy" or not sampling.greedy


Draft = Tier | str | list[Tier | str] | None
"""The bottom tier: a model, NGRAM, several candidates of either (a Choose policy picks one per round),
or None (the target alone)."""


def proposer(
    draft: Draft, sampling: SamplingConfig, rng: np.random.Generator, slot: int = 0
) -> Proposer | None:
    """What proposes at the bottom of a pyramid with this draft (a model decoding in sequence `slot`)."""
    if isinstance(draft, list):
        return Candidates([p for d in draft if (p := proposer(d, sampling, rng, slot)) is not None])
    if draft == NGRAM:
        return NgramProposer()
    if isinstance(draft, Tier):
        return ModelDrafter(draft, sampling, rng, slot)
    return None


def assemble(
    draft: Draft,
    verifiers: Sequence[Tier],
    stages: Sequence[StageConfig],
    policies: Sequence[Callable[[], Lookahead]],
    sampling: SamplingConfig,
    slot: int = 0,
) -> Verifier:
    """The verifier chain of one generation, bottom-up: the draft (see `Draft`) under each of
    `verifiers` (qualifier, target) with its stage settings and a fresh policy from its factory (goodput's
    factory shares its measured costs across generations); fresh stats, one RNG seeded from `sampling`;
    every model decodes in its sequence `slot`. Returns the top verifier (the target's)."""
    rng = make_rng(sampling.seed)
    below = proposer(draft, sampling, rng, slot)
    top: Verifier | None = None
    for i, tier in enumerate(verifiers):
        above_needs = i + 1 < len(verifiers) and stage_needs_logits(stages[i + 1], sampling)
        top = Verifier(tier, below, stages[i], sampling, rng, above_needs, policies[i](), slot)
        below = top
    assert top is not None, "a pyramid has a target"
    return top


def chain(top: Verifier) -> list[Verifier]:
    """The verifiers under and including `top`, bottom-up."""
    found: list[Verifier] = []
    node: object = top
    while isinstance(node, Verifier):
        found.append(node)
        node = node.below
    return found[::-1]


def commit_rounds(top: Verifier, prompt: list[int], max_new: int) -> Iterator[list[int]]:
    """Yield each round's committed tokens until max_new tokens were produced. The caller stops early on
    end of generation or a stop string; every tier's cache is rolled back lazily by the next round."""
    seq = list(prompt)
    produced = 0
    while produced < max_new:
        block = serve(top.round(seq, max_new - produced - 1))
        tokens = block.tokens[: max_new - produced]
        seq += tokens
        produced += len(tokens)
        yield tokens
