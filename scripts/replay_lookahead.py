#!/usr/bin/env python3
"""Replay recorded generations through lookahead policies: how each policy would do on these prompts and
this machine, in seconds and over many noise draws, for tuning a policy. An estimate from a model of the
greedy loop, not a measurement: confirm what it suggests with `edge-spec bench`.

    python scripts/replay_lookahead.py record traces.jsonl --target qwen-1.5b --draft qwen-0.5b --limit 12
    python scripts/replay_lookahead.py replay traces.jsonl --lookahead fixed:3 --lookahead goodput

record: the target alone, greedy, on the bench suites' prompts; then, for each position t of its output,
how many consecutive tokens from t each proposer gets right. The draft model is teacher-forced over prompt
+ output in one pass: under greedy verification a block of k drafted at t keeps min(k, run) tokens,
because the draft's token after an accepted one is its greedy token given the target's prefix. The n-gram
proposer is asked at every t, and how many tokens it offered is kept too. First line: the machine's
costs, the median time of a decode of n = 1..MAX_BATCH tokens by the target and by the draft.

replay: every policy over the traces in file order, one policy factory per proposer for all prompts (the
bench, too, keeps one pyramid and goodput's measurements across prompts). A round costs the draft's
decodes (ROUND_LAG tokens, then one per further token), a catch-up decode after rounds without drafting,
the target's decode of the block + 1, and `--overhead-ms` of Python; each time gets log-normal noise and,
with probability `--burst`, 1.3-2x more (steal). The table is the median over prompts of the per-prompt
ratio to the target alone (averaged over the draws), by suite, as `edge-spec bench` reports it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from edge_spec.backend import Tier, TierConfig
from edge_spec.bench import TARGET_ALONE, Mode, Tiers
from edge_spec.cli import EXIT_INTERRUPTED, _clean_errors
from edge_spec.errors import ConfigError
from edge_spec.lookahead import Lookahead, RoundReport, fit_to_proposer, parse_lookahead
from edge_spec.proposers import ROUND_LAG, NgramProposer, confidence
from edge_spec.steps import serve
from edge_spec.suites import SUITES, BenchPrompt, load_suite

MAX_BATCH = 16  # longest decode timed by `record`; replayed blocks are at most MAX_BATCH - 1


@dataclass(frozen=True)
class Machine:
    """Replayed costs: seconds of a decode of n = 1..MAX_BATCH tokens per tier, and their disturbances."""

    target: list[float]  # [MAX_BATCH]
    draft: list[float]  # [MAX_BATCH]
    overhead: float = 0.003  # seconds of Python per round (measured loop: 2-4 ms on this 2-core VM)
    sigma: float = 0.04  # log-normal noise on every timed decode
    burst: float = 0.05  # chance that a decode is also slowed 1.3-2x

    def time(self, rng: np.random.Generator, seconds: float) -> float:
        factor = math.exp(rng.normal(0.0, self.sigma))
        return seconds * factor * (rng.uniform(1.3, 2.0) if rng.random() < self.burst else 1.0)


def matched_run(guesses: np.ndarray, actual: np.ndarray) -> list[int]:
    """[n] for each t, how many consecutive positions from t have guesses == actual (both [n])."""
    run, out = 0, []
    for hit in (guesses == actual)[::-1]:
        run = run + 1 if hit else 0
        out.append(run)
    return out[::-1]


def matched_prefix(block: list[int], actual: list[int]) -> int:
    """How many leading tokens of `block` equal `actual`'s."""
    return next(
        (i for i, (a, b) in enumerate(zip(block, actual, strict=False)) if a != b),
        min(len(block), len(actual)),
    )


def decode_costs(tier: Tier, prefix: list[int], tokens: list[int], repeats: int = 5) -> list[float]:
    """[MAX_BATCH] median seconds of decoding tokens[:n] after `prefix`, n = 1..MAX_BATCH."""
    tier.score(prefix, 1)
    costs = []
    for n in range(1, MAX_BATCH + 1):
        times = []
        for _ in range(repeats):
            tier.truncate(len(prefix))
            t0 = time.perf_counter()
            tier.decode(tokens[:n], n)
            times.append(time.perf_counter() - t0)
        costs.append(statistics.median(times))
    return costs


