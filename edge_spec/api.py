"""The Python API: load a pyramid of tiers once, then generate, stream or answer chat completions.

    from edge_spec import Pyramid
    with Pyramid.open("qwen-1.5b", draft="qwen-0.5b", lookahead="goodput") as pyr:
        print(pyr.generate("Write a haiku about GPUs", max_tokens=64).text)

`LoadOptions` is the one place where the CLI's option names (--ctx, --tau-q, ...) become tier and stage
settings: `edge-spec run`, `edge-spec batch` and `Pyramid.open` all go through it.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edge_spec import calibration, checks
from edge_spec.backend import MAX_THREADS, Tier, TierConfig
from edge_spec.calibration import CalibrationFile
from edge_spec.chat import Message, as_messages, render
from edge_spec.checks import stage_count
from edge_spec.engine import Engine, EngineThread, Task
from edge_spec.errors import ConfigError, ContextOverflowError, EdgeSpecError
from edge_spec.lookahead import ChoiceFactory, PolicyFactory, parse_lookahead
from edge_spec.options import GENERATION, default, draft_list, draft_roles
from edge_spec.pyramid import NGRAM, Draft, StageConfig, Verifier, assemble, chain, commit_rounds
from edge_spec.sampling import SamplingConfig
from edge_spec.stats import GenerationStats
from edge_spec.text import TextAssembler

GENERATE_OPTIONS = GENERATION
"""The per-generation options of `Pyramid.stream` / `generate`, named as the CLI's."""

