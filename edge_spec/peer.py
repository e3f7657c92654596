"""Run llama.cpp's `llama-speculative-simple` example as a peer baseline for the benchmark.

The binary is not part of llama-cpp-python's wheel: build it from llama.cpp (target
`llama-speculative-simple`) and put it on PATH, or pass its path. It decodes one prompt with a target and
a draft model (classic greedy draft-then-verify) and logs a summary to stderr, which `parse_peer_output`
reads; the prompt echo and the generated text go to stdout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from edge_spec.errors import ConfigError, EdgeSpecError, ModelError
from edge_spec.sandbox import kill_group

PEER_BINARY = "llama-speculative-simple"
TAIL_LINES = 15
"""Lines of the binary's output quoted in an error."""

_SUMMARY = {
    "encoded": re.compile(r"encoded\s+(\d+) tokens in\s+([0-9.]+) seconds"),
    "decoded": re.compile(r"decoded\s+(\d+) tokens in\s+([0-9.]+) seconds"),
    "n_drafted": re.compile(r"n_drafted\s*=\s*(\d+)"),
    "n_accept": re.compile(r"n_accept\s*=\s*(\d+)"),
}
_STDOUT_END = "\n\n\n\n"  # two LOG("\n\n") after the generated text


@dataclass(frozen=True)
class PeerRun:
    """What one llama-speculative-simple run reports.

    generated_tokens counts as the binary does: an end-of-generation token included, and it may overshoot
    the budget by up to the draft length (the last round's draft is not cut to the budget). decode_seconds
    is the draft-and-verify loop; prefill_seconds is the prompt on both models (all but its last token).
    """

    generated_tokens: int
    decode_seconds: float
    prefill_seconds: float
    drafted: int
    accepted: int
    text: str = ""  # the generated text, read from stdout by run_peer ("" when unknown)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of decoding (0.0 without decode time)."""
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def acceptance(self) -> float | None:
        """Accepted / drafted tokens; None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None


def find_peer(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The binary: `explicit` (must exist and be executable, else ConfigError), else PEER_BINARY on PATH,
    else None."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(f"{path} is not an executable file (expected llama.cpp's {PEER_BINARY})")
        return path
    found = shutil.which(PEER_BINARY)
    return Path(found) if found else None


def _tail(output: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(output.strip().splitlines()[-lines:]) or "(no output)"


def _output_tail(stdout: bytes, stderr: bytes) -> str:
    """The last lines of stderr (where the binary logs), else of stdout."""
    err = stderr.decode("utf-8", "replace")
    return _tail(err if err.strip() else stdout.decode("utf-8", "replace"))


def parse_peer_output(output: str) -> PeerRun:
    """Parse the binary's output (stderr, or stdout and stderr combined); EdgeSpecError naming what is
    missing when the summary lines are absent. The text is left "": see `generated_text`."""
    found = {name: list(rx.finditer(output)) for name, rx in _SUMMARY.items()}
    missing = [name for name, matches in found.items() if not matches]
    if missing:
        raise EdgeSpecError(
            f"{PEER_BINARY} output lacks its summary (no {', '.join(missing)} line); "
            f"last lines:\n{_tail(output)}"
        )
    # the last match: the generated text, printed before the summary, cannot shadow it
    last = {name: matches[-1] for name, matches in found.items()}
    return PeerRun(
        generated_tokens=int(last["decoded"][1]),
        decode_seconds=float(last["decoded"][2]),
        prefill_seconds=float(last["encoded"][2]),
        drafted=int(last["n_drafted"][1]),
        accepted=int(last["n_accept"][1]),
    )


def generated_text(stdout: str, prompt: str) -> str:
    """The generated text in the binary's stdout alone: two newlines, the prompt echoed token by token
    (after a BOS piece if the model adds one), the text, then four newlines. "" when the echo is not found."""
    body = stdout.removeprefix("\n\n")
    start = body.find(prompt)
    if not prompt or start < 0:
        return ""
    text = body[start + len(prompt) :]
    return text[: -len(_STDOUT_END)] if text.endswith(_STDOUT_END) else text


def run_peer(
    binary: Path,
    target: Path,
    draft: Path,
    prompt: str,
    *,
    max_tokens: int,
    draft_max: int,
    n_ctx: int,
    threads: int,
    seed: int = 0,
    timeout: float = 600.0,
) -> PeerRun:
    """Run one greedy generation of `prompt` and parse it. Nonzero exit or timeout -> EdgeSpecError with the
    last lines of output.

    The prompt is given as-is (the caller renders any chat template): the binary applies none, adds BOS
    itself when the target's vocabulary asks for it (so leave BOS text out), and tokenizes with special
    tokens parsed, so `<|im_start|>` in the text becomes the special token. It goes through a file (no argv
    limits), with escape processing off so backslashes stay literal. The draft model uses the same context
    size and threads as the target.
    """
    if not prompt:
        raise ConfigError("the peer needs a non-empty prompt")
    if min(max_tokens, draft_max, n_ctx, threads) < 1:
        raise ConfigError(
            f"max_tokens, draft_max, n_ctx and threads must be >= 1 (got {max_tokens}, {draft_max}, "
            f"{n_ctx}, {threads})"
        )
    for model in (target, draft):
        if not Path(model).is_file():
            raise ModelError(f"model file not found: {model}")
    # llama.cpp's LLAMA_ARG_* variables would override defaults we rely on
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    with tempfile.TemporaryDirectory(prefix="edge-spec-peer-") as tmp:
        prompt_file = Path(tmp) / "prompt.txt"
        # -f drops one trailing newline from the file: add one so the prompt's own survives
        prompt_file.write_text(prompt + "\n", encoding="utf-8")
        # -n N decodes until there are more than N tokens: N = max_tokens - 1 yields at least max_tokens.
        # Greedy: temperature 0, top-k 1. A fixed draft length: n-min 0 and p-min 0 (no confidence cut-off).
        cmd = [
            str(binary),
            "-m", str(target), "-md", str(draft), "--spec-type", "draft-simple",
            "-f", str(prompt_file), "--no-escape",
            "-n", str(max_tokens - 1), "--temp", "0", "--top-k", "1", "-s", str(seed),
            "--spec-draft-n-max", str(draft_max), "--spec-draft-n-min", "0", "--spec-draft-p-min", "0",
            "-c", str(n_ctx), "-b", str(n_ctx),
            "-t", str(threads), "-tb", str(threads), "-td", str(threads), "-tbd", str(threads),
            "--color", "off",
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            raise EdgeSpecError(f"could not start {binary}: {e}") from e
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            raise EdgeSpecError(
                f"{PEER_BINARY} gave no result within {timeout:g} s; last lines:\n{_output_tail(out, err)}"
            ) from None
    if proc.returncode != 0:
        code = proc.returncode
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise EdgeSpecError(f"{PEER_BINARY} failed ({why}); last lines:\n{_output_tail(out, err)}")
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    # stderr last: generated text on stdout cannot shadow the summary
    return replace(parse_peer_output(f"{stdout}\n{stderr}"), text=generated_text(stdout, prompt))