def drafted(trace: dict, t: int, k: int, policy: Lookahead) -> tuple[int, tuple[float, ...]]:
    """Tokens a draft asked for k tokens at position t proposes when `policy.keep_drafting` sees the
    recorded confidences, and those confidences. Past the draft's first miss the recording has the
    confidence given the target's token, not the draft's own: an approximation, on tokens rejected anyway."""
    top1, entropy = trace["draft_top1"], trace["draft_entropy"]
    for i in range(1, min(k, len(top1) - t) + 1):
        if not policy.keep_drafting(i, top1[t + i - 1], entropy[t + i - 1]):
            return i, tuple(top1[t : t + i])
    return k, tuple(top1[t : t + k])


def replay_one(
    trace: dict, proposer: str, policy: Lookahead, machine: Machine, rng: np.random.Generator
) -> float:
    """Seconds one recorded generation takes under `policy` (fresh from its factory)."""
    runs, t, seconds, missing = trace[proposer], 0, 0.0, ROUND_LAG
    while t < trace["n"]:
        k = min(policy.next_block(trace["max_tokens"] - t - 1), MAX_BATCH - 1)
        proposed, propose, confidences = k, 0.0, ()
        if proposer == "ngram":
            proposed = min(k, trace["ngram_offered"][t])
        elif k > 0:
            if policy.needs_confidence:
                proposed, confidences = drafted(trace, t, k, policy)
            if missing > ROUND_LAG:  # the draft sat out rounds: one batch catches it up
                seconds += machine.time(rng, machine.draft[min(missing - ROUND_LAG, MAX_BATCH) - 1])
            propose = machine.time(rng, machine.draft[ROUND_LAG - 1] + (proposed - 1) * machine.draft[0])
            missing = ROUND_LAG
        else:
            missing += 1
        accepted = min(proposed, runs[t])
        verify = machine.time(rng, machine.target[proposed])
        policy.observe(RoundReport(k, proposed, accepted, propose, verify, confidences))
        seconds += propose + verify + machine.overhead
        t += accepted + 1
    return seconds


def replay(
    traces: list[dict],
    proposer: str,
    factory: Callable[[], Callable[[], Lookahead]],
    machine: Machine,
    draws: int,
) -> dict[str, float]:
    """Median per-prompt speed ratio to the target alone, by suite and over all prompts ("all"); each
    draw makes a new factory (fresh shared measurements) and its own noise."""
    ratios: dict[str, list[float]] = {tr["id"]: [] for tr in traces}
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        make = factory()
        for tr in traces:
            alone = sum(machine.time(rng, machine.target[0]) + machine.overhead for _ in range(tr["n"]))
            policy = fit_to_proposer(make(), confident=proposer == "draft" and "draft_top1" in tr)
            ratios[tr["id"]].append(alone / replay_one(tr, proposer, policy, machine, rng))
    per_prompt = {i: statistics.fmean(r) for i, r in ratios.items()}
    suites = [s for s in SUITES if any(tr["suite"] == s for tr in traces)]
    table = {s: statistics.median(per_prompt[tr["id"]] for tr in traces if tr["suite"] == s) for s in suites}
    return table | {"all": statistics.median(per_prompt.values())}


