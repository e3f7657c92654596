#!/usr/bin/env python3
"""Speculative modes side by side, in one process: the target alone, 2-tier SD, n-gram, 3-tier lossless
(n-gram -> draft -> target) and PSD_A (the same with a fuzzy target stage), greedy, over code, chat and
rewrite prompts; `--sweep lookahead` runs every lookahead policy for both proposers instead. With only two
model sizes on one tokenizer, PSD_F's fuzzy inner stage has nothing to measure (an n-gram has no
distribution), so it equals PSD_A here. Runs are interleaved (every mode runs a prompt before the next
prompt) after a short warm-up generation per mode. Reports decode tokens/s, the ratio to the target alone
(median over prompts, with min-max), acceptance per stage, the share of tokens on the target's greedy
path (within 0.3 logits of its argmax, teacher-forced: 100% for lossless modes, the quality measure for
fuzzy ones) and agreement with the target's own output (tokens equal before the first divergence, and
position by position; lossless modes part at near-ties, where batched and single decodes round apart).

    python scripts/bench_spec.py --target qwen-1.5b --draft qwen-0.5b --tokens 128
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass

import click
import numpy as np

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
    "rewrite": [
        "Add type hints to this Python code and return the full code:\n\n"
        "def merge(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
        "        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        else:\n"
        "            out.append(b[j])\n            j += 1\n    out.extend(a[i:])\n    out.extend(b[j:])\n"
        "    return out\n",
        "Rename the variable `x` to `total` in this code and return the full code:\n\n"
        "def score(items):\n    x = 0\n    for item in items:\n        if item.valid:\n"
        "            x += item.weight * item.value\n    return x / max(1, len(items))\n",
        "Fix the spelling mistakes in this text and return the corrected text: The quick brown fox jumpd "
        "over the lazzy dog. Then it ran acros the feild and hid behind a big old tree, wating for the "
        "farmer to go home befor it came out again.",
        "Rewrite this paragraph in a formal tone: Hey folks, so the meeting got moved to Friday because "
        "half the team is out sick. Bring your laptops and the numbers from last quarter, and don't be "
        "late this time, we have a lot to get through.",
    ],
}


@dataclass(frozen=True)
class Mode:
    name: str
    draft: str | None  # "model" (the draft model), "ngram" or None
    qualifier: bool  # the draft model as qualifier (only with draft="ngram")
    stages: tuple[StageConfig, ...]


def lookahead_sweep(blocks: tuple[int, ...]) -> list[Mode]:
    """The target alone, then each proposer (draft model, n-gram) under every lookahead policy."""
    policies = [f"fixed:{k}" for k in blocks] + ["pmin:0.75", "entropy:0.3", "cumulative:0.3", "goodput"]
    out = [Mode("target alone", None, False, (StageConfig(),))]
    for draft, label in (("model", "SD"), ("ngram", "ngram")):
        out += [Mode(f"{label} {p}", draft, False, (StageConfig(lookahead=p),)) for p in policies]
    return out


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


GREEDY_PATH_TOLERANCE = 0.3  # logits; DESIGN section 3: near-ties flip between batched and single decodes


def greedy_path_share(target: Tier, prompt_ids: list[int], output: list[int]) -> float:
    """Share of generated tokens within GREEDY_PATH_TOLERANCE of the target's argmax, teacher-forced in one
    pass: 100% for a correct lossless greedy mode, lower where fuzzy acceptance let other tokens through."""
    if not output:
        return 1.0
    rows = target.score([*prompt_ids, *output], len(output) + 1)[:-1]
    deficit = rows.max(axis=1) - rows[np.arange(len(output)), output]
    return float((deficit < GREEDY_PATH_TOLERANCE).mean())


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
@click.option("--suite", default="all", type=click.Choice([*PROMPTS, "all"]), show_default=True)
@click.option("--sweep", default="modes", type=click.Choice(["modes", "lookahead"]), show_default=True)
@click.option("--limit", default=0, help="Prompts per suite (0 = all).")
@click.option("--json-out", default=None, help="Also write the rows as JSON here.")
def main(
    target: str,
    draft: str,
    tokens: int,
    repeats: int,
    blocks: str,
    taus: str,
    suite: str,
    sweep: str,
    limit: int,
    json_out: str | None,
) -> None:
    config = TierConfig(n_ctx=2048)
    t_tier, d_tier = Tier(resolve(target), config), Tier(resolve(draft), config)
    t_tier.check_compatible(d_tier)
    block_lengths = tuple(int(b) for b in blocks.split(","))
    if sweep == "lookahead":
        all_modes = lookahead_sweep(block_lengths)
    else:
        all_modes = modes(block_lengths, tuple(float(t) for t in taus.split(",")))
    prompts = [(s, p) for s, ps in PROMPTS.items() if suite in (s, "all") for p in ps[: limit or None]]
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
                pyr = pyramid(m)
                out = pyr.generate(prompt, max_tokens=tokens)
                rate.setdefault((m.name, i), []).append(out.stats.tokens_per_second)
                path = greedy_path_share(t_tier, pyr.encode(prompt), out.token_ids)
                result[(m.name, i)] = {"ids": out.token_ids, "stats": out.stats.summary(), "path": path}
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
                    "greedy_path": statistics.mean(result[(m.name, i)]["path"] for i in idx),
                }
            )
    click.echo(
        f"{t_tier.path.name} <- {d_tier.path.name}; {tokens} tokens greedy; {platform.machine()}, "
        f"{t_tier.n_threads} threads"
    )
    click.echo(
        "| mode | suite | tok/s | ratio (min-max) | acceptance per stage | on greedy path "
        "| agreement prefix / tokens |"
    )
    click.echo("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = ", ".join(f"{a:.0%}" for a in r["acceptance"]) if r["mode"] != "target alone" else "-"
        click.echo(
            f"| {r['mode']} | {r['suite']} | {r['tok_s']:.1f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-"
            f"{r['ratio_max']:.2f}) | {acc} | {r['greedy_path']:.0%} | {r['prefix_agreement']:.0%} / "
            f"{r['token_agreement']:.0%} |"
        )
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
