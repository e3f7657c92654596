"""Every option the commands share, declared once: its flags (llama.cpp's short aliases beside the long
names), default, help and choices. `edge-spec run`, `batch`, `bench`, `plan` and `derive` build their click
options from here, and `LoadOptions` (the API's keywords) takes its defaults from here, so a default is
written in one place. Options only one command has are declared with that command.

Imported by the command line at start-up: no llama_cpp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from edge_spec.acceptance import DIVERGENCES
from edge_spec.errors import ConfigError
from edge_spec.lookahead import DEFAULT_LOOKAHEAD, LOOKAHEAD_HELP

NGRAM = "ngram"
"""The draft reference that selects the model-free prompt-lookup proposer: the default draft."""
NO_DRAFT = "none"
"""The draft reference that selects no draft (the target alone)."""

CACHE_TYPES = ("f16", "q8_0", "q4_0", "f32")
"""KV cache element types (edge_spec.backend maps each to llama.cpp's type)."""


@dataclass(frozen=True)
class Option:
    """One command-line option: `name` is its Python name (a LoadOptions field or Pyramid keyword)."""

    name: str
    flags: tuple[str, ...]  # the long name first, then short aliases
    default: Any
    help: str
    type: Any = None  # a click type; None = inferred from the default
    choices: tuple[str, ...] | None = None
    is_flag: bool = False


_DECLARED = (
    Option("preset", ("--preset",), None, "Preset (see edge-spec models): its tiers and settings."),
    Option(
        "target_ref",
        ("--target", "-m"),
        None,
        "Target model: GGUF path, carried model name, Hub reference or preset (default: the embedded model).",
    ),
    Option(
        "draft_ref",
        ("--draft", "-md"),
        NGRAM,
        "Draft tier: a model reference, 'ngram' (prompt lookup, free: goodput drops it where it cannot pay) "
        "or 'none'. Repeat it to give candidates: goodput picks one per round.",
    ),
    Option("qualifier_ref", ("--qualifier",), None, "Qualifier tier between draft and target."),
    Option(
        "budget", ("--budget",), None, "Memory budget (8GB): place tiers, context, KV cache as `plan` does."
    ),
    Option("max_tokens", ("--max-tokens", "-n"), 256, "Most tokens to generate."),
    Option("temperature", ("--temperature", "--temp"), 0.0, "0 = greedy."),
    Option("top_k", ("--top-k",), 0, "Sample from the k likeliest tokens (0 = off)."),
    Option("top_p", ("--top-p",), 1.0, "Nucleus sampling mass (1 = off)."),
    Option("min_p", ("--min-p",), 0.0, "Drop tokens below min_p x the top probability."),
    Option("seed", ("--seed",), None, "Seed for sampling (default: random; bench: 0).", type=int),
    Option("stop", ("--stop",), (), "Stop when this text appears (repeatable).", type=str),
    Option("ctx", ("--ctx", "-c"), 4096, "Context length in tokens (capped at the models' training length)."),
    Option("batch", ("--batch",), 512, "Most tokens per llama_decode call."),
    Option("gpu_layers", ("--gpu-layers", "-ngl"), -1, "Layers on the GPU (-1 = all when present)."),
    Option(
        "cache_type",
        ("--cache-type",),
        "f16",
        "KV cache type (quantized needs flash attention).",
        choices=CACHE_TYPES,
    ),
    Option("flash_attn", ("--flash-attn/--no-flash-attn",), None, "Flash attention (default: auto)."),
    Option("threads", ("--threads", "-t"), 0, "CPU threads (0 = every core this process may use)."),
    Option("accept", ("--accept",), "exact", "exact | fuzzy, or one per stage bottom-up: exact,fuzzy."),
    Option("tau_q", ("--tau-q",), 0.4, "Fuzzy threshold at the draft -> qualifier stage."),
    Option("tau_t", ("--tau-t",), 0.5, "Fuzzy threshold at the target stage."),
    Option("divergence", ("--divergence",), "js", "Divergence of fuzzy acceptance.", choices=DIVERGENCES),
    Option(
        "lookahead",
        ("--lookahead",),
        DEFAULT_LOOKAHEAD,
        f"Block length policy: {LOOKAHEAD_HELP}; one, or one per stage bottom-up (a,b).",
    ),
    Option(
        "draft_block",
        ("--draft-block",),
        None,
        "Fixed tokens drafted per verification (= --lookahead fixed:K at the bottom stage).",
        type=int,
    ),
    Option(
        "qualifier_block",
        ("--qualifier-block",),
        None,
        "Fixed tokens the qualifier hands the target (fixed:K at the top stage).",
        type=int,
    ),
    Option(
        "calibration_cache",
        ("--calibration-cache/--no-calibration-cache",),
        True,
        "Start from the costs and acceptance goodput measured in earlier runs with these models and "
        "settings on this machine, and keep what it measures (EDGE_SPEC_CALIBRATION=off: never).",
    ),
    Option("raw", ("--raw",), False, "Send the prompt as-is, without the chat template.", is_flag=True),
    Option(
        "parallel",
        ("--parallel", "-np"),
        None,
        "Sequences decoded together in one context, each with its own --ctx (default: 1; batch: what the "
        "memory plan and the cores suit, see README).",
        type=int,
    ),
)
OPTIONS: dict[str, Option] = {o.name: o for o in _DECLARED}
"""The shared options by Python name."""

TIER = ("ctx", "batch", "gpu_layers", "cache_type", "flash_attn", "threads")
"""How every tier loads."""
LOAD = (*TIER, "calibration_cache")
"""How a pyramid loads, besides its models and stages."""
MODELS = ("target_ref", "draft_ref", "qualifier_ref")
REPEATABLE = ("draft_ref", "stop")
"""Options every command takes repeatedly (--draft: candidates; --stop: several strings)."""
STAGES = ("accept", "tau_q", "tau_t", "divergence", "lookahead", "draft_block", "qualifier_block")
GENERATION = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "raw")
"""The options of one generation (`Pyramid.stream`'s keywords)."""


