"""Issue 18's holes, one test each: Ctrl-C while models load, batch output files that must not be touched,
bad seeds, `run --json` interrupted, options checked before any model is read (and the quick GGUF header
read), API values of the wrong type, and the smaller ones (qualifier without draft, a full context, a
clamped context, tau names, click's usage errors).

CLI tests run the command in this process, except those that send SIGINT: they start the real `edge-spec`
(pinned to one CPU, see test_cli.py) and wait for its own output before the signal, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from children import one_cpu
from click.testing import CliRunner
from gguf import GGUFReader
from tiny_gguf import write_tiny_model, write_truncated_copy

from edge_spec import cli
from edge_spec.api import LoadOptions, Pyramid
from edge_spec.backend import Tier
from edge_spec.batch import Output
from edge_spec.errors import ConfigError, EdgeSpecError, ModelError
from edge_spec.gguf_meta import LongArray, read_header
from edge_spec.memory import read_shape
from edge_spec.models import DEFAULT_MODEL, fetch_carried

_SCRIPT = Path(sys.executable).with_name("edge-spec")
EDGE_SPEC = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from edge_spec.cli import main; main()"]
)
OPTIONS = LoadOptions(ctx=256, threads=1, cache_type="f32", flash_attn=False)
PROMPT = "the quick brown fox"
RECORD = {"id": 1, "text": "a", "token_ids": [1], "stats": {}, "error": None}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An empty model cache, so no child can start a download."""
    return {**os.environ, "EDGE_SPEC_MODEL_DIR": str(tmp_path_factory.mktemp("cache"))}


def edge_spec(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    """The command, run in this process by click's test runner (starting a process costs a second here)."""
    runner = CliRunner(env={"EDGE_SPEC_MODEL_DIR": env["EDGE_SPEC_MODEL_DIR"]})
    result = runner.invoke(cli.main, [str(a) for a in args], prog_name="edge-spec")
    if not isinstance(result.exception, (SystemExit, type(None))):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-spec: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- 1. Ctrl-C at any moment, model loading included -----------------------------------------------------


def _read_until(fd: int, text: bytes, deadline: float) -> bytes:
    """What the child wrote to the terminal `fd` up to and including `text` (or its exit, or the deadline)."""
    seen = b""
    while text not in seen and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal: it exited
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.real
def test_ctrl_c_while_the_model_loads_exits_130(tmp_path: Path) -> None:
    """SIGINT as soon as the child says (on its terminal) that it is loading the default model."""
    model = fetch_carried(DEFAULT_MODEL)
    master, slave = pty.openpty()
    out = tmp_path / "stdout"
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            [*EDGE_SPEC, "run", PROMPT, "--target", model, "--json"],
            stdout=stdout,
            stderr=slave,
            preexec_fn=one_cpu,
        )
    os.close(slave)
    try:
        before = _read_until(master, b"loading", time.monotonic() + 60)
        assert b"loading " + model.name.encode() in before, before
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        rc = proc.wait(timeout=30)
        waited = time.monotonic() - sent
        after = _read_until(master, b"\0", time.monotonic() + 5).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert rc == 130, after
    assert waited < 5
    assert "Traceback" not in after and "ctypes" not in after
    assert after.strip().endswith("edge-spec: interrupted")
    assert " on CPU" not in after  # it never finished loading
    assert json.loads(out.read_text()) == {"text": "", "token_ids": [], "stats": None}


def test_ctrl_c_while_the_command_is_imported_exits_130() -> None:
    """The entry point catches Ctrl-C during the imports (numpy, llama.cpp) that precede the command."""
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'edge_spec.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from edge_spec.__main__ import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "edge-spec: interrupted\n")


