"""An `edge-spec serve` (or `chat`) child process whose stderr lines the tests wait on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from children import one_cpu

EDGE_SPEC = [sys.executable, "-m", "edge_spec"]
START = re.compile(r"serving \S+ on (http://\S+)/v1 ")


class Child:
    """A command run with pipes; its stderr lines are collected by a thread and can be waited for."""

    def __init__(self, args: list[object], env: dict[str, str] | None = None, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [*EDGE_SPEC, *map(str, args)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=one_cpu,
            cwd=Path(__file__).parent.parent,
        )
        self.lines: list[str] = []
        self.out = bytearray()
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            with self._changed:
                self.out += chunk
                self._changed.notify_all()

    def wait_line(self, pattern: str, after: int = 0, timeout: float = 60) -> re.Match[str]:
        """The first stderr line from index `after` on that matches `pattern` (waits for it)."""
        regex = re.compile(pattern)
        with self._changed:
            found = self._changed.wait_for(
                lambda: (
                    self.proc.poll() is not None or any(regex.search(line) for line in self.lines[after:])
                ),
                timeout,
            )
            for line in self.lines[after:]:
                if m := regex.search(line):
                    return m
        raise AssertionError(f"no line matching {pattern!r} ({found=}); stderr:\n" + "\n".join(self.lines))

    def wait_output(self, n_bytes: int, timeout: float = 60) -> bytes:
        """stdout once it holds at least `n_bytes` bytes."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.out) >= n_bytes or self.proc.poll() is not None, timeout)
            assert len(self.out) >= n_bytes, (bytes(self.out), "\n".join(self.lines))
            return bytes(self.out)

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit status (killing the process if it does not end in time)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=10)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


class Server(Child):
    """`edge-spec serve ARGS --port 0`, ready once its start line names the address."""

    def __init__(self, args: list[object], env: dict[str, str] | None = None) -> None:
        super().__init__(["serve", *args, "--port", 0], env)
        self.url = self.wait_line(START.pattern).group(1)

    def stop(self) -> int:
        """Ctrl-C, then the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGINT)
        return self.finish()


def model_env(tmp: Path) -> dict[str, str]:
    """An environment with an empty model cache, so no test can start a download."""
    return {**os.environ, "EDGE_SPEC_MODEL_DIR": str(tmp)}
