"""The Python API: load a pyramid of tiers once, then generate or stream, as the CLI does.

from edge_spec import Pyramid
with Pyramid.load("target.gguf", draft="draft.gguf") as pyr:
    print(pyr.generate("Write a haiku about GPUs", max_tokens=64).text)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_spec.backend import Tier, TierConfig
from edge_spec.chat import Message, as_messages, render
from edge_spec.errors import ConfigError, ContextOverflowError, EdgeSpecError
from edge_spec.proposers import ModelDrafter, NgramProposer, Proposer
from edge_spec.pyramid import StageConfig, Verifier, commit_rounds, stage_needs_logits
from edge_spec.sampling import SamplingConfig, make_rng
from edge_spec.stats import GenerationStats
from edge_spec.text import TextAssembler

NGRAM = "ngram"
"""The draft reference that selects the model-free prompt-lookup proposer."""


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


class Pyramid:
    """Loaded tiers, bottom to top: [draft] -> [qualifier] -> target. One generation at a time."""

    def __init__(
        self,
        target: Tier,
        qualifier: Tier | None = None,
        draft: Tier | str | None = None,
        stages: Sequence[StageConfig] | None = None,
    ) -> None:
        if qualifier is not None and draft is None:
            raise ConfigError("a qualifier needs a draft below it (--draft PATH or --draft ngram)")
        if isinstance(draft, str) and draft != NGRAM:
            raise ConfigError(f"draft must be a model or {NGRAM!r}, got {draft!r}")
        self.target, self.qualifier, self.draft = target, qualifier, draft
        self.models = [t for t in (draft, qualifier, target) if isinstance(t, Tier)]
        for tier in self.models[:-1]:
            target.check_compatible(tier)
        n_stages = (draft is not None) + (qualifier is not None)
        self.stages = list(stages) if stages is not None else [StageConfig()] * max(n_stages, 1)
        if len(self.stages) != max(n_stages, 1):
            raise ConfigError(f"{len(self.models)} tiers need {max(n_stages, 1)} stage settings")
        self._lock = threading.Lock()
        self.last_result: Result | None = None
        """The latest generation, also when it was interrupted (Ctrl-C) before returning."""

    @classmethod
    def load(
        cls,
        target: str | Path,
        *,
        draft: str | Path | None = None,
        qualifier: str | Path | None = None,
        config: TierConfig | None = None,
        stages: Sequence[StageConfig] | None = None,
    ) -> Pyramid:
        """Load tiers from GGUF paths (`draft` may be "ngram"); tiers are checked for compatibility."""
        loaded: list[Tier] = []
        try:

            def tier(path: str | Path) -> Tier:
                loaded.append(Tier(path, config))
                return loaded[-1]

            d = None if draft is None else NGRAM if str(draft) == NGRAM else tier(draft)
            q = tier(qualifier) if qualifier is not None else None
            return cls(tier(target), q, d, stages)
        except BaseException:
            for t in loaded:
                t.close()
            raise

    @property
    def n_ctx(self) -> int:
        """The context every tier can hold."""
        return min(t.n_ctx for t in self.models)

    def encode(self, prompt: str | Sequence[Message], raw: bool = False) -> list[int]:
        """Prompt tokens: a message list (or a bare prompt as one user message) through the target's chat
        template, or with `raw` the text as-is."""
        t = self.target
        if raw:
            if not isinstance(prompt, str):
                raise ConfigError("a raw prompt must be a string")
            tokens = t.tokenize(prompt, add_bos=True, special=False)
        else:
            bos_text, eos_text = t.piece(t.bos, special=True).decode(), t.piece(t.eos, special=True).decode()
            text = render(t.chat_template, as_messages(prompt), bos_text, eos_text)
            has_bos = bool(bos_text) and text.startswith(bos_text)
            tokens = t.tokenize(text, add_bos=not has_bos, special=True)
        if not tokens:
            raise ConfigError("the prompt is empty")
        return tokens

    def _top(self, sampling: SamplingConfig) -> Verifier:
        """Assemble the stages for one generation (fresh stats, one shared seeded RNG)."""
        rng = make_rng(sampling.seed)
        below: Proposer | None = None
        if self.draft == NGRAM:
            below = NgramProposer()
        elif isinstance(self.draft, Tier):
            below = ModelDrafter(self.draft, sampling, rng)
        verifiers = [t for t in (self.qualifier, self.target) if t is not None]
        top: Verifier | None = None
        for i, tier in enumerate(verifiers):
            above_needs = i + 1 < len(verifiers) and stage_needs_logits(self.stages[i + 1], sampling)
            top = Verifier(tier, below, self.stages[i], sampling, rng, keep_logits=above_needs)
            below = top
        assert top is not None
        return top

    def stream(
        self,
        prompt: str | Sequence[Message],
        *,
        max_tokens: int = 256,
        sampling: SamplingConfig | None = None,
        stop: Sequence[str] = (),
        raw: bool = False,
    ) -> Generator[str, None, Result]:
        """Text pieces as tokens are committed; the generator's return value is the Result. The prompt and
        options are checked here, before the first piece is asked for."""
        if max_tokens < 1:
            raise ConfigError(f"max tokens must be at least 1, got {max_tokens}")
        sampling = sampling or SamplingConfig()
        prompt_ids = self.encode(prompt, raw)
        room = self.n_ctx - len(prompt_ids)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt is {len(prompt_ids)} tokens but the context holds {self.n_ctx}; "
                "shorten it or raise --ctx"
            )
        return self._locked(self._generate(prompt_ids, min(max_tokens, room), max_tokens, sampling, stop))

    def _locked(self, generation: Generator[str, None, Result]) -> Generator[str, None, Result]:
        if not self._lock.acquire(blocking=False):
            raise EdgeSpecError("this pyramid is already generating: one generation at a time per pyramid")
        try:
            return (yield from generation)
        finally:
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
        if len(prompt_ids) > 1:
            for tier in self.models:
                tier.score(prompt_ids[:-1], 1)
        t1 = time.perf_counter()
        stats.prefill_seconds = t1 - t0
        before = {t.path.name: t.decode_seconds for t in self.models}
        top = self._top(sampling)
        out_ids: list[int] = []
        text = TextAssembler(stop)
        stats.finish_reason = "length" if max_new == max_tokens else "context"
        try:
            for tokens in commit_rounds(top, prompt_ids, max_new):
                for token in tokens:
                    if self.target.is_eog(token):
                        stats.finish_reason = "stop"
                        break
                    out_ids.append(token)
                    piece = text.feed(self.target.piece(token))
                    if piece:
                        yield piece
                    if text.stopped:
                        stats.finish_reason = "stop"
                        break
                if stats.finish_reason == "stop":
                    break
        except KeyboardInterrupt:
            stats.finish_reason = "interrupted"
            raise
        finally:
            stats.decode_seconds = time.perf_counter() - t1
            stats.generated_tokens = len(out_ids)
            stats.tier_seconds = {t.path.name: t.decode_seconds - before[t.path.name] for t in self.models}
            for v in _verifiers(top):
                if v.stats is not None:
                    v.stats.lookahead = v.policy.summary()
                    stats.stages.append(v.stats)
            self.last_result = Result(text.text, out_ids, stats)
        tail = text.finish()
        if tail:
            yield tail
        return Result(text.text, out_ids, stats)

    def generate(self, prompt: str | Sequence[Message], **options: object) -> Result:
        """Generate to the end and return the Result (options as in `stream`)."""
        gen = self.stream(prompt, **options)  # type: ignore[arg-type]
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def close(self) -> None:
        """Free every tier."""
        for tier in self.models:
            tier.close()

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _verifiers(top: Verifier) -> Iterator[Verifier]:
    """The verifiers of a pyramid, bottom-up."""
    chain: list[Verifier] = []
    node: object = top
    while isinstance(node, Verifier):
        chain.append(node)
        node = node.below
    return reversed(chain)