@click.group()
def main() -> None:
    """Record generations, then replay them through lookahead policies."""


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="Target model reference (path or carried name).")
@click.option("--draft", required=True, help="Draft model reference.")
@click.option(
    "--suite", "suites", multiple=True, type=click.Choice(SUITES), help="Repeatable (default: all)."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Prompts per suite (default: all).")
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--ctx", default=2048, show_default=True)
@_clean_errors
def record(
    out: Path, target: str, draft: str, suites: tuple[str, ...], limit: int | None, max_tokens: int, ctx: int
) -> None:
    """Write OUT (JSONL): the machine's decode costs, then one line per prompt (Ctrl-C keeps those done)."""
    tiers = Tiers.load(target, [draft], None, TierConfig(n_ctx=ctx))
    try:
        _record(tiers, out, [p for s in suites or SUITES for p in load_suite(s, limit)], max_tokens)
    except KeyboardInterrupt:
        click.echo(f"replay_lookahead: interrupted; {out} holds the prompts recorded so far", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        tiers.close()


def _record(tiers: Tiers, out: Path, prompts: list[BenchPrompt], max_tokens: int) -> None:
    drafter = next(t for t in tiers.drafts.values() if isinstance(t, Tier))
    alone = tiers.pyramid(Mode(TARGET_ALONE, "target"))
    sample = alone.encode(prompts[0].text, prompts[0].raw)
    filler = (sample * MAX_BATCH)[:MAX_BATCH]
    ngram = NgramProposer()
    with out.open("w", encoding="utf-8") as f:
        costs = {
            "target": decode_costs(tiers.target, sample, filler),
            "draft": decode_costs(drafter, sample, filler),
        }
        f.write(json.dumps({"costs": costs}) + "\n")
        for p in prompts:
            output = alone.generate(
                p.text, raw=p.raw, stop=p.stop, max_tokens=max_tokens, temperature=0.0
            ).token_ids
            prompt = alone.encode(p.text, p.raw)
            rows = drafter.score([*prompt, *output], len(output) + 1)[:-1]  # [n, V]
            guesses = rows.argmax(axis=1)
            blocks = [
                serve(ngram.propose([*prompt, *output[:t]], MAX_BATCH)).tokens for t in range(len(output))
            ]
            row = {"id": p.id, "suite": p.suite, "n": len(output), "max_tokens": max_tokens}
            row["draft"] = matched_run(guesses, np.array(output))
            row["draft_top1"], row["draft_entropy"] = (
                [round(x, 4) for x in col] for col in zip(*map(confidence, rows), strict=True)
            )
            row["ngram"] = [matched_prefix(b, output[t:]) for t, b in enumerate(blocks)]
            row["ngram_offered"] = [len(b) for b in blocks]
            f.write(json.dumps(row) + "\n")
            f.flush()
            click.echo(f"{p.id}: {len(output)} tokens", err=True)


@main.command(name="replay")
@click.argument("traces", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--lookahead", "specs", multiple=True, default=("fixed:3", "goodput"), show_default=True)
@click.option(
    "--proposer",
    "proposers",
    multiple=True,
    type=click.Choice(["draft", "ngram"]),
    default=("draft", "ngram"),
    show_default=True,
)
@click.option("--draws", default=20, show_default=True, help="Noise draws per policy.")
@click.option("--overhead-ms", default=3.0, show_default=True, help="Python time per round.")
@click.option("--sigma", default=0.04, show_default=True, help="Log-normal noise on each decode time.")
@click.option("--burst", default=0.05, show_default=True, help="Chance a decode is slowed 1.3-2x.")
@_clean_errors
def replay_command(
    traces: Path,
    specs: tuple[str, ...],
    proposers: tuple[str, ...],
    draws: int,
    overhead_ms: float,
    sigma: float,
    burst: float,
) -> None:
    """Print a markdown table: median per-prompt ratio to the target alone, by suite."""
    for spec in specs:
        parse_lookahead(spec)  # a bad spec fails before any replay
    try:
        first, *rows = (
            json.loads(line) for line in traces.read_text(encoding="utf-8").splitlines() if line.strip()
        )
        machine = Machine(
            first["costs"]["target"], first["costs"]["draft"], overhead_ms / 1000.0, sigma, burst
        )
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{traces}: not a file written by `replay_lookahead.py record`") from None
    suites = [s for s in SUITES if any(r["suite"] == s for r in rows)]
    click.echo(f"| proposer | policy | {' | '.join(suites)} | all |\n|{' --- |' * (len(suites) + 3)}")
    for proposer in proposers:
        for spec in specs:
            table = replay(rows, proposer, lambda spec=spec: parse_lookahead(spec), machine, draws)
            click.echo(
                f"| {proposer} | {spec} | " + " | ".join(f"{table[s]:.3f}" for s in [*suites, "all"]) + " |"
            )


if __name__ == "__main__":
    main()
