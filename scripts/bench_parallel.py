"""Throughput of `edge-spec batch --parallel N`, with and without drafts, against the sequential target alone.

    python scripts/bench_parallel.py --target qwen-1.5b --draft qwen-0.5b --max-tokens 32

Writes the 28 rewrite prompts and the first 20 MT-bench questions as one batch input, runs `edge-spec batch`
once per configuration (each a fresh process, as a user runs it; the calibration cache off), and prints a
markdown table: generated tokens per second over the whole job (the batch's own report, model loading
excluded) and the ratio to the sequential target alone (or to `--base`), with the target's block lengths by
batch size. The base runs first and again last (the ratios use their mean), and before each run a probe
times the target's decode of one token and of one token each of four sequences (medians of 7), so that a
drifting machine shows in the table.

`--lone` measures instead what decoding through the engine costs a generation alone: the same prompts one
at a time, alternating a pyramid loaded for one sequence (the direct path) and one loaded for two (every
round through the engine thread), and prints the median ratio of their decode speeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from edge_spec.backend import Tier, TierConfig
from edge_spec.models import resolve
from edge_spec.suites import load_suite

REPORT = re.compile(r"(\d+) tokens generated, ([\d.]+) tok/s")


def prompts(n_rewrite: int, n_chat: int) -> list[dict]:
    suites = [*load_suite("rewrite", n_rewrite), *load_suite("chat", n_chat)]
    return [{"id": p.id, "prompt": p.text, "raw": p.raw} for p in suites]


def run_batch(jobs: Path, target: str, draft: str, parallel: int, max_tokens: int) -> dict:
    """One `edge-spec batch` run: its tok/s and the target stage's block lengths by batch size."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        cmd = [sys.executable, "-m", "edge_spec", "batch", str(jobs), str(out), "-m", target]
        cmd += [
            "--draft",
            draft,
            "--parallel",
            str(parallel),
            "-n",
            str(max_tokens),
            "--no-calibration-cache",
        ]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        found = REPORT.search(done.stderr)
        assert found, done.stderr[-500:]
        by_batch: dict[str, Counter[str]] = {}
        for line in out.read_text().splitlines():
            stages = json.loads(line)["stats"]["stages"]
            if stages:
                top = stages[-1]
                for b, ks in top.get("block_lengths_by_batch", {"1": top["block_length_histogram"]}).items():
                    by_batch.setdefault(str(b), Counter()).update({str(k): n for k, n in ks.items()})
    return {
        "draft": draft,
        "parallel": parallel,
        "tokens": int(found[1]),
        "tok_s": float(found[2]),
        "wall_s": round(wall, 1),
        "k_by_batch": {b: dict(sorted(ks.items(), key=lambda kv: int(kv[0]))) for b, ks in by_batch.items()},
    }


def probe(tier: Tier) -> str:
    """The machine's state now: milliseconds `tier` takes to decode 1 token, and 1 token each of 4
    sequences (medians of 7, after 96 cached tokens)."""
    prefix = list(range(1000, 1096))  # any 96 tokens: the cost, not the text, is measured
    for s in range(4):
        tier.score(prefix, seq=s)
    ms = {}
    for n in (1, 4):
        times = []
        for i in range(7):
            t0 = time.perf_counter()
            tier.score_many([(s, [*prefix, 100 + i], 1) for s in range(n)])
            times.append(time.perf_counter() - t0)
        ms[n] = 1000 * statistics.median(times)
    return f"{ms[1]:.0f} / {ms[4]:.0f}"


def table(rows: list[dict], base: float) -> str:
    lines = [
        "| draft | N | tok/s | x base | probe ms (1 / 4x1) | target k by batch size |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ks = "; ".join(
            f"{b}: " + ", ".join(f"k{k} {n}" for k, n in hist.items())
            for b, hist in sorted(r["k_by_batch"].items())
        )
        lines.append(
            f"| {r['draft']} | {r['parallel']} | {r['tok_s']:.2f} | {r['tok_s'] / base:.2f} | {r['probe']} "
            f"| {ks or '-'} |"
        )
    return "\n".join(lines)


def lone(target: str, draft: str, max_tokens: int, jobs: list[dict], repeats: int) -> None:
    from edge_spec.api import Pyramid

    opened = {n: Pyramid.open(target, draft=draft, parallel=n, calibration_cache=False) for n in (1, 2)}
    ratios = []
    for _ in range(repeats):
        for job in jobs:
            speed = {}
            for n, pyr in opened.items():
                r = pyr.generate(job["prompt"], max_tokens=max_tokens, raw=job["raw"])
                speed[n] = r.stats.tokens_per_second
            ratios.append(speed[2] / speed[1])
    for pyr in opened.values():
        pyr.close()
    q = statistics.quantiles(ratios, n=4)
    print(
        f"lone generation through the engine / direct: median {statistics.median(ratios):.3f} "
        f"(quartiles {q[0]:.3f}-{q[2]:.3f}, {len(ratios)} pairs)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen-1.5b")
    ap.add_argument("--draft", action="append", help="drafts besides none and ngram (repeatable)")
    ap.add_argument("--parallel", default="1,2,4,8")
    ap.add_argument("--configs", help="DRAFT:N,... to run instead of every draft at every --parallel")
    ap.add_argument("--base", default="none:1", help="DRAFT:N the ratios are to (run first and last)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rewrite", type=int, default=28, help="rewrite prompts (of 28)")
    ap.add_argument("--chat", type=int, default=20, help="MT-bench questions (of 80)")
    ap.add_argument(
        "--lone", action="store_true", help="measure a lone generation through the engine instead"
    )
    ap.add_argument("--repeats", type=int, default=2, help="--lone: passes over the prompts")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    jobs = prompts(args.rewrite, args.chat)
    if args.lone:
        lone(args.target, (args.draft or ["ngram"])[0], args.max_tokens, jobs, args.repeats)
        return
    configs = [(d, int(n)) for d in ["none", "ngram", *(args.draft or [])] for n in args.parallel.split(",")]
    if args.configs:
        configs = [(d, int(n)) for d, n in (c.rsplit(":", 1) for c in args.configs.split(","))]
    draft, n = args.base.rsplit(":", 1)
    base_config = (draft, int(n))
    configs = [base_config, *(c for c in configs if c != base_config), base_config]
    tier = Tier(resolve(args.target), TierConfig(n_ctx=128, n_seq=4))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
        for draft, n in configs:
            state = probe(tier)
            rows.append({**run_batch(path, args.target, draft, n, args.max_tokens), "probe": state})
            print(json.dumps(rows[-1]), flush=True)
    tier.close()
    base = statistics.mean(r["tok_s"] for r in (rows[0], rows[-1]))
    print(f"{args.base}: {rows[0]['tok_s']:.2f} first, {rows[-1]['tok_s']:.2f} last tok/s")
    print(table(rows, base))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
