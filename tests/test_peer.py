"""Unit tests for edge_spec.peer: the parser on real llama-speculative-simple output, and run_peer against
fake executables (no model, no llama.cpp build). One `real` test runs the binary when it is on PATH."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_spec.errors import ConfigError, EdgeSpecError, ModelError
from edge_spec.peer import PEER_BINARY, PeerRun, find_peer, generated_text, parse_peer_output, run_peer

FIXTURE = Path(__file__).parent / "data" / "speculative_simple.txt"
"""Combined stdout+stderr of llama-speculative-simple (llama.cpp vendored by llama-cpp-python 0.3.36), run
with Qwen2.5-Coder 1.5B Q4_K_M (target), 0.5B (draft), -n 32, --spec-draft-n-max 4, greedy, 2 threads."""
FIXTURE_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
FIXTURE_TEXT = (
    "```python\ndef reverse_string(s):\n    # Initialize an empty string to store the reversed string\n"
    '    reversed_s = ""\n'
    "    \n    # Iterate over the string in reverse order\n"
)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    """Placeholder model files: fake binaries never read them."""
    target, draft = tmp_path / "target.gguf", tmp_path / "draft.gguf"
    target.write_bytes(b"GGUF")
    draft.write_bytes(b"GGUF")
    return target, draft


def fake_binary(tmp_path: Path, body: str, name: str = PEER_BINARY) -> Path:
    """An executable shell script; it also records its arguments and the prompt file in args.txt."""
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/args.txt"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -f ] && cp "$2" '
        f'"{tmp_path}/prompt.txt"; shift; done\n' + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def test_parse_real_output() -> None:
    run = parse_peer_output(FIXTURE.read_text(encoding="utf-8"))
    assert run == PeerRun(
        generated_tokens=36, decode_seconds=4.529, prefill_seconds=0.781, drafted=36, accepted=27, text=""
    )
    assert run.acceptance == pytest.approx(0.75)
    assert run.tokens_per_second == pytest.approx(36 / 4.529)


def test_parse_takes_the_summary_not_the_generated_text() -> None:
    noise = "model says: decoded 9 tokens in 1.0 seconds\nn_drafted = 1\nn_accept  = 1\n"
    output = FIXTURE.read_text(encoding="utf-8").replace("```python\n", "```python\n" + noise)
    assert parse_peer_output(output).accepted == 27


def test_parse_without_summary_names_what_is_missing() -> None:
    head = FIXTURE.read_text(encoding="utf-8").split("decoded")[0]  # up to the encoded line
    with pytest.raises(EdgeSpecError, match="no decoded, n_drafted, n_accept line") as info:
        parse_peer_output(head)
    assert "encoded   29 tokens" in str(info.value)  # the last lines are quoted
    with pytest.raises(
        EdgeSpecError, match=r"(?s)no encoded, decoded, n_drafted, n_accept line.*\(no output\)"
    ):
        parse_peer_output("")


def test_run_without_drafts() -> None:
    run = PeerRun(generated_tokens=0, decode_seconds=0.0, prefill_seconds=0.1, drafted=0, accepted=0)
    assert run.acceptance is None
    assert run.tokens_per_second == 0.0


def test_generated_text() -> None:
    stdout = "\n\n" + FIXTURE_PROMPT + FIXTURE_TEXT + "\n\n\n\n"
    assert generated_text(stdout, FIXTURE_PROMPT) == FIXTURE_TEXT
    assert generated_text("\n\n<s> Hi there, friend\n\n\n\n", " Hi") == " there, friend"  # after a BOS piece
    assert generated_text("\n\nsomething else\n\n\n\n", FIXTURE_PROMPT) == ""


def test_find_peer_explicit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an executable file"):
        find_peer(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    plain.chmod(0o644)
    if not os.access(plain, os.X_OK):  # root may execute anything with an x bit; 0o644 has none
        with pytest.raises(ConfigError):
            find_peer(plain)
    with pytest.raises(ConfigError):
        find_peer(tmp_path)  # a directory
    binary = fake_binary(tmp_path, "exit 0\n", name="anything")
    assert find_peer(binary) == binary
    assert find_peer(str(binary)) == binary


def test_find_peer_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_peer() is None
    binary = fake_binary(tmp_path, "exit 0\n")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), str(binary.parent)]))
    assert find_peer() == binary


def test_run_peer_parses_the_fake(tmp_path: Path, models: tuple[Path, Path]) -> None:
    binary = fake_binary(tmp_path, f'cat "{FIXTURE}" >&2\nexit 0\n')
    run = run_peer(binary, *models, FIXTURE_PROMPT, max_tokens=32, draft_max=4, n_ctx=2048, threads=2, seed=7)
    assert run == parse_peer_output(FIXTURE.read_text(encoding="utf-8"))  # no stdout: text ""
    args = (tmp_path / "args.txt").read_text().splitlines()
    flags = {
        flag: args[args.index(flag) + 1] for flag in ("-m", "-md", "--spec-type", "-n", "-s", "-c", "-t")
    }
    assert flags == {
        "-m": str(models[0]),
        "-md": str(models[1]),
        "--spec-type": "draft-simple",
        "-n": "31",  # the binary decodes until it has more than -n tokens
        "-s": "7",
        "-c": "2048",
        "-t": "2",
    }
    assert args[args.index("--spec-draft-n-max") + 1] == "4"
    assert "--no-escape" in args
    assert args[args.index("--temp") + 1] == "0"
    # the prompt file: the prompt plus the newline that -f strips
    assert (tmp_path / "prompt.txt").read_text(encoding="utf-8") == FIXTURE_PROMPT + "\n"


def test_run_peer_reads_the_text_from_stdout(tmp_path: Path, models: tuple[Path, Path]) -> None:
    combined = FIXTURE.read_text(encoding="utf-8")
    printed = "\n\n" + FIXTURE_PROMPT + FIXTURE_TEXT + "\n\n"  # the stdout part inside the fixture
    assert printed in combined
    (tmp_path / "stdout.txt").write_text(printed + "\n\n", encoding="utf-8")
    (tmp_path / "stderr.txt").write_text(combined.replace(printed, ""), encoding="utf-8")
    binary = fake_binary(tmp_path, f'cat "{tmp_path}/stdout.txt"\ncat "{tmp_path}/stderr.txt" >&2\n')
    run = run_peer(binary, *models, FIXTURE_PROMPT, max_tokens=32, draft_max=4, n_ctx=2048, threads=2)
    assert run.text == FIXTURE_TEXT
    assert (run.generated_tokens, run.drafted, run.accepted) == (36, 36, 27)


def test_run_peer_failure_shows_the_output(tmp_path: Path, models: tuple[Path, Path]) -> None:
    binary = fake_binary(tmp_path, "echo 'E llama_model_load: error loading model' >&2\nexit 1\n")
    with pytest.raises(EdgeSpecError, match=r"(?s)exit status 1.*error loading model"):
        run_peer(binary, *models, "hi", max_tokens=8, draft_max=4, n_ctx=512, threads=1)


def test_run_peer_success_without_summary(tmp_path: Path, models: tuple[Path, Path]) -> None:
    binary = fake_binary(tmp_path, "echo 'nothing useful'\n")
    with pytest.raises(EdgeSpecError, match=r"(?s)lacks its summary.*nothing useful"):
        run_peer(binary, *models, "hi", max_tokens=8, draft_max=4, n_ctx=512, threads=1)


def test_run_peer_timeout(tmp_path: Path, models: tuple[Path, Path]) -> None:
    binary = fake_binary(tmp_path, "echo 'loading' >&2\nsleep 30\n")
    with pytest.raises(EdgeSpecError, match=r"(?s)no result within 0.5 s.*loading"):
        run_peer(binary, *models, "hi", max_tokens=8, draft_max=4, n_ctx=512, threads=1, timeout=0.5)


def test_run_peer_checks_its_inputs(tmp_path: Path, models: tuple[Path, Path]) -> None:
    binary = fake_binary(tmp_path, "exit 0\n")
    with pytest.raises(ModelError, match="not found"):
        run_peer(
            binary, tmp_path / "nope.gguf", models[1], "hi", max_tokens=8, draft_max=4, n_ctx=512, threads=1
        )
    with pytest.raises(ConfigError, match="non-empty prompt"):
        run_peer(binary, *models, "", max_tokens=8, draft_max=4, n_ctx=512, threads=1)
    with pytest.raises(ConfigError, match=">= 1"):
        run_peer(binary, *models, "hi", max_tokens=0, draft_max=4, n_ctx=512, threads=1)


@pytest.mark.real
def test_real_binary_with_itself_as_draft() -> None:
    """The model drafting for itself: every drafted token is accepted and the text is the greedy text."""
    binary = find_peer()
    if binary is None:
        pytest.skip(f"{PEER_BINARY} is not on PATH")
    from edge_spec.models import DEFAULT_MODEL, fetch_carried

    model = fetch_carried(DEFAULT_MODEL)
    run = run_peer(
        binary, model, model, "The capital of France is", max_tokens=16, draft_max=4, n_ctx=512, threads=2
    )
    assert run.generated_tokens <= 16 + 4  # fewer if EOS came first; more by at most one draft
    assert run.drafted > 0
    assert run.acceptance is not None
    assert run.acceptance > 0.8  # not exactly 1: batched verification can round differently
    assert "Paris" in run.text
