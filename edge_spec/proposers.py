"""What can propose tokens at the bottom of a pyramid: a model tier, a model-free n-gram lookup, or a
choice among several of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_spec import _rowmath
from edge_spec.backend import Tier
from edge_spec.lookahead import ROUND_LAG, Lookahead
from edge_spec.sampling import SamplingConfig, Warped, f32_row, make_rng
from edge_spec.steps import Score, Steps


@dataclass
class Block:
    """Tokens handed up to the next tier, with the logits the proposer drew them from."""

    tokens: list[int]
    logits: np.ndarray | None  # [len(tokens), V] float32 raw logits rows; None = no distribution (one-hot)
    confidences: tuple[float, ...] = ()  # top-1 probability per token, when the lookahead policy asked


# ROUND_LAG, the tokens a model proposer lacks at the start of a round when every round speculates, is
# defined with the lookahead policies (which weigh a lag beyond it) and read here as well.


def catch_up(tier: Tier, seq: list[int], slot: int) -> Steps[None]:
    """Decode, in one batch, what `tier` lacks of `seq` (in its sequence `slot`) beyond ROUND_LAG tokens,
    so that the next round's timing measures drafting alone (the lookahead's cost model) and not the
    catch-up after a pause."""
    if tier.missing(seq, seq=slot) > ROUND_LAG:
        yield Score(tier, seq[:-1], 1, slot)


class Proposer(Protocol):
    """Anything that can extend a token sequence by up to n tokens."""

    name: str
    confident: bool  # whether propose reports per-token confidence (asks policy.keep_drafting)

    def catch_up(self, seq: list[int]) -> Steps[None]:
        """Bring model state up to `seq` (see `catch_up`) before a timed round; nothing for an n-gram."""
        ...

    def lag(self, seq: list[int]) -> int:
        """Tokens of `seq` its model state lacks (0 for an n-gram): catch_up decodes them first when there
        are more than ROUND_LAG."""
        ...

    def propose(self, seq: list[int], n: int, policy: Lookahead | None = None) -> Steps[Block]:
        """Up to `n` tokens continuing `seq` (fewer, even none, when it has nothing good to offer).
        A model drafter asks `policy.keep_drafting` after each token."""
        ...


class NgramProposer:
    """Prompt lookup: find the latest earlier occurrence of the sequence's last n-gram (longest first) and
    propose the tokens that followed it. Free to run; strong on code edits, rewrites and quoting."""

    name = "ngram"
    confident = False

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram = max_ngram  # longest suffix searched for
        self.min_ngram = min_ngram  # shortest suffix accepted as a match

    def catch_up(self, seq: list[int]) -> Steps[None]:
        yield from ()  # no model state

    def lag(self, seq: list[int]) -> int:
        return 0

    def propose(self, seq: list[int], n: int, policy: Lookahead | None = None) -> Steps[Block]:
        yield from ()  # decodes nothing
        arr = np.asarray(seq, dtype=np.int64)
        for size in range(min(self.max_ngram, len(arr) - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], size)
            hits = np.flatnonzero((windows == arr[-size:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + size
                return Block(arr[start : start + n].tolist(), None)
        return Block([], None)


class ModelDrafter:
    """A model tier proposing autoregressively, one decode per token, greedy or sampled."""

    confident = True

    def __init__(
        self,
        tier: Tier,
        sampling: SamplingConfig,
        rng: np.random.Generator | None = None,
        slot: int = 0,
    ) -> None:
        self.tier = tier
        self.name = tier.path.name
        self.sampling = sampling
        self.rng = rng or make_rng(sampling.seed)
        self.slot = slot  # the tier's sequence this drafter decodes in

    def catch_up(self, seq: list[int]) -> Steps[None]:
        yield from catch_up(self.tier, seq, self.slot)

    def lag(self, seq: list[int]) -> int:
        return self.tier.missing(seq, seq=self.slot)

    def propose(self, seq: list[int], n: int, policy: Lookahead | None = None) -> Steps[Block]:
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        confidences: list[float] = []
        for i in range(1, n + 1):
            logits = (yield Score(self.tier, seq + tokens, 1, self.slot))[0]
            greedy = self.sampling.greedy
            token = (
                int(logits.argmax()) if greedy else Warped(logits[None], self.sampling).sample(0, self.rng)
            )
            tokens.append(token)
            rows.append(logits.copy())
            keep = True
            if policy is not None and policy.needs_confidence:
                top1, entropy = confidence(logits)
                confidences.append(top1)
                keep = policy.keep_drafting(i, top1, entropy)
            if not keep or self.tier.is_eog(token):
                break
        return Block(tokens, np.stack(rows) if rows else None, tuple(confidences))


class Candidates:
    """Several proposers for one stage, one of which (`current`, set each round by the stage's Choose
    policy) catches up and proposes. A candidate not chosen costs nothing but its memory: a model catches
    up with the sequence only when it is chosen again. `lag` notes every candidate's (`lags`), so that
    the Choose policy weighs the catch-up of the candidate it picks."""

    confident = False  # each candidate reports its own (Choose fits a policy to each)

    def __init__(self, proposers: list[Proposer]) -> None:
        self.proposers = proposers
        self.name = "|".join(p.name for p in proposers)
        self.current = 0  # index of the proposer of this round
        self.lags: list[int] = []  # each candidate's lag at the latest `lag` call

    def lag(self, seq: list[int]) -> int:
        self.lags = [p.lag(seq) for p in self.proposers]
        return self.lags[self.current]

    def catch_up(self, seq: list[int]) -> Steps[None]:
        yield from self.proposers[self.current].catch_up(seq)

    def propose(self, seq: list[int], n: int, policy: Lookahead | None = None) -> Steps[Block]:
        return (yield from self.proposers[self.current].propose(seq, n, policy))


def confidence(logits: np.ndarray) -> tuple[float, float]:
    """Top-1 probability and entropy (nats) of softmax(logits); logits [V] float32 (one fused C pass)."""
    return _rowmath.confidence(f32_row(logits))
