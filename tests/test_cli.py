"""The `edge-spec` command, run as a subprocess on tiny generated GGUF models.

Each child process is pinned to one CPU, so llama.cpp runs one thread: on a small machine shared with other
work, ggml's spinning thread barrier otherwise makes the tiny model 100x slower. Exact comparisons between
pyramids use flash attention off (EXACT), where batched and single-token decodes agree closely.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from children import one_cpu
from tiny_gguf import build_vocab, write_not_gguf, write_tiny_model, write_truncated_copy

from edge_spec.backend import VOCAB_CHECK_START_TOKEN_ID, Tier, TierConfig
from edge_spec.models import CARRIED_MODELS

_SCRIPT = Path(sys.executable).with_name("edge-spec")
EDGE_SPEC = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from edge_spec.cli import main; main()"]
)

EXACT = ["--no-flash-attn", "--cache-type", "f32"]
"""Flags for exact comparisons: batched and single-token decodes then agree to ~1e-5."""
PROMPT = "hello world"
N_TOKENS = 32
STAGE_KEYS = {"verifier", "proposer", "proposed", "accepted", "recovered", "bonus", "mean_accepted_length"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The children's environment: an empty model cache, so no test can start a download."""
    return {**os.environ, "EDGE_SPEC_MODEL_DIR": str(tmp_path_factory.mktemp("model_cache"))}


@pytest.fixture(scope="module")
def cli(env: dict[str, str]):
    def run(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EDGE_SPEC, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=one_cpu,
        )

    return run