def test_ctrl_c_outside_any_command_exits_130(monkeypatch: pytest.MonkeyPatch, tiny_target: Path) -> None:
    """Ctrl-C before a command handles it (imports, option checks) is exit 130, not click's "Aborted!"."""

    def interrupted(o: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_settings", interrupted)
    result = CliRunner().invoke(cli.main, ["run", "hi", "--target", str(tiny_target)])
    assert result.exit_code == 130
    assert "Aborted" not in result.output and result.output.strip() == "edge-spec: interrupted"


# ---- 2. batch never destroys an output file ----------------------------------------------------------------


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs") / "in.jsonl"
    path.write_text('{"id": 1, "prompt": "the cat"}\n{"id": 2, "prompt": "the dog"}\n')
    return path


@pytest.mark.parametrize(
    "content",
    [b"my precious notes, no newline", bytes(range(256)) * 2, b"notes\nmore notes\n", b'{"id": 1}'],
    ids=["text", "binary", "lines", "no-record"],
)
def test_a_file_that_is_no_batch_output_is_refused_untouched(
    env: dict[str, str], jobs: Path, tiny_target: Path, tmp_path: Path, content: bytes
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    proc = edge_spec(env, "batch", jobs, out, "--target", tiny_target, "--max-tokens", 4)
    assert_one_error_line(proc, str(out), "not a batch output record", "new file")
    assert out.read_bytes() == content


def test_usage_errors_change_no_output_byte(env: dict[str, str], jobs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    torn = (json.dumps(RECORD) + "\n" + '{"id": 2, "te').encode()
    out.write_bytes(torn)
    proc = edge_spec(env, "batch", jobs, out, "--target", tmp_path / "missing.gguf")
    assert_one_error_line(proc, "model file not found")
    assert out.read_bytes() == torn  # the torn tail is cut only when a record is written
    new = tmp_path / "new.jsonl"
    assert_one_error_line(edge_spec(env, "batch", jobs, new, "--target", tmp_path / "missing.gguf"))
    assert not new.exists()  # a failed load leaves no empty file behind


def test_a_torn_first_record_is_cut_when_the_first_record_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": 7, "te')
    with Output(out) as o:
        assert o.records == [] and out.read_bytes() == b'{"id": 7, "te'
        o.append(RECORD)
    assert out.read_text() == json.dumps(RECORD) + "\n"


# ---- 3. a bad seed is a usage error, never per-line errors -------------------------------------------------


def test_a_negative_seed_is_one_error_line(
    env: dict[str, str], jobs: Path, tiny_target: Path, tmp_path: Path
) -> None:
    run = edge_spec(env, "run", PROMPT, "--target", tiny_target, "--seed", -1, "--temperature", 0.5)
    assert_one_error_line(run, "seed (--seed) must be at least 0, got -1")
    out = tmp_path / "out.jsonl"
    proc = edge_spec(env, "batch", jobs, out, "--target", tiny_target, "--seed", -1, "--temperature", 0.5)
    assert_one_error_line(proc, "seed (--seed)")
    assert not out.exists()


# ---- 4. run --json interrupted prints what was generated --------------------------------------------------


def test_run_json_interrupted_prints_the_object(env: dict[str, str], tmp_path: Path) -> None:
    """A real SIGINT once the child says its model is loaded: it lands before or during the generation."""
    model = write_tiny_model(tmp_path / "long.gguf", n_ctx_train=32768)
    out = tmp_path / "stdout"
    args = ["run", PROMPT, "--target", model, "--max-tokens", 100_000, "--ctx", 32768, "--json"]
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            [*EDGE_SPEC, *map(str, args)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=one_cpu,
        )
    assert proc.stderr is not None
    loaded = proc.stderr.readline().decode()
    assert "long.gguf on CPU" in loaded, loaded
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    stderr = proc.stderr.read().decode()
    assert rc == 130, stderr
    assert stderr.startswith("edge-spec: interrupted") and "Traceback" not in stderr
    data = json.loads(out.read_text())
    assert set(data) == {"text", "token_ids", "stats"}
    if data["stats"] is not None:
        assert data["stats"]["finish_reason"] == "interrupted"
        assert data["stats"]["generated_tokens"] == len(data["token_ids"]) < 100_000


def test_run_json_interrupted_mid_generation_keeps_the_text(
    monkeypatch: pytest.MonkeyPatch, tiny_target: Path
) -> None:
    """Ctrl-C (a KeyboardInterrupt from the 6th generated token) under --json: the five tokens before it."""
    args = ["run", PROMPT, "--target", str(tiny_target), "--max-tokens", "20", "--json"]
    whole = json.loads(CliRunner().invoke(cli.main, args).stdout)
    piece, calls = Tier.piece, []

    def interrupted_piece(self: Tier, token: int, *, special: bool = False) -> bytes:
        calls.append(special)
        if calls.count(False) == 6:
            raise KeyboardInterrupt
        return piece(self, token, special=special)

    monkeypatch.setattr(Tier, "piece", interrupted_piece)
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 130, result.output
    data = json.loads(result.stdout)
    assert data["token_ids"] == whole["token_ids"][:5]
    assert whole["text"].startswith(data["text"]) and data["text"]
    assert data["stats"]["finish_reason"] == "interrupted"
    assert result.stderr.splitlines()[-1].startswith("edge-spec: interrupted; 5 tokens")


# ---- 5. options are checked before any model work; the GGUF header is read quickly -------------------------


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_bad_budget_is_refused_before_any_model_is_read(
    env: dict[str, str], tmp_path: Path, command: str
) -> None:
    args = ["plan"] if command == "plan" else ["run", PROMPT]
    proc = edge_spec(env, *args, "--budget", "banana", "--target", tmp_path / "missing.gguf")
    assert_one_error_line(proc, "cannot read 'banana' as a memory size")


@pytest.mark.parametrize("model", ["tiny_target", "tiny_small_vocab"])
def test_the_header_reader_agrees_with_gguf_py(model: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model)
    header, reader = read_header(path), GGUFReader(path)
    assert [(t.name, t.n_bytes) for t in header.tensors] == [(t.name, int(t.n_bytes)) for t in reader.tensors]
    assert set(header.fields) == {k for k in reader.fields if not k.startswith("GGUF.")}
    for key, value in header.fields.items():
        expected = reader.fields[key].contents()
        assert len(value) == len(expected) if isinstance(value, LongArray) else value == expected, key


def test_a_truncated_or_foreign_file_is_a_model_error(tiny_target: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="truncated"):
        read_shape(write_truncated_copy(tiny_target, tmp_path / "cut.gguf", fraction=0.9))
    for content in (b"", b"GGUF", b"not a model at all"):
        (tmp_path / "bad.gguf").write_bytes(content)
        with pytest.raises(ModelError, match="cannot read GGUF metadata"):
            read_shape(tmp_path / "bad.gguf")


# ---- 6. the Python API raises EdgeSpecError for values of the wrong type ----------------------------------


@pytest.fixture(scope="module")
def pyr(tiny_target: Path) -> Iterator[Pyramid]:
    with Pyramid.open(tiny_target, options=OPTIONS) as p:
        yield p


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(max_tokens="ten"), "max_tokens (--max-tokens) must be an integer, got 'ten'"),
        (dict(max_tokens=8.5), "max_tokens (--max-tokens) must be an integer, got 8.5"),
        (dict(max_tokens=True), "max_tokens (--max-tokens) must be an integer, got True"),
        (dict(prompt=None), "a prompt must be a string or a list of messages, got NoneType"),
        (dict(prompt=42), "a prompt must be a string or a list of messages, got int"),
        (dict(temperature="hot"), "temperature (--temperature) must be a number, got 'hot'"),
        (dict(seed=-1), "seed (--seed) must be at least 0, got -1"),
        (dict(top_k=1.5), "top_k (--top-k) must be an integer"),
        (dict(stop=5), "stop (--stop) must be a string or a list of strings"),
        (dict(raw="yes"), "raw (--raw) must be true or false"),
        (dict(sampling="greedy"), "sampling must be a SamplingConfig"),
        (dict(max_token=5), "unknown option(s) max_token; known: max_tokens"),
    ],
)
def test_api_values_of_the_wrong_type_raise_config_errors(pyr: Pyramid, call: dict, message: str) -> None:
    before = pyr.generate(PROMPT, max_tokens=6).token_ids
    prompt = call.pop("prompt", PROMPT)
    for method in (pyr.generate, pyr.chat_completion):
        with pytest.raises(ConfigError) as raised:
            method(prompt, **call)
        assert message in str(raised.value)
    assert pyr.generate(PROMPT, max_tokens=6).token_ids == before  # still usable


