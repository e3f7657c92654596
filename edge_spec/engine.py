"""Many generations decoded together over one set of tiers: continuous batching of speculative rounds.

Each generation (`Task`) holds a sequence slot in every tier (llama.cpp sequence ids) and its own verifier
chain: lookahead policies, n-gram history, RNG and stats; the tiers and goodput's measurements are shared.
A step serves every waiting request of ONE tier in one batched decode (`Tier.score_many`) and resumes
those rounds: the lowest tier with requests goes first, so the drafts of all sequences are decoded
together, then their verifications. A finished generation frees its slot at once; a waiting one takes the
free slot whose cache shares the longest prefix with its prompt, and its prefill joins the next decode
of the target. Before each round, the top stage's policy sees the load (`lookahead.Load`): how many other
sequences share the step and the tokens they commit, so goodput sizes blocks for the batch's committed
tokens per second.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_spec.backend import Tier
from edge_spec.lookahead import Load
from edge_spec.proposers import Block
from edge_spec.pyramid import Verifier, chain
from edge_spec.steps import Score, Steps

RATE_MEMORY = 0.8
"""Weight of the past in a task's average of tokens committed per round (the load others see)."""


@dataclass(eq=False)
class Task:
    """One generation: `prompt` tokens, at most `max_new` new ones, its verifier chain built by `chain` for
    the slot it gets, and `commit`, which takes each round's committed tokens and returns False once the
    generation has ended (end of generation, a stop string)."""

    prompt: list[int]
    max_new: int
    chain: Callable[[int], Verifier]
    commit: Callable[[list[int]], bool]
    on_prefilled: Callable[[Task], None] = lambda task: None  # called once its prompt is decoded
    on_end: Callable[[Task], None] = lambda task: None  # called once it ended (EngineThread)
    cancelled: bool = False  # set from any thread: the task ends before its next round
    top: Verifier | None = None  # the chain, once admitted
    slot: int = -1
    seq: list[int] = field(default_factory=list)
    produced: int = 0
    steps: Steps[Block] | None = None  # the round under way
    pending: Score | None = None  # its request waiting for a decode
    per_round: float = 1.0  # tokens committed per round (recent average)
    error: Exception | None = None  # what ended it, when a round failed
    admitted_at: float = 0.0  # perf_counter() times of its admission, prefill end and end
    prefilled_at: float = 0.0
    done_at: float = 0.0


