"""OpenAI's wire format for `edge-spec serve`: request bodies checked into generation settings, and the
response bodies, stream chunks and error bodies a client of OpenAI's API expects. No HTTP here.

Rules:
- Known fields of the wrong JSON type or out of range are 400 errors naming the field; unknown fields are
  ignored, as OpenAI does. Fields that would change the answer in a way edge-spec cannot honour (`n` > 1,
  `logprobs`, `echo`, `tools`, penalties, `logit_bias`, a non-text `response_format`, `suffix`) are 400
  errors unless they hold their neutral value.
- A field left out takes the command's option (`defaults`), so an omitted temperature is greedy unless
  `edge-spec serve --temperature` says otherwise.
- llama-server's speculative fields, as flat keys (`"speculative.n_max": 8`) or one object
  (`"speculative": {"n_max": 8}`), set the bottom stage's block length policy for this request:
  `n_max` (most drafted tokens per round) and `p_min` (stop drafting once the draft's top-1 probability
  falls below it) become `pmin:P:N` (defaults 0.75 and 16, llama-server's); `n_min` is accepted only at 0
  (no minimum), the only value the loop can honour.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_spec.stats import GenerationStats

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")
SPECULATIVE = ("n_max", "n_min", "p_min")
DEFAULT_N_MAX = 16  # llama-server's --draft-max default
DEFAULT_P_MIN = 0.75  # llama-server's --draft-p-min default
_UNSUPPORTED_UNLESS = {  # field -> its neutral values
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "functions": (None, []),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
}


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Request:
    """One completion request, checked: `options` are `Pyramid.stream`'s keywords."""

    chat: bool  # /v1/chat/completions (messages through the chat template) or /v1/completions (raw text)
    prompt: str | list[dict[str, str]]
    options: dict[str, Any]
    stream: bool
    include_usage: bool
    model: str | None  # as the client named it (None: not given)
    lookahead: str | None  # the bottom stage's policy from speculative.*, None = the command's


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