def test_load_options_of_the_wrong_type_raise_before_loading(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"  # never looked at: every option is checked first
    for options, message in [
        (dict(ctx="big"), "ctx (--ctx) must be an integer"),
        (dict(tau_t=-1), "tau_t (--tau-t) must be a finite number >= 0, got -1"),
        (dict(tau_q=float("nan")), "tau_q (--tau-q) must be a finite number"),
        (dict(flash_attn="on"), "flash_attn (--flash-attn) must be true, false or none"),
        (dict(threads=-2), "threads (--threads) must be at least 0"),
        (dict(options="fast"), "options must be a LoadOptions"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Pyramid.open(missing, **options)
    with pytest.raises(EdgeSpecError, match="target must be a model reference"):
        Pyramid.open(42)  # type: ignore[arg-type]


# ---- 7. the smaller ones -----------------------------------------------------------------------------------


def test_a_qualifier_without_a_draft_is_refused_before_loading(env: dict[str, str], tmp_path: Path) -> None:
    """The default draft (ngram) sits under a qualifier; `--draft none` with a qualifier is refused."""
    missing = tmp_path / "missing.gguf"
    proc = edge_spec(env, "run", PROMPT, "--target", missing, "--qualifier", missing, "--draft", "none")
    assert_one_error_line(proc, "a qualifier needs a draft")
    with pytest.raises(ConfigError, match="a qualifier needs a draft"):
        Pyramid.open(missing, qualifier=missing, draft="none")


def test_a_full_context_and_a_clamped_one_are_said(env: dict[str, str], tiny_target: Path) -> None:
    full = edge_spec(env, "run", PROMPT, "--target", tiny_target, "--ctx", 24, "--max-tokens", 100, "--raw")
    assert full.returncode == 0, full.stderr
    assert full.stderr.splitlines()[-1].endswith("stopped: the context window is full (raise --ctx)")
    clamped = edge_spec(env, "run", PROMPT, "--target", tiny_target, "--ctx", 100_000_000, "--max-tokens", 2)
    assert clamped.returncode == 0, clamped.stderr
    assert "context 2048 tokens: --ctx 100000000 is more than the models were trained on" in clamped.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--tau-t", "-1"], ["tau_t (--tau-t) must be a finite number >= 0"]),
        (["--tau-q", "nan"], ["tau_q (--tau-q) must be a finite number"]),
        (["--seed", "x"], ["invalid value for '--seed': 'x' is not a valid integer", "edge-spec run --help"]),
        (["--bogus"], ["no such option '--bogus'", "edge-spec run --help"]),
        (["--cache-type", "q3"], ["invalid value for '--cache-type'"]),
    ],
    ids=["tau-t", "tau-q", "seed", "unknown", "choice"],
)
def test_option_errors_are_one_line(
    env: dict[str, str], tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    proc = edge_spec(env, "run", PROMPT, "--target", tmp_path / "missing.gguf", *args)
    assert_one_error_line(proc, *fragments)
    assert proc.stdout == ""


def test_usage_errors_outside_commands_are_one_line(env: dict[str, str]) -> None:
    assert_one_error_line(edge_spec(env, "frobnicate"), "no such command 'frobnicate'")
    assert_one_error_line(edge_spec(env, "run"), "missing argument 'PROMPT'")
