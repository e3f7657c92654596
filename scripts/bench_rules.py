#!/usr/bin/env python3
"""Cost of the acceptance rules per verified row, against one float32 log-sum-exp pass over the same rows.

Synthetic logits shaped like a real LLM's (Qwen2.5's rows: the top token ~25 nats above the median token):
a N(0, 3) bulk plus a few tokens 15-25 higher; the proposer's rows are the verifier's plus N(0, 1) noise.
Each rule is timed on its most expensive path:

  - greedy / lossless verify: every position accepted (q = p), so every row is tested, plus the bonus draw;
    and lossless rejected at its first position (a draw from the residual max(0, p - q));
  - fuzzy verify: the exact test rejects every position and the divergence accepts it, so the divergence
    of every row is computed;
  - draft sampling: one warped draw per row, as the drafter makes it; confidence(): per row.

ms per row is the median time of one call divided by its rows (k proposed positions; a lossless call also
reads the bonus row); x floor divides that by the median time per row of `floor`, a float32 log-sum-exp of
each row, timed in turn with the rules. Times are the calling thread's CPU time: the rules run on one
thread, so on an idle machine that is their wall time, and on a shared one other processes do not count.

    python scripts/bench_rules.py                         # V in {32000, 128256, 151936}, k in {1, 4, 16, 25}
    python scripts/bench_rules.py --vocab 151936 --rows 16 --json
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import click
import numpy as np

from edge_spec.acceptance import (
    DIVERGENCES,
    LazyDivergence,
    fuzzy_verify,
    greedy_verify,
    speculative_verify,
)
from edge_spec.proposers import confidence
from edge_spec.sampling import SamplingConfig, Warped, make_rng

TRUNCATIONS = {
    "": {},
    ", top-k 40": {"top_k": 40},
    ", top-p 0.95": {"top_p": 0.95},
    ", min-p 0.05": {"min_p": 0.05},
    ", top-k 40 top-p 0.95 min-p 0.05": {"top_k": 40, "top_p": 0.95, "min_p": 0.05},
}
VOCABS = (32000, 128256, 151936)  # Llama-2 / Mistral, Llama-3, Qwen2.5
ROWS = (1, 4, 16, 25)  # rows verified per call: a 1-token round up to PyramidSD's qualifier block
Case = Callable[[], object]


def synthetic_rows(rng: np.random.Generator, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(verifier [k+1, V], proposer [k+1, V]) float32 logits shaped like a real model's."""
    p = rng.normal(0.0, 3.0, size=(k + 1, vocab)).astype(np.float32)
    for row in p:
        head = rng.choice(vocab, size=8, replace=False)
        row[head] = rng.uniform(15.0, 25.0, size=8)
    return p, p + rng.normal(0.0, 1.0, size=p.shape).astype(np.float32)


def floor(p: np.ndarray) -> list[float]:
    """One float32 log-sum-exp pass per row (the practical floor of any rule that normalises a row); row by
    row, which keeps a row's temporaries in cache and beats one pass over all rows at once."""
    return [float(m + np.log(np.exp(row - m).sum())) for row in p for m in (row.max(),)]


