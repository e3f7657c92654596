"""`edge-spec chat` driven through its stdin on tiny generated models, and the KV cache reuse it relies on.
Tests wait on the child's output, never on sleeps."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from served import Child, model_env
from tiny_gguf import write_tiny_model

from edge_spec.api import Pyramid

EXACT = ["--no-flash-attn", "--cache-type", "f32"]
STATS = re.compile(
    r"^edge-spec: (\d+) tokens, .* \((\d+) prompt tokens\).*, (\d+) prompt tokens reused from the cache"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return model_env(tmp_path_factory.mktemp("model_cache"))


def _chat(env: dict[str, str], model: Path, *args: object) -> Child:
    return Child(["chat", "--target", model, *args], env, stdin=True)


def test_a_conversation_with_commands(env: dict[str, str], tiny_target: Path) -> None:
    child = _chat(env, tiny_target, "-n", 6, "--draft", "none", *EXACT)
    script = "hello world\nhow are you\n/stats\n/undo\n/reset\nhello world\n/nope\n/help\n"
    assert child.proc.stdin is not None
    child.proc.stdin.write(script.encode())
    child.proc.stdin.close()
    assert child.finish() == 0, child.stderr  # end of input leaves
    stats = [STATS.match(line) for line in child.lines]
    turns = [(int(m[1]), int(m[2]), int(m[3])) for m in stats if m]
    assert len(turns) == 3 and all(generated == 6 for generated, _, _ in turns)
    (_, first_prompt, first_reused), (_, second_prompt, second_reused), (_, third_prompt, _) = turns
    assert first_reused == 0
    assert second_prompt > first_prompt and second_reused >= first_prompt - 1  # the first turn stayed cached
    assert third_prompt == first_prompt  # /reset: the conversation starts again
    answers = child.out.decode().splitlines()
    assert len(answers) == 3 and answers[0] == answers[2]  # greedy: the same first answer again
    text = child.stderr
    assert '"generated_tokens": 6' in text  # /stats
    assert "1 exchanges left" in text and "conversation forgotten" in text
    assert "unknown command /nope" in text and "/system [TEXT]" in text


def test_ctrl_c_stops_the_answer_and_keeps_the_chat(env: dict[str, str], tmp_path: Path) -> None:
    long = write_tiny_model(tmp_path / "long.gguf", n_ctx_train=32768)
    child = _chat(env, long, "-n", 100_000, "--ctx", 32768)
    assert child.proc.stdin is not None
    child.proc.stdin.write(b"hello\n")
    child.proc.stdin.flush()
    child.wait_output(64)  # the answer is streaming
    child.signal(signal.SIGINT)
    child.wait_line(r"stopped \(Ctrl-C\)")
    child.proc.stdin.write(b"/stats\n")
    child.proc.stdin.close()
    assert child.finish() == 0, child.stderr
    assert '"finish_reason": "interrupted"' in child.stderr and "Traceback" not in child.stderr


def test_the_cache_of_earlier_turns_changes_no_answer(tiny_target: Path) -> None:
    """A turn read on top of the cached conversation answers as a fresh pyramid reading it whole."""
    options = {"draft": None, "flash_attn": False, "cache_type": "f32", "ctx": 512, "threads": 1}
    first = [{"role": "user", "content": "the quick brown fox"}]
    with Pyramid.open(tiny_target, **options) as warm, Pyramid.open(tiny_target, **options) as cold:
        answer = warm.generate(first, max_tokens=12)
        conversation = [
            *first,
            {"role": "assistant", "content": answer.text},
            {"role": "user", "content": "and"},
        ]
        again = warm.generate(conversation, max_tokens=12)
        fresh = cold.generate(conversation, max_tokens=12)
    assert again.token_ids == fresh.token_ids
    assert again.stats.prompt_tokens == fresh.stats.prompt_tokens