Ref = str | os.PathLike[str]
Prompt = str | Sequence[Message]
K = TypeVar("K")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a pyramid, named as the CLI's options (--tau-q -> tau_q), with their declared defaults
    (`edge_spec.options`).

    Per-stage values (accept, lookahead) are one value for every stage or a comma-separated value per
    stage, bottom-up: draft -> qualifier (with 3 tiers), then -> target.
    """

    ctx: int = default("ctx")  # context length in tokens (prompt + generated), capped at the training length
    batch: int = default("batch")  # most tokens per llama_decode call
    gpu_layers: int = default("gpu_layers")  # layers on the GPU; -1 = all when a GPU backend exists
    cache_type: str = default("cache_type")  # KV cache type: f16 | q8_0 | q4_0 | f32 (quantized: flash attn)
    flash_attn: bool | None = default("flash_attn")  # None = llama.cpp decides
    threads: int = default("threads")  # CPU threads; 0 = every core this process may use
    calibration_cache: bool = default("calibration_cache")  # reuse and keep goodput's measurements
    parallel: int | None = default("parallel")  # sequences decoded together (None = 1), each with its own ctx
    accept: str = default("accept")  # exact | fuzzy, or one per stage ("exact,fuzzy" = PSD_A)
    tau_q: float = default("tau_q")  # fuzzy threshold at the draft -> qualifier stage
    tau_t: float = default("tau_t")  # fuzzy threshold at the target stage
    divergence: str = default("divergence")  # js (FSD form) | js-sym | kl | tv
    lookahead: str = default("lookahead")  # block length policy, or one per stage
    draft_block: int | None = None  # fixed block at the bottom stage (= lookahead fixed:K there)
    qualifier_block: int | None = None  # fixed block the qualifier hands the target (3 tiers only)

    def __post_init__(self) -> None:
        """Every option's type and range, named as the CLI's; per-stage values are checked by `stages`."""
        checks.integer("ctx", self.ctx)
        checks.integer("batch", self.batch)
        checks.integer("gpu_layers", self.gpu_layers)
        checks.text("cache_type", self.cache_type)
        checks.flag("flash_attn", self.flash_attn, optional=True)
        checks.integer("threads", self.threads, least=0, most=MAX_THREADS)
        checks.flag("calibration_cache", self.calibration_cache)
        checks.optional_integer("parallel", self.parallel, least=1)
        for option in ("accept", "divergence", "lookahead"):
            checks.text(option, getattr(self, option))
        checks.number("tau_q", self.tau_q, least=0)
        checks.number("tau_t", self.tau_t, least=0)
        checks.optional_integer("draft_block", self.draft_block, least=0)
        checks.optional_integer("qualifier_block", self.qualifier_block, least=0)
        self.tier_config()

    def tier_config(self) -> TierConfig:
        """How to load each tier."""
        return TierConfig(
            self.ctx,
            self.batch,
            self.gpu_layers,
            self.cache_type,
            self.flash_attn,
            self.threads,
            n_seq=self.parallel or 1,
        )

    def stages(self, n_stages: int) -> list[StageConfig]:
        """Stage settings, bottom-up, for `n_stages` verification stages (1 for a lone target)."""
        rules = _per_stage("accept", self.accept, n_stages)
        lookaheads = _per_stage("lookahead", self.lookahead, n_stages)
        if self.draft_block is not None:
            lookaheads[0] = f"fixed:{self.draft_block}"
        if self.qualifier_block is not None:
            if n_stages < 2:
                raise ConfigError("qualifier_block (--qualifier-block) needs a qualifier (--qualifier PATH)")
            lookaheads[1] = f"fixed:{self.qualifier_block}"
        taus = [self.tau_q, self.tau_t][-n_stages:]
        return [
            StageConfig(rule, tau, self.divergence, lookahead=look)
            for rule, tau, look in zip(rules, taus, lookaheads, strict=True)
        ]


@dataclass(frozen=True)
class Generation:
    """The checked options of one generation (see `Pyramid.stream`)."""

    max_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...]
    raw: bool


def check_generation(
    *,
    max_tokens: int = default("max_tokens"),
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    raw: bool = False,
    sampling: SamplingConfig | None = None,
) -> Generation:
    """The options of `Pyramid.stream`, checked without a model: ConfigError names the first bad one."""
    checks.integer("max_tokens", max_tokens, least=1)
    given = {
        "temperature": None if temperature is None else checks.number("temperature", temperature, least=0),
        "top_k": checks.optional_integer("top_k", top_k, least=0),
        "top_p": None if top_p is None else checks.number("top_p", top_p),
        "min_p": None if min_p is None else checks.number("min_p", min_p),
        "seed": checks.optional_integer("seed", seed, least=0),
    }
    given = {k: v for k, v in given.items() if v is not None}
    if sampling is not None:
        if given:
            raise ConfigError(f"give either sampling= or {', '.join(given)}, not both")
        if not isinstance(sampling, SamplingConfig):
            raise ConfigError(f"sampling must be a SamplingConfig, got {sampling!r}")
        checks.optional_integer("seed", sampling.seed, least=0)
    stops = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise ConfigError(f"{checks.named('stop')} must be a string or a list of strings, got {stop!r}")
    checks.flag("raw", raw)
    return Generation(max_tokens, sampling or SamplingConfig(**given), tuple(stops), raw)


def _per_stage(option: str, value: str, n_stages: int) -> list[str]:
    """One value for every stage, or a comma-separated value per stage, bottom-up."""
    values = [v.strip() for v in value.split(",")]
    if len(values) == 1:
        values *= n_stages
    if len(values) != n_stages:
        raise ConfigError(f"{option}: give one value or one per stage ({n_stages}), bottom-up")
    return values


@dataclass
class Result:
    """One finished generation. finish_reason: stop (EOS or a stop string), length (max tokens), context
    (the context window is full), interrupted (Ctrl-C)."""

    text: str
    token_ids: list[int]
    stats: GenerationStats = field(repr=False)

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "token_ids": self.token_ids, "stats": self.stats.summary()}


class _Transcript:
    """One generation's output as rounds commit tokens: its ids and text, up to the end of generation or a
    stop string (`finish_reason` then becomes "stop")."""

    def __init__(self, target: Tier, stop: Sequence[str], finish_reason: str) -> None:
        self.target = target
        self.ids: list[int] = []
        self.text = TextAssembler(stop)
        self.finish_reason = finish_reason

    @property
    def ended(self) -> bool:
        return self.finish_reason == "stop"

    def feed(self, tokens: list[int]) -> list[str]:
        """Take a round's committed tokens; returns the text pieces they complete."""
        pieces = []
        for token in tokens:
            if self.target.is_eog(token):
                self.finish_reason = "stop"
                break
            piece = self.text.feed(self.target.piece(token))
            self.ids.append(token)
            if piece:
                pieces.append(piece)
            if self.text.stopped:
                self.finish_reason = "stop"
                break
        return pieces