class Engine:
    """Runs tasks over `tiers` (bottom-up: drafts, qualifier, target; each loaded with `slots`
    sequences), at most `slots` at once. Not thread-safe: one thread calls `submit` and `step`."""

    def __init__(self, tiers: Sequence[Tier], slots: int) -> None:
        self.rank = {id(t): i for i, t in enumerate(tiers)}  # lower tiers decode first in a step
        self.target = tiers[-1]
        self.free = list(range(slots))
        self.waiting: deque[Task] = deque()
        self.running: list[Task] = []

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(self, task: Task) -> None:
        self.waiting.append(task)

    def step(self) -> list[Task]:
        """Admit waiting tasks into free slots, then decode every pending request of the lowest tier that
        has any in one batch and resume their rounds. Returns the tasks that ended in this step."""
        ended: list[Task] = []
        while self.free and self.waiting:
            task = self.waiting.popleft()
            if task.cancelled:
                ended.append(task)
            else:
                self._admit(task, ended)
        ready = [(t, t.pending) for t in self.running if t.pending is not None]
        if not ready:
            return ended
        tier = min((r.tier for _, r in ready), key=lambda x: self.rank[id(x)])
        batch = [(t, r) for t, r in ready if r.tier is tier]
        t0 = time.perf_counter()
        rows = tier.score_many([(r.slot, r.tokens, r.n_logits) for _, r in batch])
        seconds = time.perf_counter() - t0
        own, total = tier.last_decoded, sum(tier.last_decoded)  # tokens each request decoded
        for (task, request), mine, r in zip(batch, own, rows, strict=True):
            request.seconds, request.shared = seconds, total - mine
            self._resume(task, r, ended)
        return ended

    def abort(self, error: Exception) -> list[Task]:
        """End every task, running or waiting, with `error` (a decode failed under all of them)."""
        ended: list[Task] = []
        for task in list(self.running):
            self._end(task, ended, error)
        while self.waiting:
            task = self.waiting.popleft()
            task.error = error
            ended.append(task)
        return ended

    def _admit(self, task: Task, ended: list[Task]) -> None:
        """Give `task` the free slot whose target cache shares the longest prefix with its prompt, and ask
        for its prefill (the tiers below catch up when first asked to draft)."""
        slot = min(self.free, key=lambda s: self.target.missing(task.prompt, seq=s))
        self.free.remove(slot)
        task.slot, task.seq = slot, list(task.prompt)
        task.admitted_at = time.perf_counter()
        self.running.append(task)
        try:
            task.top = task.chain(slot)
        except Exception as e:  # the task's own error: the others go on
            self._end(task, ended, e)
            return
        if len(task.prompt) > 1:
            task.pending = Score(self.target, task.prompt[:-1], 1, slot)
        else:
            self._resume(task, None, ended)

    def _resume(self, task: Task, rows: np.ndarray | None, ended: list[Task]) -> None:
        """Send the rows of its request to `task`'s round (or start its first round after the prefill);
        commit a finished round's tokens and start the next one."""
        try:
            if task.steps is None:  # the prefill is done
                task.prefilled_at = time.perf_counter()
                task.on_prefilled(task)
                task.pending = self._next_round(task)
                return
            try:
                task.pending = task.steps.send(rows)
                return
            except StopIteration as done:
                block: Block = done.value
            tokens = block.tokens[: task.max_new - task.produced]
            task.seq += tokens
            task.produced += len(tokens)
            task.per_round = RATE_MEMORY * task.per_round + (1 - RATE_MEMORY) * len(tokens)
            if not task.commit(tokens) or task.produced >= task.max_new or task.cancelled:
                self._end(task, ended)
                return
            task.pending = self._next_round(task)
        except Exception as e:  # the task's own error: the others go on
            self._end(task, ended, e)

    def _next_round(self, task: Task) -> Score:
        """Start `task`'s next round under the current load; returns its first request."""
        top = task.top
        assert top is not None, "an admitted task has its chain"
        others = [o for o in self.running if o is not task]
        top.policy.load = Load(len(others), sum(o.per_round for o in others))
        for v in chain(top):
            v.batch_size = len(self.running)
        task.steps = top.round(task.seq, task.max_new - task.produced - 1)
        return next(task.steps)

    def _end(self, task: Task, ended: list[Task], error: Exception | None = None) -> None:
        task.error, task.pending, task.steps = error, None, None
        task.done_at = time.perf_counter()
        self.running.remove(task)
        self.free.append(task.slot)
        ended.append(task)


class EngineThread:
    """An Engine run by a daemon thread, so that generations submitted from any thread are decoded
    together. Each task's `commit` and `on_end` run in this thread; `lock` is held around every step (a
    pyramid's close() takes it to free the tiers between steps)."""

    def __init__(self, engine: Engine, lock: threading.Lock) -> None:
        self.engine, self.lock = engine, lock
        self.inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="edge-spec-engine", daemon=True)
        self.thread.start()

    def submit(self, task: Task) -> None:
        self.inbox.put(task)

    def stop(self, error: Exception) -> None:
        """End every task with `error` and the thread with them; waits for the step under way."""
        self.inbox.put(None)
        self.thread.join()
        for task in self.engine.abort(error):
            task.on_end(task)

    def _run(self) -> None:
        while True:
            try:
                item = self.inbox.get(block=not self.engine.busy)
                while True:
                    if item is None:
                        return
                    self.engine.submit(item)
                    item = self.inbox.get_nowait()
            except queue.Empty:
                pass
            with self.lock:
                try:
                    ended = self.engine.step()
                except Exception as e:  # a decode failed: every task under way ends with its error
                    ended = self.engine.abort(e)
            for task in ended:
                task.on_end(task)
