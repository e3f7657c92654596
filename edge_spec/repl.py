"""`edge-spec chat`: a conversation in the terminal with one loaded pyramid.

Rules:
- Each line read is a user message (a line ending in a backslash continues on the next line); the whole
  conversation goes through the model's chat template every turn, and the target's KV cache still holds
  the conversation so far, so only the new part is read (the stats line says how many prompt tokens were
  reused from the cache).
- Answers stream to stdout; one stats line per answer goes to stderr.
- Ctrl-C during an answer stops it; what was shown stays in the conversation. Ctrl-C at the prompt
  clears the line. Ctrl-D (end of input) or /exit leaves.
- A message that does not fit in the context is refused with one line; the conversation stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any

import click

from edge_spec.api import Pyramid
from edge_spec.chat import Message
from edge_spec.errors import EdgeSpecError

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /undo           forget the last message and its answer
  /system [TEXT]  set the system prompt (none without TEXT) and forget the conversation
  /stats          the last answer's statistics as JSON (the stats of run --json)
  /help           this list
  /exit           leave (so does Ctrl-D)
A line ending in \\ continues on the next line. Ctrl-C stops an answer and keeps the chat."""


class Chat:
    """A conversation over `pyramid` with the command's generation options."""

    def __init__(self, pyramid: Pyramid, generation: Mapping[str, Any], system: str | None = None) -> None:
        self.pyramid = pyramid
        self.generation = dict(generation)
        self.system = system
        self.turns: list[Message] = []
        self.last_stats: dict[str, object] | None = None
        self.interactive = sys.stdin.isatty()

    @property
    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def run(self) -> None:
        """Read and answer until end of input or /exit."""
        if self.interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            _note("type a message; /help lists commands; Ctrl-D leaves")
        while True:
            try:
                text = self._read()
            except EOFError:
                if self.interactive:
                    click.echo()
                return
            except KeyboardInterrupt:
                click.echo()
                continue
            if text.startswith("/"):
                if not self._command(text):
                    return
            elif text.strip():
                self.ask(text)

    def _read(self) -> str:
        lines = [input("> " if self.interactive else "")]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(input(". " if self.interactive else ""))
        return "\n".join(lines)

    def _command(self, text: str) -> bool:
        """Run a slash command; False to leave."""
        name, _, arg = text.partition(" ")
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            self.turns.clear()
            _note("conversation forgotten")
        elif name == "/undo":
            del self.turns[-2:]
            _note(f"{len(self.turns) // 2} exchanges left")
        elif name == "/system":
            self.system = arg.strip() or None
            self.turns.clear()
            _note(f"system prompt {'set' if self.system else 'cleared'}; conversation forgotten")
        elif name == "/stats":
            click.echo(
                json.dumps(self.last_stats, indent=2) if self.last_stats else "no answer yet", err=True
            )
        elif name == "/help":
            click.echo(HELP, err=True)
        else:
            _note(f"unknown command {name}; /help lists them")
        return True

    def ask(self, text: str) -> None:
        """Answer `text` after the conversation so far, streaming to stdout."""
        messages = [*self.messages, {"role": "user", "content": text}]
        try:
            ids = self.pyramid.encode(messages)
            pieces = self.pyramid.stream(messages, **self.generation)
        except EdgeSpecError as e:
            _note(f"error: {e}; /reset or /undo makes room")
            return
        reused = len(ids) - 1 - self.pyramid.target.missing(ids[:-1])
        stopped = False
        try:
            for piece in pieces:
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stopped = True
        finally:
            pieces.close()
        result = self.pyramid.last_result
        assert result is not None
        if stopped:
            result.stats.finish_reason = "interrupted"
        click.echo()
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": result.text}]
        self.last_stats = result.stats.summary()
        note = "; stopped (Ctrl-C)" if stopped else ""
        _note(f"{result.stats.line()}, {reused} prompt tokens reused from the cache{note}")


def _note(text: str) -> None:
    click.echo(f"edge-spec: {text}", err=True)