class Pyramid:
    """Loaded tiers, bottom to top: [draft] -> [qualifier] -> target.

    With `calibration_cache` (Pyramid.open's default), goodput starts from what it measured in earlier
    processes with the same models and settings on this machine, and saves what it measures after each
    generation (`edge_spec.calibration`).

    Loaded with `parallel=N` (N > 1, LoadOptions.parallel), up to N generations are decoded together by
    one engine thread (`edge_spec.engine`): `stream` / `generate` calls from several threads run at once
    (more wait their turn), and `generate_each` / `generate_many` run a list of prompts N at a time. Every
    tier then holds N sequences of `ctx` tokens each.

    Loaded for one sequence (the default), one generation at a time: a call made while another generation
    holds the pyramid (another thread, or an unfinished `stream` in this one) raises EdgeSpecError at once
    rather than waiting, so a caller never blocks on a stream it forgot to finish. `close()` (or leaving
    the `with` block) frees every tier; a generation running in another thread stops at its next round
    with EdgeSpecError, and every later call raises it too.
    """

    def __init__(
        self,
        target: Tier,
        qualifier: Tier | None = None,
        draft: Draft = None,
        stages: Sequence[StageConfig] | None = None,
        calibration_cache: bool = False,
    ) -> None:
        candidates = draft if isinstance(draft, list) else [] if draft is None else [draft]
        for d in candidates:
            if not (isinstance(d, Tier) or d == NGRAM):
                raise ConfigError(f"a draft must be a model or {NGRAM!r}, got {d!r}")
        if isinstance(draft, list) and len(draft) < 2:
            draft = draft[0] if draft else None  # one candidate is a plain draft
        n_stages = stage_count(draft, qualifier)
        self.target, self.qualifier, self.draft = target, qualifier, draft
        self.models = [t for t in (*candidates, qualifier, target) if isinstance(t, Tier)]
        for i, upper in enumerate(self.models):  # every pair: compatibility is not transitive
            for lower in self.models[:i]:
                upper.check_compatible(lower)
        self.stages = list(stages) if stages is not None else [StageConfig()] * n_stages
        if len(self.stages) != n_stages:
            raise ConfigError(f"{len(self.models)} tiers need {n_stages} stage settings")
        self._verifiers = [t for t in (qualifier, target) if t is not None]
        self._policies: list[PolicyFactory | ChoiceFactory] = [  # goodput's measurements persist
            ChoiceFactory.of(s.lookahead, len(draft))
            if i == 0 and isinstance(draft, list)
            else parse_lookahead(s.lookahead)
            for i, s in enumerate(self.stages)
        ]
        self._measured = [m for p in self._policies for m in p.measured]  # goodput's, or None, per policy
        self._calibration: CalibrationFile | None = None
        if draft is not None and calibration.enabled(calibration_cache) and any(self._measured):
            roles = {"draft": draft, "qualifier": qualifier, "target": target}
            self._calibration = CalibrationFile(calibration.pyramid_key(roles, self.stages))
            self._calibration.load(self._measured)
        self.parallel = min(t.n_seq for t in self.models)
        """Sequences decoded together (every tier holds that many)."""
        self._lock = threading.Lock()  # held by the one generation under way, from start to end
        self._computing = threading.Lock()  # held while that generation computes (not while it yields)
        self._engine: EngineThread | None = None  # decodes generations together (parallel > 1)
        self._starting = threading.Lock()  # held while the engine thread starts
        self._host = self  # the pyramid whose engine thread decodes this one's generations (`with_stages`)
        self._closed = False
        self.last_result: Result | None = None
        """The latest generation, also when it was interrupted (Ctrl-C) before returning."""

    @classmethod
    def open(
        cls,
        target: Ref | None = None,
        *,
        draft: Ref | Sequence[Ref] | None = NGRAM,
        qualifier: Ref | None = None,
        options: LoadOptions | None = None,
        tier_configs: Mapping[str, TierConfig] | None = None,
        **overrides: Any,
    ) -> Pyramid:
        """Load a pyramid as `edge-spec run` does: the one way to open one (the constructor wraps tiers
        already loaded). Models are references (GGUF paths or carried model names, see
        `edge_spec.models.resolve`); the draft is prompt lookup ("ngram") unless given ("none" or None: no
        draft; a list: candidates, one chosen per round by goodput); no target loads the default model.
        Options are `LoadOptions` fields, given as `options` and/or keywords (`ctx=2048, accept="fuzzy",
        tau_t=0.3`). `tier_configs` maps "draft" (and "draft 2", ... for candidates) / "qualifier" /
        "target" to a config replacing the options' for that tier (the memory planner's placement). Tiers
        are checked for compatibility."""
        from edge_spec.models import DEFAULT_MODEL, resolve

        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(LoadOptions)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(LoadOptions))
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
        if options is not None and not isinstance(options, LoadOptions):
            raise ConfigError(f"options must be a LoadOptions, got {options!r}")
        given = [] if draft is None else [draft] if isinstance(draft, (str, os.PathLike)) else draft
        if not isinstance(given, (list, tuple)):
            raise ConfigError(f"draft must be a model reference or a list of them, got {draft!r}")
        for role, ref in (("target", target), *(("draft", d) for d in given), ("qualifier", qualifier)):
            if ref is not None and not isinstance(ref, (str, os.PathLike)):
                raise ConfigError(f"{role} must be a model reference (a path or a name), got {ref!r}")
        opts = dataclasses.replace(options or LoadOptions(), **overrides)
        drafts = draft_list([os.fspath(d) for d in given])
        stages = opts.stages(stage_count(drafts or None, qualifier))
        config, per_tier = opts.tier_config(), tier_configs or {}
        paths = [NGRAM if d == NGRAM else resolve(d) for d in drafts]
        q = None if qualifier is None else resolve(qualifier)
        target_path = resolve(target or DEFAULT_MODEL)
        loaded: list[Tier] = []
        try:

            def tier(path: Ref, role: str) -> Tier:
                loaded.append(Tier(path, per_tier.get(role, config)))
                return loaded[-1]

            roles = iter(draft_roles(len(paths)))  # the model drafts' roles, in order (as the planner's)
            below: list[Tier | str] = [p if p == NGRAM else tier(p, next(roles)) for p in paths]
            qualifier_tier = tier(q, "qualifier") if q is not None else None
            target_tier = tier(target_path, "target")
            return cls(target_tier, qualifier_tier, below, stages, opts.calibration_cache)
        except BaseException:
            for t in loaded:
                t.close()
            raise

    @property
    def n_ctx(self) -> int:
        """The context every tier can hold."""
        return min(t.n_ctx for t in self.models)

    @property
    def model(self) -> str:
        """The target's file name: the `model` of chat completions."""
        return self.target.path.name

    def _require_open(self) -> None:
        if self._closed:
            raise EdgeSpecError("this pyramid was closed; load it again to generate")

    def encode(self, prompt: str | Sequence[Message], raw: bool = False) -> list[int]:
        """Prompt tokens: a message list (or a bare prompt as one user message) through the target's chat
        template, or with `raw` the text as-is."""
        text = self.prompt_text(prompt, raw)
        t = self.target
        if raw:
            tokens = t.tokenize(text, add_bos=True, special=False)
        else:
            has_bos = bool(t.bos_text) and text.startswith(t.bos_text)
            tokens = t.tokenize(text, add_bos=not has_bos, special=True)
        if not tokens:
            raise ConfigError("the prompt is empty")
        return tokens

    def prompt_text(self, prompt: str | Sequence[Message], raw: bool = False) -> str:
        """The prompt as the target reads it: rendered through its chat template, or with `raw` as-is."""
        self._require_open()
        if raw:
            if not isinstance(prompt, str):
                raise ConfigError("a raw prompt must be a string")
            return prompt
        t = self.target
        return render(t.chat_template, as_messages(prompt), t.bos_text, t.eos_text)

    def stream(self, prompt: str | Sequence[Message], **options: Any) -> Generator[str, None, Result]:
        """Text pieces as tokens are committed; the generator's return value is the Result.

        `prompt` is a string (sent as one user message through the chat template, or as-is with `raw`) or
        a message list. Options (keywords, see `check_generation`): `max_tokens` (256), sampling by
        `temperature` (default 0 = greedy), `top_k`, `top_p`, `min_p`, `seed` (defaults as in
        SamplingConfig) or a whole `sampling` config instead, `stop` (a stop string or several), `raw`.
        The prompt and options are checked here, before the first piece is asked for: bad ones raise
        ConfigError and leave the pyramid as it was.
        """
        prompt_ids, max_new, g = self._checked(prompt, options)
        if self.parallel > 1:
            return self._together(prompt_ids, max_new, g)
        return self._locked(self._generate(prompt_ids, max_new, g.max_tokens, g.sampling, g.stop))

    def _checked(self, prompt: Prompt, options: Mapping[str, Any]) -> tuple[list[int], int, Generation]:
        """The prompt's tokens, the tokens it may generate and its checked options (see `stream`)."""
        g = check_generation(**_known(dict(options)))
        prompt_ids = self.encode(prompt, g.raw)
        room = self.n_ctx - len(prompt_ids)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt is {len(prompt_ids)} tokens but the context holds {self.n_ctx}; "
                "shorten it or raise --ctx"
            )
        return prompt_ids, min(g.max_tokens, room), g

    def _task(
        self,
        prompt_ids: list[int],
        max_new: int,
        g: Generation,
        emit: Callable[[str | Result | Exception], None],
    ) -> Task:
        """An engine task generating from `prompt_ids`; `emit` gets its text pieces, then its Result (or
        the exception that ended it), in the engine thread."""
        reason = "length" if max_new == g.max_tokens else "context"
        transcript = _Transcript(self.target, g.stop, reason)
        before: dict[str, float] = {}

        def build(slot: int) -> Verifier:
            return assemble(self.draft, self._verifiers, self.stages, self._policies, g.sampling, slot)

        def commit(tokens: list[int]) -> bool:
            for piece in transcript.feed(tokens):
                emit(piece)
            return not transcript.ended

        def on_end(task: Task) -> None:
            if task.error is not None or task.top is None:  # failed, or cancelled before it began
                emit(task.error or EdgeSpecError("the generation was cancelled before it began"))
                return
            tail = transcript.text.finish()
            if tail:
                emit(tail)
            stats = GenerationStats(
                prompt_tokens=len(prompt_ids),
                generated_tokens=len(transcript.ids),
                prefill_seconds=task.prefilled_at - task.admitted_at,
                decode_seconds=task.done_at - task.prefilled_at,
                finish_reason=transcript.finish_reason,
            )
            self._wrap_up(task.top, stats, before)
            emit(Result(transcript.text.text, transcript.ids, stats))

        def prefilled(_: Task) -> None:  # the tiers' clocks from here count the decode phase
            before.update(self._decode_clock())

        return Task(prompt_ids, max_new, build, commit, prefilled, on_end)

    def _decode_clock(self) -> dict[str, float]:
        """Seconds each tier has spent inside llama_decode since it loaded, by file name."""
        return {t.path.name: t.decode_seconds for t in self.models}

    def _wrap_up(self, top: Verifier, stats: GenerationStats, before: Mapping[str, float]) -> None:
        """Close a generation's accounts in `stats` (its generated tokens counted): each tier's decode
        seconds since `before` (`_decode_clock`), and per stage its policy told the generation's length,
        then summarised; then goodput's measurements are saved (calibration cache)."""
        stats.tier_seconds = {name: s - before[name] for name, s in self._decode_clock().items()}
        for v in chain(top):
            if v.stats is not None:
                v.policy.finish(stats.generated_tokens)
                v.stats.policy = v.policy.summary()
                stats.stages.append(v.stats)
        if self._calibration is not None:
            self._calibration.save(self._measured)

    def _submit(self, task: Task) -> None:
        """Hand `task` to the engine thread (started at the first use)."""
        host = self._host
        with host._starting:  # not _computing: the engine thread takes that one step after step
            host._require_open()
            if host._engine is None:
                host._engine = EngineThread(Engine(host.models, host.parallel), host._computing)
        host._engine.submit(task)

    def with_stages(self, stages: Sequence[StageConfig]) -> Pyramid:
        """A pyramid over these tiers with other stage settings (the server's per-request lookahead). Its
        generations join this pyramid's engine when it decodes several sequences; closing it frees nothing
        (close this one)."""
        view = Pyramid(self.target, self.qualifier, self.draft, stages)
        view._host = self
        return view

    def _together(self, prompt_ids: list[int], max_new: int, g: Generation) -> Generator[str, None, Result]:
        """`stream` for a pyramid decoding several sequences: the engine thread generates, this generator
        relays its pieces; closing it early cancels the generation."""
        out: queue.SimpleQueue[str | Result | Exception] = queue.SimpleQueue()
        task = self._task(prompt_ids, max_new, g, out.put)
        self._submit(task)
        try:
            while True:
                item = out.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Result):
                    self.last_result = item
                    return item
                yield item
        finally:
            task.cancelled = True

    def generate_each(
        self, jobs: Iterable[tuple[K, Prompt, Mapping[str, Any]]]
    ) -> Iterator[tuple[K, Result | Exception]]:
        """Generate every job, (key, prompt, options as in `stream`), up to `parallel` at once, yielding
        (key, Result) as each finishes (not in order), or (key, exception) for a job whose prompt or
        options are bad or whose generation failed; the other jobs go on. Jobs are read as slots free up.
        Closing the iterator (or Ctrl-C) cancels the jobs under way."""
        if self.parallel == 1:
            for key, prompt, options in jobs:
                try:
                    yield key, self.generate(prompt, **options)
                except Exception as e:  # that job's error: the others go on
                    yield key, e
            return
        out: queue.SimpleQueue[tuple[int, Result | Exception]] = queue.SimpleQueue()
        under_way: dict[int, tuple[K, Task]] = {}  # by job number; only this thread changes it

        def ended() -> tuple[K, Result | Exception]:
            n, outcome = out.get()
            return under_way.pop(n)[0], outcome

        try:
            for n, (key, prompt, options) in enumerate(jobs):
                try:
                    prompt_ids, max_new, g = self._checked(prompt, options)
                except EdgeSpecError as e:
                    yield key, e
                    continue

                def emit(item: str | Result | Exception, n: int = n) -> None:
                    if not isinstance(item, str):
                        out.put((n, item))

                under_way[n] = (key, self._task(prompt_ids, max_new, g, emit))
                self._submit(under_way[n][1])
                while len(under_way) >= 2 * self.parallel or not out.empty():  # keep the engine fed
                    yield ended()
            while under_way:
                yield ended()
        finally:
            for _, task in under_way.values():
                task.cancelled = True

    def generate_many(self, prompts: Sequence[Prompt], **options: Any) -> list[Result]:
        """Generate for every prompt with the same options (as in `stream`), up to `parallel` at once; the
        results in the prompts' order. Every prompt is checked first: a bad one raises before anything is
        generated; a failed generation raises its error."""
        for prompt in prompts:
            self._checked(prompt, options)
        results: dict[int, Result] = {}
        for i, outcome in self.generate_each((i, p, options) for i, p in enumerate(prompts)):
            if isinstance(outcome, Exception):
                raise outcome
            results[i] = outcome
        return [results[i] for i in range(len(prompts))]

    def _locked(self, generation: Generator[str, None, Result]) -> Generator[str, None, Result]:
        """Run `generation` holding the pyramid, and `_computing` whenever it is not waiting at a yield."""
        if not self._lock.acquire(blocking=False):
            raise EdgeSpecError("this pyramid is already generating: one generation at a time per pyramid")
        try:
            while True:
                with self._computing:
                    self._require_open()
                    try:
                        piece = next(generation)
                    except StopIteration as done:
                        return done.value
                yield piece
        finally:
            generation.close()
            self._lock.release()

    def _generate(
        self,
        prompt_ids: list[int],
        max_new: int,
        max_tokens: int,
        sampling: SamplingConfig,
        stop: Sequence[str],
    ) -> Generator[str, None, Result]:
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        t0 = time.perf_counter()
        try:
            if len(prompt_ids) > 1:  # the tiers below catch up when first asked to draft (Verifier.round)
                self.target.score(prompt_ids[:-1], 1)
        except KeyboardInterrupt:
            stats.finish_reason = "interrupted"
            stats.prefill_seconds = time.perf_counter() - t0
            self.last_result = Result("", [], stats)
            raise
        t1 = time.perf_counter()
        stats.prefill_seconds = t1 - t0
        before = self._decode_clock()
        top = assemble(self.draft, self._verifiers, self.stages, self._policies, sampling)
        transcript = _Transcript(self.target, stop, "length" if max_new == max_tokens else "context")
        out_ids, text = transcript.ids, transcript.text
        try:
            for tokens in commit_rounds(top, prompt_ids, max_new):
                self._require_open()  # closed from another thread: stop before touching freed tiers
                yield from transcript.feed(tokens)
                if transcript.ended:
                    break
        except KeyboardInterrupt:
            transcript.finish_reason = "interrupted"
            raise
        finally:
            stats.finish_reason = transcript.finish_reason
            stats.decode_seconds = time.perf_counter() - t1
            stats.generated_tokens = len(out_ids)
            self._wrap_up(top, stats, before)
            self.last_result = Result(text.text, out_ids, stats)
        tail = text.finish()
        if tail:
            yield tail
        return Result(text.text, out_ids, stats)

    def generate(self, prompt: str | Sequence[Message], **options: Any) -> Result:
        """Generate to the end and return the Result (prompt and options as in `stream`)."""
        gen = self.stream(prompt, **options)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def chat_completion(self, messages: str | Sequence[Message], **options: Any) -> dict[str, Any]:
        """An OpenAI-style chat completion (object "chat.completion") answering `messages`; options as in
        `stream` (OpenAI's max_tokens, temperature, top_p, seed and stop carry over). finish_reason is
        "stop" (end of text or a stop string) or "length" (max_tokens or the context window)."""
        result = self.generate(messages, **options)
        prompt_tokens = result.stats.prompt_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": "stop" if result.finish_reason == "stop" else "length",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(result.token_ids),
                "total_tokens": prompt_tokens + len(result.token_ids),
            },
        }

    def close(self) -> None:
        """Free every tier. Safe to call twice; waits for a generation computing in another thread to
        reach the end of its round (it then raises EdgeSpecError)."""
        if self._host is not self:
            return
        self._closed = True
        if self._engine is not None:
            self._engine.stop(EdgeSpecError("this pyramid was closed; load it again to generate"))
        with self._computing:
            for tier in self.models:
                tier.close()

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _known(options: dict[str, Any]) -> dict[str, Any]:
    """`options`, unless one is not an option of `Pyramid.stream` (ConfigError naming the known ones)."""
    unknown = sorted(set(options) - {*GENERATE_OPTIONS, "sampling"})
    if unknown:
        known = ", ".join([*GENERATE_OPTIONS, "sampling"])
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
    return options
