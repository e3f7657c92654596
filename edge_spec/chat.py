"""Chat prompts: render a model's own Jinja chat template (from its GGUF metadata) over a message list.

Jinja2, sandboxed, renders the template exactly as Hugging Face tokenizers do, which llama.cpp's built-in
template matcher cannot promise for templates it does not recognise.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_spec.errors import ConfigError

Message = dict[str, str]
"""One chat message: {"role": "system" | "user" | "assistant", "content": "..."}."""

FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML, used when a model carries no template of its own."""


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: object, ensure_ascii: bool = False, indent: int | None = None, **kw: object) -> str:
    """transformers' tojson: plain json.dumps, no key sorting, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)  # type: ignore[arg-type]


@lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A bare prompt becomes one user message; a message list is checked and copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        raise ConfigError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}")
    messages = []
    for m in prompt:
        if not (
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        ):
            raise ConfigError(f"each message needs string 'role' and 'content' fields, got {m!r}")
        messages.append(dict(m))
    if not messages:
        raise ConfigError("the message list is empty")
    return messages


def render(template: str | None, messages: Sequence[Message], bos_text: str = "", eos_text: str = "") -> str:
    """The prompt text for `messages`, ending where the assistant's answer begins."""
    try:
        return _compile(template or FALLBACK_TEMPLATE).render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos_text, eos_token=eos_text
        )
    except jinja2.TemplateError as e:
        raise ConfigError(f"the model's chat template failed: {e}; use --raw to send the prompt as-is") from e