def run_json(cli, *args: object) -> dict:
    proc = cli("run", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object on one line
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def plain(cli, tiny_target: Path) -> dict:
    """The target alone, greedy, exact flags."""
    return run_json(cli, PROMPT, "--target", tiny_target, "--max-tokens", N_TOKENS, *EXACT)


@pytest.fixture(scope="module")
def hello(cli, tiny_target: Path) -> dict:
    """`run "hello" --max-tokens 8 --raw --json` on the tiny target."""
    return run_json(cli, "hello", "--target", tiny_target, "--max-tokens", 8, "--raw")


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-spec: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""


# ---- run -----------------------------------------------------------------------------------------------


def test_run_raw_streams_text_and_one_stats_line(cli, hello: dict, tiny_target: Path) -> None:
    proc = cli("run", "hello", "--target", tiny_target, "--max-tokens", 8, "--raw")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    stats = [line for line in proc.stderr.splitlines() if "tok/s" in line]
    assert len(stats) == 1, proc.stderr
    assert "prefill" in stats[0]
    assert stats[0].startswith("edge-spec: 8 tokens")
    assert proc.stdout.endswith("\n")
    assert proc.stdout.strip()
    assert proc.stdout == hello["text"] + "\n"  # the streamed text is the JSON run's text


def test_run_json(hello: dict) -> None:
    data = hello
    assert set(data) == {"text", "token_ids", "stats"}
    assert isinstance(data["text"], str) and data["text"]
    assert len(data["token_ids"]) == 8
    assert all(isinstance(t, int) for t in data["token_ids"])
    stats = data["stats"]
    assert stats["generated_tokens"] == 8
    assert stats["tokens_per_second"] > 0
    assert stats["prefill_seconds"] >= 0
    assert stats["prompt_tokens"] == 2  # BOS, "▁hello"
    assert stats["finish_reason"] == "length"
    assert [s["proposer"] for s in stats["stages"]] == ["ngram"]  # the default draft


def test_draft_none_runs_the_target_alone(cli, tiny_target: Path) -> None:
    data = run_json(cli, "hello", "--target", tiny_target, "--max-tokens", 8, "--raw", "--draft", "none")
    assert data["stats"]["stages"] == [] and len(data["token_ids"]) == 8


def test_several_drafts_are_candidates(cli, plain: dict, tiny_target: Path, tiny_noisy: Path) -> None:
    args = [PROMPT, "--target", tiny_target, "--max-tokens", N_TOKENS, *EXACT]
    data = run_json(cli, *args, "--draft", tiny_noisy, "--draft", "ngram")
    assert data["token_ids"] == plain["token_ids"]
    (stage,) = data["stats"]["stages"]
    assert stage["proposer"] == "noisy.gguf|ngram" and stage["lookahead"]["policy"] == "choose"
    assert [c["proposer"] for c in stage["lookahead"]["candidates"]] == ["noisy.gguf", "ngram"]


@pytest.mark.parametrize(
    ("drafts", "fragment"),
    [(["none", "ngram"], "'none' cannot be combined"), (["ngram", "ngram"], "'ngram' is given twice")],
)
def test_bad_draft_lists_are_one_error_line(cli, tiny_target: Path, drafts: list[str], fragment: str) -> None:
    proc = cli("run", "hi", "--target", tiny_target, *(a for d in drafts for a in ("--draft", d)))
    assert_one_error_line(proc, fragment)


def test_plain_run_is_the_greedy_chain_of_the_model(plain: dict, tiny_target: Path) -> None:
    from edge_spec.api import Pyramid

    cfg = TierConfig(n_ctx=256, flash_attn=False, n_threads=1, n_gpu_layers=0)
    with Tier(tiny_target, cfg) as tier:
        ids = Pyramid(tier).encode(PROMPT)
        assert plain["stats"]["prompt_tokens"] == len(ids)
        out: list[int] = []
        logits = tier.decode(ids)[0]
        for _ in range(N_TOKENS):
            out.append(int(np.argmax(logits)))
            logits = tier.decode(out[-1:])[0]
        assert plain["token_ids"] == out
        assert plain["text"] == tier.detokenize(out)


@pytest.mark.parametrize(
    ("tiers", "n_stages"),
    [
        (["--draft", "SAME"], 1),
        (["--draft", "ngram"], 1),
        (["--draft", "NOISY"], 1),
        (["--qualifier", "SAME", "--draft", "ngram"], 2),
        (["--qualifier", "NOISY", "--draft", "SAME"], 2),
    ],
    ids=["same", "ngram", "noisy", "same+ngram", "noisy+same"],
)
def test_speculative_runs_match_the_plain_run(
    cli, plain: dict, tiny_target: Path, tiny_same: Path, tiny_noisy: Path, tiers: list[str], n_stages: int
) -> None:
    paths = {"SAME": str(tiny_same), "NOISY": str(tiny_noisy)}
    args = [paths.get(a, a) for a in tiers]
    data = run_json(cli, PROMPT, "--target", tiny_target, "--max-tokens", N_TOKENS, *EXACT, *args)
    assert data["token_ids"] == plain["token_ids"]
    assert data["text"] == plain["text"]
    stats = data["stats"]
    assert stats["generated_tokens"] == N_TOKENS
    assert len(stats["stages"]) == n_stages
    for stage in stats["stages"]:
        assert stage.keys() >= STAGE_KEYS
        assert 0 <= stage["accepted"] <= stage["proposed"]
        speculated = stage["recovered"] + stage["bonus"]  # rounds with a proposal
        assert stage["rounds"] == speculated + stage["skipped"]
        if speculated:
            assert stage["mean_accepted_length"] == round(stage["accepted"] / speculated, 3)
    # Bottom-up: the draft proposes to the next tier up, the top stage's verifier is the target.
    names = [Path(a).name if a != "ngram" else "ngram" for a in args[1::2]][::-1]  # draft first
    assert [s["proposer"] for s in stats["stages"]] == names
    assert [s["verifier"] for s in stats["stages"]] == [*names[1:], tiny_target.name]
    top = stats["stages"][-1]
    if top["proposer"] == tiny_same.name:  # identical weights: every drafted token is accepted
        assert top["accepted"] == top["proposed"] > 0 and top["recovered"] == 0
    if top["proposer"] == tiny_noisy.name:
        assert 0 < top["accepted"] < top["proposed"] and top["recovered"] > 0


def test_stop_string_ends_generation_early(cli, plain: dict, tiny_target: Path) -> None:
    text = plain["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    at = text.find(stop)
    assert at > 0
    base = [PROMPT, "--target", tiny_target, "--max-tokens", N_TOKENS, *EXACT, "--stop", stop]
    data = run_json(cli, *base)
    assert data["text"] == text[:at]
    assert data["stats"]["finish_reason"] == "stop"
    n = len(data["token_ids"])
    assert 0 < n < N_TOKENS
    assert data["token_ids"] == plain["token_ids"][:n]
    streamed = cli("run", *base)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == text[:at] + "\n"


def test_fetch_lists_carried_models(cli) -> None:
    proc = cli("fetch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(CARRIED_MODELS)
    for line, spec in zip(lines, CARRIED_MODELS.values(), strict=True):
        assert spec.about in line


# ---- bad input: exit 2, one line, no traceback ---------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ["model file not found", "missing.gguf"]),
        ("directory", ["not a file"]),
        ("not-gguf", ["not a GGUF model file"]),
        ("truncated", ["could not load", "corrupt or truncated"]),
        ("long-prompt", ["context holds 16", "--ctx"]),
        ("max-tokens-0", ["max_tokens (--max-tokens) must be at least 1"]),
        ("temperature", ["temperature"]),
        ("top-p-0", ["top_p"]),
        ("top-p-1.5", ["top_p"]),
        ("unknown-name", ["unknown model 'no-such-model'", *CARRIED_MODELS]),
        ("other-vocab", ["different vocabularies"]),
        ("small-vocab", ["vocabulary sizes differ"]),
        ("qualifier-without-draft", ["qualifier needs a draft"]),
        ("accept-bogus", ["bogus"]),
        ("accept-count", ["accept"]),
        ("accept-count-3", ["accept"]),
    ],
)
def test_bad_input_is_one_error_line(
    cli,
    tmp_path: Path,
    tiny_target: Path,
    tiny_same: Path,
    tiny_other_vocab: Path,
    tiny_small_vocab: Path,
    case: str,
    fragments: list[str],
) -> None:
    target = ["--target", tiny_target]
    args = {
        "missing": ["--target", tmp_path / "missing.gguf"],
        "directory": ["--target", tmp_path],
        "not-gguf": ["--target", write_not_gguf(tmp_path / "text.gguf")],
        "truncated": ["--target", write_truncated_copy(tiny_target, tmp_path / "cut.gguf")],
        "long-prompt": [*target, "--ctx", 16],
        "max-tokens-0": [*target, "--max-tokens", 0],
        "temperature": [*target, "--temperature", -1],
        "top-p-0": [*target, "--top-p", 0],
        "top-p-1.5": [*target, "--top-p", 1.5],
        "unknown-name": ["--target", "no-such-model"],
        "other-vocab": [*target, "--draft", tiny_other_vocab],
        "small-vocab": [*target, "--draft", tiny_small_vocab],
        "qualifier-without-draft": [*target, "--qualifier", tiny_same, "--draft", "none"],
        "accept-bogus": [*target, "--draft", "ngram", "--accept", "bogus"],
        "accept-count": [*target, "--draft", tiny_same, "--accept", "exact,fuzzy"],
        "accept-count-3": [
            *target,
            "--qualifier",
            tiny_same,
            "--draft",
            "ngram",
            "--accept",
            "exact,fuzzy,exact",
        ],
    }[case]
    prompt = "hello world " * 20 if case == "long-prompt" else PROMPT
    assert_one_error_line(cli("run", prompt, "--max-tokens", 4, *args), *fragments)


def test_incompatible_draft_names_the_token(cli, tiny_target: Path, tiny_other_vocab: Path) -> None:
    ours, theirs = build_vocab("default")[0], build_vocab("other")[0]
    first = next(i for i in range(VOCAB_CHECK_START_TOKEN_ID, len(ours)) if ours[i] != theirs[i])
    proc = cli("run", PROMPT, "--target", tiny_target, "--draft", tiny_other_vocab)
    assert_one_error_line(
        proc, f"token {first} is {theirs[first]!r} in other_vocab.gguf but {ours[first]!r} in target.gguf"
    )


def test_unknown_carried_model_for_fetch(cli) -> None:
    assert_one_error_line(cli("fetch", "no-such-model"), "unknown carried model 'no-such-model'")


def test_cache_type_f32_is_accepted(cli, plain: dict, tiny_target: Path) -> None:
    data = run_json(
        cli, PROMPT, "--target", tiny_target, "--max-tokens", N_TOKENS, "--cache-type", "f32", *EXACT
    )
    assert data["token_ids"] == plain["token_ids"]


# ---- Ctrl-C --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny target with a 32k training context, so a generation runs long enough to interrupt."""
    return write_tiny_model(tmp_path_factory.mktemp("long") / "long.gguf", n_ctx_train=32768)


@pytest.mark.parametrize("tiers", [[], ["--draft", "ngram"]], ids=["plain", "ngram"])
def test_ctrl_c_exits_130(env: dict[str, str], tmp_path: Path, long_model: Path, tiers: list[str]) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    args = ["run", PROMPT, "--target", long_model, "--max-tokens", 100_000, "--ctx", 32768, *tiers]
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(
            [*EDGE_SPEC, *map(str, args)], stdout=fo, stderr=fe, env=env, preexec_fn=one_cpu
        )
        try:
            deadline = time.monotonic() + 60
            while out.stat().st_size < 64 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # wait for streamed text: generation is well under way
            assert proc.poll() is None, err.read_text()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err.read_text()
    assert rc == 130, stderr
    assert "Traceback" not in stderr
    interrupted = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(interrupted) == 1, stderr
    assert interrupted[0].startswith("edge-spec: interrupted; ")
    assert "tok/s" in interrupted[0]
    assert out.read_text().strip()
