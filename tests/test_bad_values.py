"""Property tests: values of the wrong type or range, thrown at every public API entry point and every
command-line option, end in EdgeSpecError (API) or exit status 2 with one stderr line (CLI), never in a
traceback, and a loaded pyramid stays usable after each.

Examples are drawn deterministically (derandomize), so a failure reproduces; the tiny models keep each
example to milliseconds. Model references are drawn so that none can name a carried model, a preset or a
Hub file: no example can start a download.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_spec.api import GENERATE_OPTIONS, LoadOptions, Pyramid
from edge_spec.cli import main
from edge_spec.errors import EdgeSpecError
from edge_spec.models import CARRIED_MODELS
from edge_spec.presets import presets

PROMPT = "the quick brown fox"
OPTIONS = LoadOptions(ctx=64, threads=1, cache_type="f32", flash_attn=False)
EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NAMES = {*CARRIED_MODELS, *presets(), "ngram"}
TEXT = st.text(max_size=8).filter(lambda s: s not in NAMES and "/" not in s and ":" not in s)
"""Any short text that names no model (no carried model, preset, Hub form or path with a directory)."""
WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    TEXT,
    st.binary(max_size=4),
    st.lists(st.one_of(st.integers(), TEXT), max_size=3),
    st.dictionaries(TEXT, st.integers(), max_size=2),
    st.builds(object),
)
"""Python values of every common type, in and out of range."""
MESSAGES = st.lists(st.dictionaries(st.sampled_from(["role", "content", "name"]), st.one_of(TEXT, WRONG)))
ARGUMENT = st.one_of(
    TEXT,
    st.integers().map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(str),
    st.sampled_from(["", " ", "-1", "0", "1", "8.5", "nan", "inf", "-inf", "1e309", "true", "8GB"]),
    st.sampled_from(["2", "0.5", "exact", "fuzzy", "exact,fuzzy", "goodput", "fixed:2", "q8_0", "ngram"]),
)
"""Command-line argument strings: numbers in and out of range, special floats, words, valid values."""


def _one_error(text: str) -> None:
    assert "Traceback" not in text
    assert text.count("\n") <= 1, text


# ---- the Python API ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyr(tiny_target: Path) -> Iterator[Pyramid]:
    with Pyramid.open(tiny_target, draft="ngram", options=OPTIONS) as p:
        yield p


@pytest.fixture(scope="module")
def baseline(pyr: Pyramid) -> list[int]:
    return pyr.generate(PROMPT, max_tokens=6).token_ids


@EXAMPLES
@given(
    method=st.sampled_from(["generate", "stream", "chat_completion", "encode", "prompt_text"]),
    prompt=st.one_of(st.just(PROMPT), TEXT, WRONG, MESSAGES),
    options=st.dictionaries(st.sampled_from([*GENERATE_OPTIONS, "sampling", "top"]), WRONG, max_size=3),
)
def test_generation_calls(
    pyr: Pyramid, baseline: list[int], method: str, prompt: object, options: dict
) -> None:
    if method in ("encode", "prompt_text"):
        options = {k: v for k, v in options.items() if k == "raw"}
    try:
        out = getattr(pyr, method)(prompt, **options)
        if method == "stream":
            list(out)
        event("accepted")
    except EdgeSpecError as e:
        event(type(e).__name__)
        _one_error(str(e))
    assert pyr.generate(PROMPT, max_tokens=6).token_ids == baseline  # still usable, same answer


@EXAMPLES
@given(
    options=st.dictionaries(
        st.sampled_from([f.name for f in LoadOptions.__dataclass_fields__.values()]), WRONG
    ),
    target=st.one_of(st.just("TARGET"), TEXT, WRONG),
    draft=st.one_of(st.none(), st.just("ngram"), st.just("TARGET"), TEXT, WRONG),
    qualifier=st.one_of(st.none(), st.just("TARGET"), WRONG),
)
def test_loading(tiny_target: Path, options: dict, target: object, draft: object, qualifier: object) -> None:
    refs = {k: tiny_target if v == "TARGET" else v for k, v in dict(draft=draft, qualifier=qualifier).items()}
    try:
        LoadOptions(**options)
        with Pyramid.open(tiny_target if target == "TARGET" else target, **refs, **options) as p:
            assert p.generate(PROMPT, max_tokens=2).token_ids
        event("loaded")
    except EdgeSpecError as e:
        event(type(e).__name__)
        _one_error(str(e))


# ---- the command line ----------------------------------------------------------------------------------


def _options(command: str) -> list[str]:
    """Every option and flag of a command."""
    params = main.commands[command].params
    return [p.opts[0] for p in params if isinstance(p, click.Option)]


@pytest.fixture(scope="module")
def files(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    jobs = base / "in.jsonl"
    jobs.write_text(
        '{"id": 1, "prompt": "the cat"}\n{"id": 2, "messages": [{"role": "user", "content": "x"}]}\n'
    )
    return {"target": tiny_target, "jobs": jobs, "dir": base, "missing": base / "missing.gguf"}


_runs = itertools.count()


def _invoke(files: dict[str, Path], command: str, given: list[tuple[str, str]]) -> None:
    """Run `command` with its base arguments and the `given` options; check the outcome."""
    out = files["dir"] / f"out{next(_runs)}.jsonl"
    target, missing = str(files["target"]), str(files["missing"])
    common = ["--target", target, "--max-tokens", "3", "--ctx", "64"]
    base = {
        "run": ["run", PROMPT, *common],
        "batch": ["batch", str(files["jobs"]), str(out), *common],
        "plan": ["plan", "--budget", "2GB", "--target", target, "--device", "cpu"],
        "bench": ["bench", "--target", missing, "--no-progress"],
        "derive": ["derive", missing, "--kind", "q4_0"],
        "doctor": ["doctor", "--target", missing],
        "serve": ["serve", "--target", missing],  # the model is loaded before anything listens
        "chat": ["chat", *common],  # no input: it leaves at once
    }[command]
    args = base + [a for pair in given for a in pair]
    last = {"bench": missing, "doctor": missing, "serve": missing, "chat": target}.get(command)
    if last is not None:  # the last --target wins: a drawn one ("" = the default model) loads a real model
        args += ["--target", last]
    env = {"EDGE_SPEC_MODEL_DIR": str(files["dir"]), "HF_HUB_OFFLINE": "1"}
    result = CliRunner(env=env).invoke(main, args, prog_name="edge-spec")
    assert isinstance(result.exception, (SystemExit, type(None))), (args, result.exception)
    event(f"{command} exit {result.exit_code}")
    allowed = {
        "run": {0, 2},
        "batch": {0, 1, 2},
        "plan": {0, 2},
        "bench": {2},
        "derive": {2},
        "doctor": {2},
        "serve": {2},
        "chat": {0, 2},
    }[command]
    assert result.exit_code in allowed, (args, result.output)
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("edge-spec: error: "), (args, result.stderr)
        assert not out.exists()  # a usage error writes nothing
    assert "Traceback" not in result.output


@EXAMPLES
@given(
    data=st.data(),
    command=st.sampled_from(["run", "batch", "plan", "bench", "derive", "doctor", "serve", "chat"]),
)
def test_command_options(files: dict[str, Path], data: st.DataObject, command: str) -> None:
    pairs = st.tuples(st.sampled_from(_options(command)), ARGUMENT)
    _invoke(files, command, data.draw(st.lists(pairs, min_size=1, max_size=2), label="options"))


@EXAMPLES
@given(name=ARGUMENT)
def test_fetch_names(files: dict[str, Path], name: str) -> None:
    result = CliRunner(env={"EDGE_SPEC_MODEL_DIR": str(files["dir"])}).invoke(main, ["fetch", name])
    assert result.exit_code == 2 and result.stderr.startswith("edge-spec: error: ")
    _one_error(result.stderr)


def test_the_examples_cover_every_option() -> None:
    """Every command with options is drawn from above (models takes none; fetch takes names)."""
    assert {c for c, cmd in main.commands.items() if _options(c)} == {
        "run",
        "batch",
        "plan",
        "bench",
        "derive",
        "doctor",
        "serve",
        "chat",
    }
