"""Run model-generated Python away from the benchmark process, and grade HumanEval completions (pass@1).

This is a best-effort sandbox, not a security boundary. Like HumanEval's own harness, which warns that it
executes untrusted model-generated code, it only makes accidents less likely: each program runs in a fresh
`python -I` subprocess (never in the calling process) in a temporary directory, with stdin closed, a
scrubbed environment, resource limits where the OS has them (POSIX) and a wall-clock timeout, after which
its whole process group is killed. A program can still read, write or delete what the user can, and reach
the network. Run untrusted code in a container or VM.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from edge_spec.suites import BenchPrompt

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

MEMORY_BYTES = 2 << 30
"""Address-space limit of a program: 2 GiB (not enforced on macOS, so not set there, as in HumanEval)."""
FILE_BYTES = 64 << 20
"""Largest file a program may write, its stderr included: 64 MiB."""
DETAIL_CHARS = 500
"""Outcome.detail keeps at most this many characters: the tail of stderr."""


@dataclass(frozen=True)
class Outcome:
    """How a program run ended."""

    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error" (could not run)
    detail: str  # last lines of stderr, or why; at most DETAIL_CHARS characters


def _limits(timeout: float) -> Callable[[], None]:
    """Sets the child's resource limits; runs in the child between fork and exec."""
    cpu = math.ceil(timeout) + 1
    limits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_FSIZE, FILE_BYTES, FILE_BYTES),
    ]
    if platform.system() != "Darwin":
        limits.append((resource.RLIMIT_AS, MEMORY_BYTES, MEMORY_BYTES))

    def apply() -> None:
        for which, soft, hard in limits:
            ceiling = resource.getrlimit(which)[1]
            if ceiling != resource.RLIM_INFINITY:
                soft, hard = min(soft, ceiling), min(hard, ceiling)
            resource.setrlimit(which, (soft, hard))

    return apply


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= DETAIL_CHARS else "..." + text[3 - DETAIL_CHARS :]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process started with start_new_session=True and everything it started (its process group),
    then reap it."""
    if hasattr(os, "killpg"):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:  # pragma: no cover - Windows
        proc.kill()
    proc.wait()


def run_python(program: str, timeout: float = 10.0) -> Outcome:
    """Run `program` in a fresh `python -I` (sys.executable) subprocess, in a temporary directory, with stdin
    closed, a scrubbed environment, resource limits where the OS has them (address space 2 GiB, CPU seconds
    timeout+1, no core files, file size 64 MiB) and a wall-clock `timeout` in seconds (interpreter start
    included), after which the whole process group is killed. Passed = exit status 0."""
    with (
        tempfile.TemporaryDirectory(prefix="edge-spec-sandbox-", ignore_cleanup_errors=True) as tmp,
        tempfile.TemporaryFile() as stderr,
    ):
        script = Path(tmp) / "program.py"
        script.write_text(program, encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp}
        if "SYSTEMROOT" in os.environ:  # pragma: no cover - Windows: Python cannot start without it
            env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", script.name],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_limits(timeout) if resource else None,
            )
        except (OSError, subprocess.SubprocessError) as e:
            return Outcome(False, "error", _tail(f"could not start python: {e}"))
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return Outcome(False, "timeout", f"no exit within {timeout:g} s")
        finally:
            kill_group(proc)
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4 * DETAIL_CHARS))
        err = _tail(stderr.read().decode("utf-8", "replace"))
    if code == 0:
        return Outcome(True, "passed", err)
    if code == -getattr(signal, "SIGXCPU", 0):
        return Outcome(False, "timeout", "CPU time limit exceeded")
    why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    return Outcome(False, "failed", _tail(f"{why}: {err}" if err else why))


def humaneval_program(prompt: BenchPrompt, completion: str) -> str:
    """The program HumanEval runs: prompt + completion, the test code, then `check(entry_point)`."""
    if prompt.entry_point is None or prompt.test is None:
        raise ValueError(f"{prompt.id} has no HumanEval test")
    return f"{prompt.text}{completion}\n{prompt.test}\ncheck({prompt.entry_point})\n"


def pass_at_1(prompt: BenchPrompt, completion: str, timeout: float = 10.0) -> Outcome:
    """Whether `completion` (the generated text, stop strings already cut) passes the HumanEval test."""
    return run_python(humaneval_program(prompt, completion), timeout)
