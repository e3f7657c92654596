"""`edge-spec doctor`: what speculation can buy on this machine, measured, then said in plain words.

After a prompt of about PROMPT_TOKENS tokens it measures, each REPEATS times after one untimed warm-up:

- the target's verify-cost curve: the seconds of one decode of n tokens returning n logits rows (the
  verification of n - 1 drafted tokens) for n in LENGTHS;
- each lower tier's (draft, qualifier) cost of drafting DRAFT_BLOCK tokens, timed as goodput times a
  proposal (`ModelDrafter.propose`); an n-gram drafts for free;
- each lower tier's acceptance as the target's draft: one greedy generation of ACCEPTANCE_TOKENS tokens in
  blocks of DRAFT_BLOCK, accepted / (accepted + rejections), the geometric model's per-token rate.

The timings fill goodput's own `CostModel`, and goodput's rate rule reads them (`edge_spec.lookahead`):
the ceiling is Goodput.rate at its best k with every drafted token accepted and drafting free, over
rate(0) (the target alone); a tier's outlook is the k that Goodput.best picks with that tier's costs and
acceptance, and rate(k) / rate(0). Nothing here models costs on its own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_spec import backend
from edge_spec.backend import Tier, TierConfig
from edge_spec.errors import ConfigError
from edge_spec.lookahead import Acceptance, CostModel, Goodput, Measurements
from edge_spec.proposers import ModelDrafter
from edge_spec.pyramid import StageConfig
from edge_spec.sampling import SamplingConfig
from edge_spec.steps import serve

LENGTHS = (1, 2, 3, 4, 5, 8, 16, 32)
"""Tokens per measured verification decode (1 = the target alone)."""
REPEATS = 3
"""Timed decodes per length (goodput counts a length as measured from 2)."""
MAX_BLOCK = 16
"""Longest block considered (goodput's default)."""
DRAFT_BLOCK = 4
"""Tokens per timed proposal, and the block length of the acceptance run."""
ACCEPTANCE_TOKENS = 48
"""Tokens generated to measure a tier's acceptance."""
PROMPT_TOKENS = 64
"""Context the costs are measured at (the prompt text repeated to this length)."""

PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring and a test."
_CONTEXT_TEXT = (
    "A speculative decoder drafts a few tokens with a small model and verifies them with the large one in "
    "a single batch: every accepted token saves one decode of the large model. "
)


@dataclass(frozen=True)
class Outlook:
    """What goodput's rule expects of one lower tier drafting for the target."""

    role: str  # draft or qualifier
    name: str  # the model's file name, or "ngram"
    seconds_per_token: float  # drafting cost per token (0 for an n-gram)
    cost_ratio: float  # seconds_per_token over the target's one-token decode
    acceptance: float  # per-token acceptance used (measured, or goodput's prior when nothing was proposed)
    acceptance_measured: bool
    best_k: int  # the block length goodput's rule picks (0 = do not draft)
    expected_speedup: float  # rate(best_k) / rate(0)
    can_pay: bool  # whether some block, every token accepted, beats the target alone with these costs


@dataclass(frozen=True)
class Diagnosis:
    """Everything doctor measured and concluded (`--json` prints it as a dict)."""

    build: dict[str, object]
    devices: list[dict[str, object]]
    target: dict[str, object]
    context_tokens: int
    verify_seconds: dict[str, float]  # tokens per decode -> seconds (goodput's cost of that length)
    ceiling_k: int  # the block length of the ceiling (0: no block pays even for free)
    ceiling_speedup: float  # the best ratio to the target alone of a free, always-right draft
    ceiling_cost: float  # verifying ceiling_k + 1 tokens over verifying one (goodput's cost model)
    outlooks: list[Outlook] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "verdict": self.verdict()}

    def verdict(self) -> list[str]:
        """The conclusions in plain words, one line each."""
        t = self.verify_seconds
        if self.ceiling_k == 0:
            n = max(t, key=int)
            lines = [
                f"no draft can pay on this machine: verifying {n} tokens costs {t[n] / t['1']:.1f}x one, and "
                "no block, even drafted for free and always accepted, beats decoding alone"
            ]
        else:
            lines = [
                f"verifying {self.ceiling_k + 1} tokens costs {self.ceiling_cost:.1f}x one: a perfect free "
                f"draft could reach at most {self.ceiling_speedup:.2f}x (k={self.ceiling_k})"
            ]
        for o in self.outlooks:
            source = "measured" if o.acceptance_measured else "goodput's prior"
            about = (
                f"with {o.name} ({o.cost_ratio:.2f} of the target's cost per token, "
                f"acceptance {o.acceptance:.2f} {source})"
            )
            if o.best_k:
                lines.append(f"{about} goodput would draft k={o.best_k} expecting {o.expected_speedup:.2f}x")
            elif o.can_pay:
                lines.append(
                    f"{about} goodput would not draft: no block is expected to beat the target alone"
                )
            else:
                lines.append(f"{about} goodput would not draft: even fully accepted blocks would be slower")
        return lines


