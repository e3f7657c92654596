"""The HumanEval sandbox: completions run in a limited subprocess, never in the test process."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from edge_spec.sandbox import humaneval_program, pass_at_1, run_python
from edge_spec.suites import BenchPrompt, load_suite

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux rlimits and /proc")

GOOD = {
    "HumanEval/0": (
        "    ordered = sorted(numbers)\n"
        "    return any(b - a < threshold for a, b in zip(ordered, ordered[1:]))\n"
    ),
    "HumanEval/2": "    return number - int(number)\n",
    "HumanEval/7": "    return [s for s in strings if substring in s]\n",
}


@pytest.fixture(scope="module")
def humaneval() -> dict[str, BenchPrompt]:
    return {p.id: p for p in load_suite("code", limit=8)}


@pytest.mark.parametrize("task", sorted(GOOD))
def test_known_good_completion_passes(humaneval: dict[str, BenchPrompt], task: str) -> None:
    outcome = pass_at_1(humaneval[task], GOOD[task])
    assert (outcome.passed, outcome.status) == (True, "passed"), outcome.detail


def test_wrong_completion_fails_with_the_assertion(humaneval: dict[str, BenchPrompt]) -> None:
    outcome = pass_at_1(humaneval["HumanEval/0"], "    return False\n")
    assert (outcome.passed, outcome.status) == (False, "failed")
    assert "AssertionError" in outcome.detail and len(outcome.detail) <= 500


def test_syntax_error_fails(humaneval: dict[str, BenchPrompt]) -> None:
    outcome = pass_at_1(humaneval["HumanEval/2"], "    return number %\n")
    assert outcome.status == "failed" and "SyntaxError" in outcome.detail


def test_endless_loop_times_out(humaneval: dict[str, BenchPrompt]) -> None:
    start = time.monotonic()
    outcome = pass_at_1(humaneval["HumanEval/7"], "    while True:\n        pass\n", timeout=2)
    assert (outcome.passed, outcome.status) == (False, "timeout")
    assert time.monotonic() - start < 5


@linux_only
def test_huge_allocation_fails_inside_the_limit(humaneval: dict[str, BenchPrompt]) -> None:
    outcome = pass_at_1(humaneval["HumanEval/7"], "    hog = bytearray(16 << 30)\n    return hog\n")
    assert outcome.status == "failed" and "MemoryError" in outcome.detail


@linux_only
def test_timeout_kills_what_the_program_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    program = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    assert run_python(program, timeout=2).status == "timeout"
    status = Path(f"/proc/{pid_file.read_text()}/status")

    def gone() -> bool:
        try:
            return "\nState:\tZ" in status.read_text()  # killed, not yet reaped
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 5  # SIGKILL lands when the kernel next schedules the process
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone()


def test_environment_is_scrubbed_and_stdin_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SPEC_PROBE", "secret")
    program = (
        "import os, sys\n"
        "assert 'EDGE_SPEC_PROBE' not in os.environ, 'environment leaked'\n"
        "assert sys.stdin.read() == '', 'stdin open'\n"
        "assert 'edge-spec-sandbox-' in os.getcwd(), 'not in the temporary directory'\n"
    )
    outcome = run_python(program)
    assert outcome.passed, outcome.detail


def test_nonzero_exit_status_fails() -> None:
    outcome = run_python("import sys; sys.exit(3)")
    assert (outcome.status, outcome.detail) == ("failed", "exit status 3")


def test_humaneval_program_layout(humaneval: dict[str, BenchPrompt]) -> None:
    prompt = humaneval["HumanEval/2"]
    program = humaneval_program(prompt, GOOD["HumanEval/2"])
    assert program == f"{prompt.text}{GOOD['HumanEval/2']}\n{prompt.test}\ncheck(truncate_number)\n"
    with pytest.raises(ValueError, match="no HumanEval test"):
        humaneval_program(load_suite("chat", limit=1)[0], "")
