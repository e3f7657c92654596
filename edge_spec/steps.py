"""How a round asks for decodes: it is a generator that yields `Score` requests and is sent back their
logits rows, so that one sequence's round (`serve`) and many sequences' rounds decoded together
(`edge_spec.engine`) run the same code.

A request's rows are valid until its tier decodes again: a round copies what it keeps across a yield.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from edge_spec.backend import Tier

T = TypeVar("T")


@dataclass(eq=False)
class Score:
    """A request to `tier`: the logits after each of the last `n_logits` tokens of `tokens` in its
    sequence `slot` (what `Tier.score` computes). Whoever serves it fills in `seconds` and `shared`."""

    tier: Tier
    tokens: list[int]
    n_logits: int
    slot: int = 0
    seconds: float = 0.0  # wall time of the decode that served it (shared with the other requests in it)
    shared: int = 0  # tokens of other sequences decoded in that same decode

    def serve(self) -> np.ndarray:
        """Decode this request alone: rows [n_logits, V], a view valid until the tier decodes again."""
        t0 = time.perf_counter()
        rows = self.tier.score(self.tokens, self.n_logits, seq=self.slot)
        self.seconds = time.perf_counter() - t0
        return rows


Steps = Generator[Score, np.ndarray, T]
"""A computation that yields decode requests, is sent each one's rows, and returns a T."""


def serve(steps: Steps[T]) -> T:
    """Run `steps` to its end, decoding each request at once (one sequence, nothing to batch with)."""
    try:
        request = next(steps)
        while True:
            request = steps.send(request.serve())
    except StopIteration as done:
        return done.value