class _Geometric(Acceptance):
    """Goodput's acceptance evidence replaced by one known per-token rate at every position."""

    def __init__(self, max_block: int, rate: float) -> None:
        super().__init__(max_block)
        self.rate = rate

    def by_position(self) -> np.ndarray:
        return np.full(len(self.trials), self.rate)

    def optimistic(self) -> np.ndarray:
        return self.by_position()


def _costs(verify: dict[int, list[float]], seconds_per_token: float) -> CostModel:
    """A CostModel holding these verification timings by length and proposals at seconds_per_token."""
    costs = CostModel()
    for n, samples in sorted(verify.items()):
        for s in samples:
            costs.verify.add(n, s)
    for _ in range(2):
        costs.propose.add(DRAFT_BLOCK, DRAFT_BLOCK * seconds_per_token)
    return costs


def _goodput(costs: CostModel, acceptance: float) -> Goodput:
    m = Measurements(MAX_BLOCK)
    m.costs, m.acceptance = costs, _Geometric(MAX_BLOCK, acceptance)
    return Goodput(MAX_BLOCK, m)


def expectation(costs: CostModel, acceptance: float) -> tuple[int, float, bool]:
    """Goodput's rule over these costs at this per-token acceptance: (best k, rate(k) / rate(0), can_pay)."""
    g = _goodput(costs, acceptance)
    cap = min(MAX_BLOCK, costs.reach)
    k = g.best(cap)
    return k, g.rate(k) / g.rate(0), g.can_pay(cap)


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn after one untimed call."""
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def _context(tier: Tier) -> list[int]:
    tokens = tier.tokenize(_CONTEXT_TEXT)
    while len(tokens) < PROMPT_TOKENS:
        tokens += tier.tokenize(_CONTEXT_TEXT, add_bos=False)
    return tokens[:PROMPT_TOKENS]


def measure_verify(
    tier: Tier, context: list[int], lengths: Sequence[int], repeats: int
) -> dict[int, list[float]]:
    """Seconds of scoring n tokens after `context` (n logits rows), `repeats` times per length."""
    filler = context * (max(lengths) // len(context) + 1)
    return {n: _timed(lambda n=n: tier.score(context + filler[:n], n), repeats) for n in lengths}


def measure_proposal(tier: Tier, context: list[int], repeats: int) -> float:
    """Seconds per drafted token of greedy proposals of DRAFT_BLOCK tokens after `context` (the median)."""
    drafter = ModelDrafter(tier, SamplingConfig())
    serve(drafter.catch_up(context))
    drafted: list[int] = []

    def propose() -> None:
        drafted.append(len(serve(drafter.propose(context, DRAFT_BLOCK)).tokens))

    seconds = _timed(propose, repeats)
    return statistics.median(seconds) / max(statistics.median(drafted), 1)


def measure_acceptance(target: Tier, lower: Tier | str) -> float | None:
    """Per-token acceptance of `lower` drafting for `target` in blocks of DRAFT_BLOCK over a greedy
    generation of ACCEPTANCE_TOKENS tokens; None when nothing was proposed."""
    from edge_spec.api import Pyramid

    stage = StageConfig(lookahead=f"fixed:{DRAFT_BLOCK}")
    result = Pyramid(target, None, lower, [stage]).generate(PROMPT, max_tokens=ACCEPTANCE_TOKENS)
    (s,) = result.stats.stages
    return s.accepted / (s.accepted + s.recovered) if s.proposed else None


def _lengths(tier: Tier, context: list[int]) -> list[int]:
    lengths = [n for n in LENGTHS if len(context) + n <= tier.n_ctx and n <= tier.n_batch]
    if len(lengths) < 2:
        raise ConfigError(
            f"doctor needs a context of at least {len(context) + 2} tokens and a batch of 2 (--ctx, --batch)"
        )
    return lengths


def diagnose(
    target: Path,
    lower: Sequence[tuple[str, Path | str]],
    config: TierConfig,
    repeats: int = REPEATS,
    progress: Callable[[str], None] = lambda _: None,
) -> Diagnosis:
    """Measure `target` and each lower tier (role, model path or "ngram") loaded with `config`."""
    if repeats < 2:
        raise ConfigError(f"repeats (--repeats) must be at least 2, got {repeats}")
    build = {**backend.build_info(), "gpu_offload": backend.gpu_available()}
    devices = [asdict(d) for d in backend.devices()]
    progress(f"loading {target.name}")
    with Tier(target, config) as t:
        context = _context(t)
        progress(f"timing the verification of {', '.join(map(str, _lengths(t, context)))} tokens")
        verify = measure_verify(t, context, _lengths(t, context), repeats)
        free = _costs(verify, 0.0)
        verify_seconds = {str(n): free.verify(n) for n in verify}
        ceiling_k, ceiling, can_pay = expectation(free, 1.0)
        if not can_pay:  # a tie with the target alone at best
            ceiling_k, ceiling = 0, 1.0
        ceiling_cost = free.verify(ceiling_k + 1) / free.verify(1)
        outlooks = [_outlook(t, role, ref, config, context, verify, repeats, progress) for role, ref in lower]
        about = {
            "path": str(target),
            "description": t.description,
            "device": t.device,
            "n_layer": t.n_layer,
            "threads": t.n_threads,
            "n_ctx": t.n_ctx,
        }
    return Diagnosis(
        build, devices, about, len(context), verify_seconds, ceiling_k, ceiling, ceiling_cost, outlooks
    )


def _outlook(
    target: Tier,
    role: str,
    ref: Path | str,
    config: TierConfig,
    context: list[int],
    verify: dict[int, list[float]],
    repeats: int,
    progress: Callable[[str], None],
) -> Outlook:
    from edge_spec.api import NGRAM
    from edge_spec.lookahead import PRIOR_ACCEPTANCE

    name = ref if ref == NGRAM else Path(ref).name
    if ref == NGRAM:
        per_token = 0.0
        progress("measuring the n-gram's acceptance")
        accepted = measure_acceptance(target, NGRAM)
    else:
        progress(f"loading {name}")
        with Tier(ref, config) as lower:
            target.check_compatible(lower)
            progress(f"timing {name}'s proposals and acceptance")
            per_token = measure_proposal(lower, context, repeats)
            accepted = measure_acceptance(target, lower)
    acceptance = PRIOR_ACCEPTANCE if accepted is None else accepted
    k, speedup, can_pay = expectation(_costs(verify, per_token), acceptance)
    ratio = per_token / _costs(verify, 0.0).verify(1)
    return Outlook(role, name, per_token, ratio, acceptance, accepted is not None, k, speedup, can_pay)


def report(d: Diagnosis) -> str:
    """The human-readable report: build and devices, the cost curve, the verdict."""
    gpus = [x for x in d.devices if x["kind"] in ("gpu", "igpu")]
    if gpus:
        where = "; ".join(
            f"{x['name']} {x['description']}, "
            f"{x['free_bytes'] / 2**30:.1f} of {x['total_bytes'] / 2**30:.1f} GiB free"
            for x in gpus
        )
    else:
        where = "no GPU offload in this build" if not d.build["gpu_offload"] else "no GPU found"
    t = d.target
    lines = [
        f"llama.cpp: llama-cpp-python {d.build['llama_cpp_python']}; {where}",
        f"  {d.build['system_info']}",
        f"target: {Path(str(t['path'])).name} ({t['description']}) on {t['device']}, {t['threads']} threads, "
        f"after {d.context_tokens} tokens of context",
        "verification cost (one decode of n tokens):",
        "  n      " + "".join(f"{n:>8}" for n in d.verify_seconds),
        "  ms     " + "".join(f"{s * 1e3:8.1f}" for s in d.verify_seconds.values()),
        "  x one  " + "".join(f"{s / d.verify_seconds['1']:8.2f}" for s in d.verify_seconds.values()),
    ]
    for o in d.outlooks:
        lines.append(
            f"{o.role} {o.name}: {o.seconds_per_token * 1e3:.1f} ms per drafted token "
            f"({o.cost_ratio:.2f} of the target's), acceptance {o.acceptance:.2f}"
            + ("" if o.acceptance_measured else " (nothing proposed: goodput's prior)")
        )
    return "\n".join([*lines, *(f"verdict: {line}" for line in d.verdict())])
