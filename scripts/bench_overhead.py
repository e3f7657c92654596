#!/usr/bin/env python3
"""Python orchestration overhead: edge-spec's one-tier loop against llama-cpp-python's own `Llama` generate.

Both run greedy on the same model, prompt, context and threads, interleaved, in one process. Decode speed
is (tokens - 1) / (time from the first generated token to the last), so prefill is left out of both.
Also reports edge-spec's own measure: the share of decode time spent outside llama_decode.

    python scripts/bench_overhead.py                       # embedded default model (smollm2-135m)
    python scripts/bench_overhead.py --model qwen-1.5b --tokens 128 --repeats 3

This script imports llama_cpp directly for the peer baseline; the product itself only does in backend.py.
"""

from __future__ import annotations

import json
import statistics
import time

import click
import llama_cpp

from edge_spec.api import Pyramid
from edge_spec.backend import _use_extra_buffer_types
from edge_spec.models import DEFAULT_MODEL, resolve

PROMPT = "def fibonacci(n):\n    "


def _patch_model_params() -> None:
    """`Llama` builds its own model params; apply the same AMX guard edge-spec applies to its tiers."""
    default = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        p = default()
        p.use_extra_bufts = _use_extra_buffer_types()
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params


def _decode_rate(pieces: object) -> tuple[int, float]:
    """Tokens and decode tokens/s of a stream of generated pieces (one per token)."""
    n, first = 0, 0.0
    for _ in pieces:  # type: ignore[attr-defined]
        n += 1
        if n == 1:
            first = time.perf_counter()
    return n, (n - 1) / (time.perf_counter() - first) if n > 1 else 0.0


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="GGUF path or carried model name.")
@click.option("--tokens", default=128, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--ctx", default=2048, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(model: str, tokens: int, repeats: int, ctx: int, as_json: bool) -> None:
    path = resolve(model)
    _patch_model_params()
    ours = Pyramid.open(path, ctx=ctx, batch=512)
    theirs = llama_cpp.Llama(
        str(path), n_ctx=ctx, n_batch=512, n_threads=ours.target.n_threads, verbose=False
    )
    rows: dict[str, list[float]] = {
        "edge-spec": [],
        "llama-cpp-python Llama": [],
        "python overhead share": [],
    }
    for _ in range(repeats + 1):  # the first round warms both up and is dropped
        stream = theirs.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True)
        n_theirs, rate_theirs = _decode_rate(stream)
        n_ours, rate_ours = _decode_rate(ours.stream(PROMPT, max_tokens=tokens, raw=True))
        summary = ours.last_result.stats.summary() if ours.last_result else {}
        rows["edge-spec"].append(rate_ours)
        rows["llama-cpp-python Llama"].append(rate_theirs)
        rows["python overhead share"].append(float(summary.get("python_overhead_share") or 0.0))
    result = {k: statistics.median(v[1:]) for k, v in rows.items()}
    result["ratio edge-spec / Llama"] = result["edge-spec"] / result["llama-cpp-python Llama"]
    result |= {"model": path.name, "tokens": tokens, "repeats": repeats, "generated": [n_ours, n_theirs]}
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"model {path.name}, {tokens} tokens greedy, median of {repeats} interleaved runs")
    click.echo("| loop | decode tok/s |\n| --- | --- |")
    click.echo(f"| edge-spec (1 tier) | {result['edge-spec']:.2f} |")
    click.echo(f"| llama-cpp-python Llama | {result['llama-cpp-python Llama']:.2f} |")
    click.echo(f"ratio edge-spec / Llama: {result['ratio edge-spec / Llama']:.3f}")
    click.echo(f"edge-spec time outside llama_decode: {result['python overhead share']:.1%}")


if __name__ == "__main__":
    main()
