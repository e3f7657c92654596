"""The server's slots: the right to generate, handed to requests first come, first served. Slots are
pyramids, or one pyramid listed N times when it decodes N sequences together (`Pyramid.parallel`).

Rules: a request waits until a slot is free; slots go to waiting requests strictly in arrival order (a
request arriving while others wait queues behind them, even if a slot is free at that instant); a request
that gives up while waiting (its client went away) leaves the queue. Among free slots, a request gets the
one whose KV cache shares the longest prefix with its prompt, so a conversation's next turn finds its
earlier turns still cached. Used from one asyncio event loop only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from edge_spec.api import Pyramid


@dataclass(eq=False)
class Slot:
    """One loaded pyramid and its number (0-based)."""

    index: int
    pyramid: Pyramid

    def reusable(self, prompt_ids: Sequence[int]) -> int:
        """Prompt tokens (all but the last, which the first round decodes) already in the target's cache
        (the sequence sharing the most, when it holds several)."""
        head, target = list(prompt_ids[:-1]), self.pyramid.target
        return len(head) - min(target.missing(head, seq=s) for s in range(target.n_seq))


class Slots:
    """Fair, first come first served access to N slots."""

    def __init__(self, pyramids: Sequence[Pyramid]) -> None:
        self.all = [Slot(i, p) for i, p in enumerate(pyramids)]
        self._free = list(self.all)
        self._waiting: deque[tuple[asyncio.Future[Slot], list[int]]] = deque()

    @property
    def busy(self) -> int:
        return len(self.all) - len(self._free)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def _best(self, prompt_ids: Sequence[int]) -> Slot:
        slot = max(self._free, key=lambda s: s.reusable(prompt_ids))
        self._free.remove(slot)
        return slot

    async def acquire(self, prompt_ids: Sequence[int]) -> Slot:
        """A free slot for a request with this prompt, after every request that came before it."""
        if self._free and not self._waiting:
            return self._best(prompt_ids)
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        entry = (future, list(prompt_ids))
        self._waiting.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed a slot as it gave up: pass it on
                self.release(future.result())
            elif entry in self._waiting:
                self._waiting.remove(entry)
            raise

    def release(self, slot: Slot) -> None:
        """Give `slot` back: to the first waiting request, else to the free list."""
        self._free.append(slot)
        while self._waiting:
            future, prompt_ids = self._waiting.popleft()
            if not future.done():
                future.set_result(self._best(prompt_ids))
                return