def _integer(body: Mapping[str, Any], name: str, least: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be an integer, got {value!r}")
    if value < least:
        raise _bad(name, f"must be at least {least}, got {value}")
    return value


def _number(body: Mapping[str, Any], name: str, least: float, most: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, f"must be a number, got {value!r}")
    if value < least or (most is not None and value > most):
        bound = f"between {least:g} and {most:g}" if most is not None else f"at least {least:g}"
        raise _bad(name, f"must be {bound}, got {value}")
    return float(value)


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(name, f"must be true or false, got {value!r}")
    return bool(value)


def _stop(body: Mapping[str, Any]) -> list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", f"must be a string or a list of strings, got {value!r}")
    return stops


def _content(i: int, content: object) -> str:
    """A message's content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise _bad(f"messages[{i}].content", f"only text parts are supported, got {part!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content", f"must be a string or a list of text parts, got {content!r}")


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
            raise _bad(f"messages[{i}]", f"needs a role among {', '.join(MESSAGE_ROLES)}, got {m!r}")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(i, m.get("content"))})
    return out


def _completion_prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _bad("prompt", "must be a non-empty string (or a list of one string)")
    return prompt


def _speculative(body: Mapping[str, Any]) -> str | None:
    """The bottom stage's lookahead from llama-server's speculative.* fields (None when none is given)."""
    nested = body.get("speculative")
    if nested is not None and not isinstance(nested, dict):
        raise _bad("speculative", f"must be an object, got {nested!r}")
    given = {k: v for k, v in (nested or {}).items() if k in SPECULATIVE and v is not None}
    given.update(
        {k: body[f"speculative.{k}"] for k in SPECULATIVE if body.get(f"speculative.{k}") is not None}
    )
    fields = {f"speculative.{k}": v for k, v in given.items()}
    if not fields:
        return None
    n_max = _integer(fields, "speculative.n_max", 0)
    p_min = _number(fields, "speculative.p_min", 0, 1)
    if _integer(fields, "speculative.n_min", 0):
        raise _bad("speculative.n_min", "only 0 is supported (drafts are never discarded for being short)")
    if n_max == 0:
        return "fixed:0"
    return f"pmin:{DEFAULT_P_MIN if p_min is None else p_min:g}:{DEFAULT_N_MAX if n_max is None else n_max}"


def _unsupported(body: Mapping[str, Any]) -> None:
    for name, neutral in _UNSUPPORTED_UNLESS.items():
        if name in body and body[name] not in neutral:
            raise _bad(name, f"is not supported (send {neutral[-1]!r} or leave it out)")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise _bad("response_format", 'only {"type": "text"} is supported')


def parse_request(body: object, chat: bool, defaults: Mapping[str, Any]) -> Request:
    """A checked request from a decoded JSON body; `defaults` are the command's generation options
    (`Pyramid.stream` keywords) for the fields a request leaves out. Raises ApiError (400)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", f"must be a string, got {model!r}")
    _unsupported(body)
    prompt: str | list[dict[str, str]] = _messages(body) if chat else _completion_prompt(body)
    given: dict[str, Any] = {
        "max_tokens": (_integer(body, "max_completion_tokens", 1) if chat else None)
        or _integer(body, "max_tokens", 1),
        "temperature": _number(body, "temperature", 0),
        "top_p": _number(body, "top_p", 0, 1),
        "top_k": _integer(body, "top_k", 0),
        "min_p": _number(body, "min_p", 0, 1),
        "seed": _integer(body, "seed", 0),
        "stop": _stop(body),
    }
    options = {**defaults, **{k: v for k, v in given.items() if v is not None}, "raw": not chat}
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _bad("stream_options", f"must be an object, got {stream_options!r}")
    stream = _flag(body, "stream")
    include_usage = _flag(stream_options or {}, "include_usage")
    return Request(chat, prompt, options, stream, include_usage, model, _speculative(body))


# ---- responses -----------------------------------------------------------------------------------------


def finish_reason(stats: GenerationStats) -> str:
    """OpenAI's finish_reason: stop (end of text or a stop string) or length (max tokens or full context)."""
    return "stop" if stats.finish_reason == "stop" else "length"


def usage(stats: GenerationStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    }


def timings(stats: GenerationStats, cached: int) -> dict[str, float | int]:
    """llama-server's `timings`: prompt_n tokens read (cache_n more were reused from the KV cache),
    predicted_n generated; draft_n / draft_n_accepted count tokens proposed to the target and kept."""
    read = stats.prompt_tokens - cached
    prompt_ms, predicted_ms = stats.prefill_seconds * 1000, stats.decode_seconds * 1000
    out: dict[str, float | int] = {
        "cache_n": cached,
        "prompt_n": read,
        "prompt_ms": round(prompt_ms, 3),
        "prompt_per_token_ms": round(prompt_ms / read, 3) if read else 0.0,
        "prompt_per_second": round(read / stats.prefill_seconds, 2)
        if read and stats.prefill_seconds
        else 0.0,
        "predicted_n": stats.generated_tokens,
        "predicted_ms": round(predicted_ms, 3),
        "predicted_per_token_ms": round(predicted_ms / stats.generated_tokens, 3)
        if stats.generated_tokens
        else 0.0,
        "predicted_per_second": round(stats.tokens_per_second, 2),
    }
    if stats.stages:  # a pyramid with a draft
        top = stats.stages[-1]
        out.update(draft_n=top.proposed, draft_n_accepted=top.accepted)
    return out


@dataclass
class Reply:
    """The shape of one request's answer: ids, names and the extension objects."""

    chat: bool
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = self.created or int(time.time())

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": f"{kind}.chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.model,
        }

    def _choice(self, text: str, reason: str | None, delta: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        if delta:
            return {
                "index": 0,
                "delta": {"content": text} if text else {},
                "logprobs": None,
                "finish_reason": reason,
            }
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}

    @staticmethod
    def extensions(stats: GenerationStats, cached: int, extra: Mapping[str, Any]) -> dict[str, Any]:
        """llama-server's `timings` and edge-spec's own `edge_spec`: `run --json`'s stats and `extra`."""
        return {"timings": timings(stats, cached), "edge_spec": {**stats.summary(), **extra}}

    def whole(
        self, text: str, stats: GenerationStats, cached: int, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The non-streamed response."""
        return {
            **self._envelope(chunk=False),
            "choices": [self._choice(text, finish_reason(stats), delta=False)],
            "usage": usage(stats),
            **self.extensions(stats, cached, extra),
        }

    def first_chunk(self) -> dict[str, Any]:
        """A chat stream opens with the assistant's role (completions have no first chunk of their own)."""
        chunk = {**self._envelope(chunk=True), "choices": [self._choice("", None, delta=True)]}
        chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return chunk

    def chunk(self, text: str) -> dict[str, Any]:
        return {**self._envelope(chunk=True), "choices": [self._choice(text, None, delta=True)]}

    def last_chunk(self, stats: GenerationStats, cached: int, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The chunk with finish_reason, with `timings` and `edge_spec` (as llama-server's last chunk)."""
        return {
            **self._envelope(chunk=True),
            "choices": [self._choice("", finish_reason(stats), delta=True)],
            **self.extensions(stats, cached, extra),
        }

    def usage_chunk(self, stats: GenerationStats) -> dict[str, Any]:
        """stream_options.include_usage: one more chunk with no choices and the usage."""
        return {**self._envelope(chunk=True), "choices": [], "usage": usage(stats)}