def draft_list(refs: str | Sequence[str] | None) -> list[str]:
    """--draft values (one, or several candidates) as model references: [] for 'none' or None (no draft).
    Raises ConfigError on 'none' beside other drafts and on a draft given twice."""
    given = [] if refs is None else [refs] if isinstance(refs, str) else list(refs)
    if NO_DRAFT in given:
        if len(given) > 1:
            raise ConfigError("draft (--draft) 'none' cannot be combined with other drafts")
        return []
    twice = sorted({r for r in given if given.count(r) > 1})
    if twice:
        raise ConfigError(f"draft (--draft) {twice[0]!r} is given twice")
    return given


def draft_roles(n: int) -> list[str]:
    """The roles of n candidate drafts in the memory plan and tier configs: draft, draft 2, ..."""
    return ["draft" if i == 0 else f"draft {i + 1}" for i in range(n)]


def default(name: str) -> Any:
    """The declared default of option `name`."""
    return OPTIONS[name].default


def click_option(
    name: str, *, dest: str | None = None, multiple: bool = False, **changes: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option from the declaration of `name`. `multiple`: repeatable, every value a sweep point
    (the declared default then only names the value used when none is given); `dest`: the parameter name;
    `changes`: click keywords a command must set otherwise (e.g. `required`), never a default or help."""
    o = OPTIONS[name]
    shown = not (o.default is None or o.default is False or o.default == ())
    kwargs: dict[str, Any] = {"help": o.help, "show_default": shown}
    if o.choices is not None:
        kwargs["type"] = click.Choice(o.choices)
    elif o.type is not None:
        kwargs["type"] = o.type
    if o.is_flag:
        kwargs["is_flag"] = True
    elif multiple or name in REPEATABLE:
        kwargs.update(multiple=True, show_default=False)
        if o.default not in (None, ()):
            kwargs["help"] = f"{o.help} Repeatable; default {o.default}."
            kwargs["default"] = (o.default,)
        elif name != "stop":
            kwargs["help"] = f"{o.help} Repeatable."
        if kwargs.get("type") is None and o.default is not None:
            kwargs["type"] = type(o.default)
    else:
        kwargs["default"] = o.default
    return click.option(*o.flags, dest or name, **{**kwargs, **changes})


def click_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Several declared options, in the order given (as --help lists them)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            fn = click_option(name)(fn)
        return fn

    return decorate
