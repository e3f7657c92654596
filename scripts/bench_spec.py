#!/usr/bin/env python3
"""Speculative modes side by side, in one process: the target alone, 2-tier SD, 3-tier lossless, PSD_A and
PSD_F, greedy, over code and chat prompts. Runs are interleaved (every mode runs each prompt before the
next prompt) after a short warm-up generation per mode. Reports decode tokens/s, the ratio to the target
alone (median over prompts), acceptance per stage and, for fuzzy modes, greedy agreement with the
target's own output (share of tokens equal up to the first divergence, and overall).

    python scripts/bench_spec.py --target qwen-1.5b --draft qwen-0.5b --tokens 128
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass

import click

from edge_spec.api import NGRAM, Pyramid
from edge_spec.backend import Tier, TierConfig
from edge_spec.models import resolve
from edge_spec.pyramid import StageConfig

PROMPTS = {
    "code": [
        "Write a Python function that checks whether a string is a palindrome, with a docstring and tests.",
        "Write a Python class implementing an LRU cache with get and put methods.",
        "Write a function in Python that parses a CSV line with quoted fields into a list of strings.",
        "Implement binary search in Python and explain its complexity in a short comment.",
    ],
    "chat": [
        "Explain to a ten-year-old why the sky is blue.",
        "Give me three tips to sleep better, in a short list.",
        "What are the main differences between a list and a tuple in Python?",
        "Summarise the plot of Romeo and Juliet in four sentences.",
    ],
}


@dataclass(frozen=True)
class Mode:
    name: str
    draft: str | None  # "model" (the draft model), "ngram" or None
    qualifier: bool  # the draft model as qualifier (only with draft="ngram")
    stages: tuple[StageConfig, ...]


def modes(blocks: tuple[int, ...], taus: tuple[float, ...]) -> list[Mode]:
    out = [Mode("target alone", None, False, (StageConfig(),))]
    out += [Mode(f"SD k={k}", "model", False, (StageConfig(lookahead=f"fixed:{k}"),)) for k in blocks]
    out.append(Mode("ngram->target k=6", "ngram", False, (StageConfig(lookahead="fixed:6"),)))
    out.append(
        Mode(
            "3-tier lossless",
            "ngram",
            True,
            (StageConfig(lookahead="fixed:6"), StageConfig(lookahead="fixed:4")),
        )
    )
    for tau in taus:
        out.append(
            Mode(f"SD k=4 fuzzy tau={tau}", "model", False, (StageConfig("fuzzy", tau, lookahead="fixed:4"),))
        )
        out.append(
            Mode(
                f"PSD_A tau_T={tau}",
                "ngram",
                True,
                (StageConfig(lookahead="fixed:6"), StageConfig("fuzzy", tau, lookahead="fixed:4")),
            )
        )
    return out


def agreement(ours: list[int], ref: list[int]) -> tuple[float, float]:
    """(tokens equal before the first divergence, tokens equal position by position) / len(ref)."""
    prefix = next(
        (i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), min(len(ours), len(ref))
    )
    same = sum(a == b for a, b in zip(ours, ref, strict=False))
    return prefix / len(ref), same / len(ref)


@click.command()
@click.option("--target", default="qwen-1.5b", show_default=True)
@click.option("--draft", default="qwen-0.5b", show_default=True)
@click.option("--tokens", default=128, show_default=True)
@click.option("--repeats", default=1, show_default=True, help="Measured passes over the prompts.")
@click.option("--blocks", default="3,4,6", show_default=True, help="SD block lengths to try.")
@click.option("--taus", default="0.3,0.5", show_default=True, help="Fuzzy thresholds to try.")
@click.option("--suite", default="all", type=click.Choice(["code", "chat", "all"]), show_default=True)
@click.option("--json-out", default=None, help="Also write the rows as JSON here.")
def main(
    target: str,
    draft: str,
    tokens: int,
    repeats: int,
    blocks: str,
    taus: str,
    suite: str,
    json_out: str | None,
) -> None:
    config = TierConfig(n_ctx=2048)
    t_tier, d_tier = Tier(resolve(target), config), Tier(resolve(draft), config)
    t_tier.check_compatible(d_tier)
    all_modes = modes(tuple(int(b) for b in blocks.split(",")), tuple(float(t) for t in taus.split(",")))
    prompts = [(s, p) for s, ps in PROMPTS.items() if suite in (s, "all") for p in ps]
    rate: dict[tuple[str, int], list[float]] = {}
    result: dict[tuple[str, int], dict] = {}

    def pyramid(m: Mode) -> Pyramid:
        d = d_tier if m.draft == "model" else NGRAM if m.draft == "ngram" else None
        return Pyramid(t_tier, d_tier if m.qualifier else None, d, m.stages)

    for m in all_modes:
        pyramid(m).generate("Say hello.", max_tokens=16)
    for _ in range(repeats):
        for i, (_, prompt) in enumerate(prompts):
            for m in all_modes:
                out = pyramid(m).generate(prompt, max_tokens=tokens)
                rate.setdefault((m.name, i), []).append(out.stats.tokens_per_second)
                result[(m.name, i)] = {"ids": out.token_ids, "stats": out.stats.summary()}
    rows = []
    for m in all_modes:
        for s in dict.fromkeys(s for s, _ in prompts):
            idx = [i for i, (ps, _) in enumerate(prompts) if ps == s]
            ratios = [
                statistics.median(rate[(m.name, i)]) / statistics.median(rate[("target alone", i)])
                for i in idx
            ]
            tps = [statistics.median(rate[(m.name, i)]) for i in idx]
            stages = [result[(m.name, i)]["stats"]["stages"] for i in idx]
            acc = [
                sum(st[j]["accepted"] for st in stages) / max(1, sum(st[j]["proposed"] for st in stages))
                for j in range(len(stages[0]))
            ]
            agree = [agreement(result[(m.name, i)]["ids"], result[("target alone", i)]["ids"]) for i in idx]
            rows.append(
                {
                    "mode": m.name,
                    "suite": s,
                    "tok_s": statistics.median(tps),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "acceptance": acc,
                    "prefix_agreement": statistics.mean(a for a, _ in agree),
                    "token_agreement": statistics.mean(b for _, b in agree),
                }
            )
    click.echo(
        f"{t_tier.path.name} <- {d_tier.path.name}; {tokens} tokens greedy; {platform.machine()}, "
        f"{t_tier.n_threads} threads"
    )
    click.echo(
        "| mode | suite | tok/s | ratio (min-max) | acceptance per stage | agreement prefix / tokens |"
    )
    click.echo("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = ", ".join(f"{a:.0%}" for a in r["acceptance"]) if r["mode"] != "target alone" else "-"
        click.echo(
            f"| {r['mode']} | {r['suite']} | {r['tok_s']:.1f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-"
            f"{r['ratio_max']:.2f}) | {acc} | {r['prefix_agreement']:.0%} / {r['token_agreement']:.0%} |"
        )
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