def cases(p: np.ndarray, q: np.ndarray) -> dict[str, Case]:
    """Each rule, as a call over the k rows of a block."""
    k = len(p) - 1
    best = p[:k].argmax(axis=1)  # accepted by greedy; with q = p, by the lossless test
    worst = p[:k].argmin(axis=1)  # rejected by greedy, and (p(x) / q(x) ~ 0) by the lossless test
    rng = make_rng(0)
    out: dict[str, Case] = {
        "floor (float32 log-sum-exp)": lambda: floor(p[:k]),
        "greedy verify": lambda: greedy_verify(best, p),
    }
    for name, trunc in TRUNCATIONS.items():
        cfg = SamplingConfig(temperature=0.8, **trunc)
        drafted = np.array([Warped(p[i : i + 1], cfg).sample(0, rng) for i in range(k)], dtype=np.int64)
        out[f"lossless verify, T 0.8{name}"] = lambda cfg=cfg, d=drafted: speculative_verify(
            d, Warped(p, cfg), Warped(p[:k], cfg), rng
        )
    cfg = SamplingConfig(temperature=0.8)
    out["lossless verify, T 0.8, rejected at once"] = lambda: speculative_verify(
        worst, Warped(p, cfg), Warped(q[:k], cfg), rng
    )
    for kind in DIVERGENCES:
        for top_k in (None, 50):
            label = f"fuzzy verify, {kind}" + ("" if top_k is None else f", top-{top_k} approx.")
            out[label] = lambda kind=kind, top_k=top_k: fuzzy_verify(
                worst, p, None, LazyDivergence(p[:k], q[:k], kind, top_k), 10.0, None
            )
    sampled = SamplingConfig(temperature=0.8)
    out["fuzzy verify, js, sampled T 0.8"] = lambda: fuzzy_verify(
        worst, Warped(p, sampled), Warped(q[:k], sampled), LazyDivergence(p[:k], q[:k]), 10.0, rng
    )
    for name in ("", ", top-k 40 top-p 0.95 min-p 0.05"):
        cfg = SamplingConfig(temperature=0.8, **TRUNCATIONS[name])
        out[f"draft sampling step, T 0.8{name}"] = lambda cfg=cfg: [
            Warped(q[i : i + 1], cfg).sample(0, rng) for i in range(k)
        ]
    out["draft confidence()"] = lambda: [confidence(q[i]) for i in range(k)]
    return out


def per_row_ms(named: dict[str, Case], rows: int, budget: float) -> dict[str, float]:
    """Median ms per row of each case, the cases run in turn (round-robin) for about `budget` seconds
    each (at least 5 rounds), so that a change in machine load hits every case alike."""
    times: dict[str, list[float]] = {name: [] for name in named}
    for case in named.values():
        case()
    start = time.thread_time()
    while len(times[next(iter(named))]) < 5 or time.thread_time() - start < budget * len(named):
        for name, case in named.items():
            t0 = time.thread_time()
            case()
            times[name].append(time.thread_time() - t0)
    return {name: statistics.median(t) * 1e3 / rows for name, t in times.items()}


@click.command()
@click.option(
    "--vocab", "vocabs", multiple=True, type=click.IntRange(min=64), default=VOCABS, show_default=True
)
@click.option("--rows", "ks", multiple=True, type=click.IntRange(min=1), default=ROWS, show_default=True)
@click.option(
    "--budget",
    type=click.FloatRange(min=0.0),
    default=0.3,
    show_default=True,
    help="Seconds of repeats per rule and shape.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of markdown tables.")
def main(vocabs: tuple[int, ...], ks: tuple[int, ...], budget: float, as_json: bool) -> None:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for vocab in vocabs:
        for k in ks:
            p, q = synthetic_rows(np.random.default_rng(vocab + k), k, vocab)
            timed = per_row_ms(cases(p, q), k, budget)
            base = timed["floor (float32 log-sum-exp)"]
            for name, ms in timed.items():
                results.setdefault(name, {}).setdefault(str(vocab), {})[str(k)] = ms
                results[name][str(vocab)][f"{k} x floor"] = ms / base
    if as_json:
        click.echo(json.dumps(results))
        return
    for vocab in vocabs:
        click.echo(f"\nV = {vocab}: ms per row (x floor), k rows per call")
        click.echo("| rule | " + " | ".join(f"k = {k}" for k in ks) + " |")
        click.echo("| --- |" + " --- |" * len(ks))
        for name, by_vocab in results.items():
            r = by_vocab[str(vocab)]
            cells = " | ".join(f"{r[str(k)]:.3f} ({r[f'{k} x floor']:.1f}x)" for k in ks)
            click.echo(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
