"""The Python API on tiny generated models: options mapping, generate / stream / chat completions,
one generation at a time, and close()."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from children import one_cpu

from edge_spec.api import GENERATE_OPTIONS, LoadOptions, Pyramid
from edge_spec.errors import ConfigError, EdgeSpecError
from edge_spec.pyramid import StageConfig
from edge_spec.sampling import SamplingConfig

# One thread (a shared small machine), f32 cache without flash attention (exact comparisons).
OPTIONS = LoadOptions(ctx=512, threads=1, cache_type="f32", flash_attn=False)
PROMPT = "the quick brown fox"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def pyr(tiny_target: Path, tiny_noisy: Path) -> Iterator[Pyramid]:
    with Pyramid.open(tiny_target, draft=tiny_noisy, options=OPTIONS) as p:
        yield p


# ---- options -------------------------------------------------------------------------------------------


def test_options_map_to_tier_and_stage_configs(tiny_target: Path, tiny_same: Path) -> None:
    with Pyramid.open(
        tiny_target,
        draft=tiny_same,
        options=OPTIONS,
        ctx=256,
        accept="fuzzy",
        tau_t=0.3,
        lookahead="pmin:0.8",
    ) as p:
        assert [t.path for t in p.models] == [tiny_same, tiny_target]
        assert p.stages == [StageConfig("fuzzy", 0.3, "js", lookahead="pmin:0.8")]
        for tier in p.models:
            assert (tier.n_ctx, tier.n_threads, tier.config.cache_type) == (256, 1, "f32")
            assert tier.config.flash_attn is False


def test_three_tier_stages_are_bottom_up(tiny_target: Path, tiny_same: Path) -> None:
    opts = dataclasses.replace(OPTIONS, accept="exact,fuzzy", tau_q=0.2, tau_t=0.4, divergence="tv")
    with Pyramid.open(
        tiny_target, qualifier=tiny_same, draft="ngram", options=opts, draft_block=3, qualifier_block=6
    ) as p:
        assert p.draft == "ngram" and p.qualifier is not None
        assert p.stages == [
            StageConfig("exact", 0.2, "tv", lookahead="fixed:3"),
            StageConfig("fuzzy", 0.4, "tv", lookahead="fixed:6"),
        ]


@pytest.mark.parametrize(
    ("options", "n_stages", "message"),
    [
        (dict(accept="exact,fuzzy"), 1, "accept: give one value or one per stage"),
        (dict(lookahead="fixed:2,fixed:3,fixed:4"), 2, "lookahead: give one value or one per stage"),
        (dict(qualifier_block=4), 1, "needs a qualifier"),
        (dict(lookahead="sometimes"), 1, "unknown lookahead"),
        (dict(ctx=8), 1, "context length"),
    ],
)
def test_invalid_options(options: dict, n_stages: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoadOptions(**options).stages(n_stages)


def test_unknown_option_names_the_known_ones(tiny_target: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) tau; known: ctx, batch"):
        Pyramid.open(tiny_target, tau=0.3)


def test_cli_defaults_are_the_api_defaults() -> None:
    """run and batch take their model and stage options straight into LoadOptions: same names, same
    defaults, and every generation option exists on the command line (run, one prompt, decodes one
    sequence)."""
    from edge_spec.cli import batch, run

    for command in (run, batch):
        params = {p.name: p for p in command.params}
        for f in dataclasses.fields(LoadOptions):
            if command is run and f.name == "parallel":
                continue
            assert params[f.name].default == f.default, f.name
        assert set(GENERATE_OPTIONS) <= set(params)


def test_every_command_takes_shared_options_from_their_one_declaration() -> None:
    from edge_spec import options
    from edge_spec.cli import main

    seen = set()
    for command in main.commands.values():
        for param in command.params:
            declared = next((o for o in options.OPTIONS.values() if o.flags[0] in param.opts), None)
            if declared is None:
                continue
            seen.add(declared.name)
            assert param.help is not None and param.help.startswith(declared.help), (command.name, param.name)
            if not param.multiple and not declared.is_flag:
                assert param.default == declared.default, (command.name, param.name)
            assert set(declared.flags[0].split("/")) <= set(param.opts + param.secondary_opts)
    assert {"ctx", "max_tokens", "target_ref", "threads", "lookahead"} <= seen


# ---- generate, stream, messages, chat completions ------------------------------------------------------


def test_generate_returns_text_ids_and_stats(pyr: Pyramid) -> None:
    out = pyr.generate(PROMPT, max_tokens=12)
    assert len(out.token_ids) == 12
    assert out.text == pyr.target.detokenize(out.token_ids)
    assert out.finish_reason == "length"
    assert out.stats.generated_tokens == 12
    assert out.stats.prompt_tokens == len(pyr.encode(PROMPT))
    assert [s.proposer for s in out.stats.stages] == ["noisy.gguf"]
    assert out.to_dict()["stats"]["generated_tokens"] == 12


def test_a_prompt_is_one_user_message(pyr: Pyramid) -> None:
    as_text = pyr.generate(PROMPT, max_tokens=10)
    as_messages = pyr.generate([{"role": "user", "content": PROMPT}], max_tokens=10)
    assert as_messages.token_ids == as_text.token_ids
    with_system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    assert len(pyr.encode(with_system)) > len(pyr.encode(PROMPT))
    with pytest.raises(ConfigError, match="role"):
        pyr.generate([{"content": PROMPT}])


def test_stream_yields_the_generated_text(pyr: Pyramid) -> None:
    stream = pyr.stream(PROMPT, max_tokens=20)
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            result = done.value
            break
    assert len(pieces) > 1
    assert "".join(pieces) == result.text == pyr.generate(PROMPT, max_tokens=20).text


def test_sampling_options_by_name_or_config(tiny_target: Path, tiny_noisy: Path) -> None:
    # fixed blocks: goodput's shared measurements would size the second generation's blocks otherwise, and
    # with them the random draws
    with Pyramid.open(tiny_target, draft=tiny_noisy, options=OPTIONS, lookahead="fixed:3") as pyr:
        flat = pyr.generate(PROMPT, max_tokens=16, temperature=1.2, top_k=20, seed=7)
        config = pyr.generate(PROMPT, max_tokens=16, sampling=SamplingConfig(1.2, top_k=20, seed=7))
        assert flat.token_ids == config.token_ids
        assert flat.token_ids != pyr.generate(PROMPT, max_tokens=16).token_ids  # not greedy
        with pytest.raises(ConfigError, match="not both"):
            pyr.generate(PROMPT, temperature=0.5, sampling=SamplingConfig())
        with pytest.raises(ConfigError, match="temperature"):
            pyr.generate(PROMPT, temperature=-1.0)


def test_a_stop_string_is_not_split_into_characters(pyr: Pyramid) -> None:
    text = pyr.generate(PROMPT, max_tokens=30).text
    stop = text[12:16]
    out = pyr.generate(PROMPT, max_tokens=30, stop=stop)
    assert out.text == text[: text.index(stop)]
    assert out.finish_reason == "stop"


def test_chat_completion_is_openai_shaped(pyr: Pyramid) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    before = int(time.time())
    reply = pyr.chat_completion(messages, max_tokens=9)
    assert set(reply) == {"id", "object", "created", "model", "choices", "usage"}
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", reply["id"])
    assert reply["object"] == "chat.completion"
    assert before <= reply["created"] <= time.time()
    assert reply["model"] == "target.gguf"
    (choice,) = reply["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": pyr.generate(messages, max_tokens=9).text}
    assert choice["finish_reason"] == "length"
    prompt_tokens = len(pyr.encode(messages))
    assert reply["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 9,
        "total_tokens": prompt_tokens + 9,
    }
    assert pyr.chat_completion(messages)["id"] != reply["id"]

    stop = choice["message"]["content"][5:8]
    stopped = pyr.chat_completion(messages, max_tokens=9, stop=[stop])
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 9


def test_a_full_context_finishes_with_length(tiny_target: Path) -> None:
    with Pyramid.open(tiny_target, options=OPTIONS, ctx=48) as p:
        reply = p.chat_completion(PROMPT, max_tokens=1000)
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["total_tokens"] == 48


# ---- one generation at a time ---------------------------------------------------------------------------


def _long_generation(p: Pyramid) -> object:
    return p.generate(PROMPT, max_tokens=1500)


def test_two_threads_at_once_one_succeeds_one_is_refused(tiny_target: Path) -> None:
    with Pyramid.open(tiny_target, options=OPTIONS, ctx=2048) as p:
        start = threading.Barrier(2)
        outcomes: list[object] = []

        def call() -> None:
            start.wait()
            try:
                outcomes.append(_long_generation(p))
            except EdgeSpecError as e:
                outcomes.append(e)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [o for o in outcomes if isinstance(o, EdgeSpecError)]
        assert len(errors) == 1 and len(outcomes) == 2, outcomes
        assert "already generating" in str(errors[0])
        assert p.generate(PROMPT, max_tokens=5).finish_reason == "length"  # free again afterwards


def test_an_unfinished_stream_holds_the_pyramid(pyr: Pyramid) -> None:
    stream = pyr.stream(PROMPT, max_tokens=20)
    next(stream)
    with pytest.raises(EdgeSpecError, match="already generating"):
        pyr.generate(PROMPT, max_tokens=5)
    stream.close()
    assert len(pyr.generate(PROMPT, max_tokens=5).token_ids) == 5


# ---- close ------------------------------------------------------------------------------------------------


def test_closed_pyramid_raises_a_clean_error(tiny_target: Path, tiny_same: Path) -> None:
    with Pyramid.open(tiny_target, draft=tiny_same, options=OPTIONS) as p:
        stream = p.stream(PROMPT, max_tokens=20)
        next(stream)
    assert all(t._ctx is None for t in p.models)  # the with block freed every tier
    for call in (
        lambda: p.generate(PROMPT),
        lambda: p.stream(PROMPT),
        lambda: p.chat_completion(PROMPT),
        lambda: p.encode(PROMPT),
        lambda: next(stream),  # a stream left open when the pyramid closed
    ):
        with pytest.raises(EdgeSpecError, match="closed"):
            call()
    p.close()  # twice is fine


class _AnnouncedLock:
    """A lock that sets `waiting` when the main thread starts to wait for it (the closing thread here)."""

    def __init__(self, lock: threading.Lock, waiting: threading.Event) -> None:
        self.lock, self.waiting = lock, waiting

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.waiting.set()
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_close_during_a_generation_in_another_thread(tiny_target: Path) -> None:
    """close() called while another thread's generation is inside a decode waits for it to pause, frees the
    tiers, and the generation stops with EdgeSpecError. Ordered by events, not by timing."""
    p = Pyramid.open(tiny_target, options=OPTIONS, ctx=2048)
    decoding, close_waits = threading.Event(), threading.Event()
    p._computing = _AnnouncedLock(p._computing, close_waits)  # type: ignore[assignment]
    score = p.target.score

    def announced_score(sequence: list[int], n_logits: int = 1, *, seq: int = 0) -> object:
        if not decoding.is_set():  # the first decode: hold it until close() waits for the generation
            decoding.set()
            assert close_waits.wait(timeout=60)
        return score(sequence, n_logits, seq=seq)

    p.target.score = announced_score  # type: ignore[method-assign]
    outcome: list[object] = []
    stream = p.stream(PROMPT, max_tokens=1500)

    def consume() -> None:
        try:
            outcome.append("".join(stream))
        except EdgeSpecError as e:
            outcome.append(e)

    worker = threading.Thread(target=consume)
    worker.start()
    assert decoding.wait(timeout=60)
    p.close()
    worker.join()
    assert isinstance(outcome[0], EdgeSpecError) and "closed" in str(outcome[0])
    assert all(t._ctx is None for t in p.models)


# ---- imports and the README -----------------------------------------------------------------------------


def test_package_exports_pyramid_lazily() -> None:
    code = (
        "import sys, edge_spec; assert 'llama_cpp' not in sys.modules; "
        "from edge_spec import Pyramid; print(Pyramid)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "edge_spec.api.Pyramid" in proc.stdout


@pytest.mark.real
def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The README's Python API example, run as written (as a script, on one CPU) on the default model."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, preexec_fn=one_cpu
    )
    assert proc.returncode == 0, proc.stderr
    assert "'total_tokens'" in proc.stdout
