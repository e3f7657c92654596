"""`edge-spec serve`: OpenAI's HTTP API over loaded pyramids (Starlette on uvicorn). The only module that
imports them; the command imports it when it starts serving, so `import edge_spec` and `edge-spec run`
never load a web stack.

Rules:
- POST /v1/chat/completions and /v1/completions answer whole or as server-sent events ending with
  `data: [DONE]`; GET /v1/models names the target and its tiers; GET /health needs no key.
- Each request waits for a slot (`edge_spec.slots`: first come, first served); each slot is one loaded
  pyramid running one generation at a time. Each step of a generation runs in a worker thread, so the
  event loop keeps answering while models decode.
- Bad requests get OpenAI-shaped errors, checked before a request queues: 400 (malformed JSON, a field of
  the wrong type or value, a prompt longer than the context), 401 (a missing or wrong key when one is
  set), 404 (an unknown model or path), 413 (a body over MAX_BODY_BYTES); faults while generating: 500,
  or an error event in a stream. None of them stops the server.
- A client that goes away stops its generation at the end of the current round and frees the slot
  (while it waits in the queue, it leaves the queue).
- SIGINT or SIGTERM: the listening socket closes (new connections are refused), running and queued
  requests finish, the process exits 0; a second signal exits at once with 128 + its number (130 for
  Ctrl-C).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge_spec.api import Pyramid, Result
from edge_spec.errors import ConfigError, ContextOverflowError, EdgeSpecError
from edge_spec.lookahead import parse_lookahead
from edge_spec.openai_format import ApiError, Reply, Request, parse_request
from edge_spec.slots import Slot, Slots

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest request body answered (413 beyond it): about a million tokens of text."""
_DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to here before the 413
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass
class Service:
    """What the routes serve: the slots, the model's names, the command's generation options."""

    slots: Slots
    model: str  # the id clients see (the target's file name)
    aliases: frozenset[str]  # other names a request may give for it
    defaults: dict[str, Any]  # Pyramid.stream keywords for fields a request leaves out
    api_key: str | None
    log: Callable[[str], None]

    @property
    def pyramid(self) -> Pyramid:
        """Slot 0's pyramid: every slot loads the same models, so any one answers questions about them."""
        return self.slots.all[0].pyramid


def _error_response(e: ApiError) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _authorize(service: Service, request: HttpRequest) -> None:
    if service.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, key = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), service.api_key.encode()):
        raise ApiError(
            401, "missing or wrong API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
        )


async def _json_body(request: HttpRequest) -> object:
    """The decoded body; 413 beyond MAX_BODY_BYTES (read to its end first, so the client sees the answer)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        elif size > _DRAIN_BYTES:
            break
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        return json.loads(b"".join(chunks))
    except ValueError as e:  # UnicodeDecodeError too
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


def _prompt_ids(pyr: Pyramid, req: Request) -> list[int]:
    """The prompt's tokens, or 400 when it cannot be read or is longer than the context."""
    try:
        ids = pyr.encode(req.prompt, req.options["raw"])
    except ConfigError as e:
        raise ApiError(400, str(e), param="messages" if req.chat else "prompt") from None
    if len(ids) >= pyr.n_ctx:
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens but the context holds {pyr.n_ctx}; shorten it "
            "(or restart the server with a larger --ctx)",
            param="messages" if req.chat else "prompt",
            code="context_length_exceeded",
        )
    return ids


def _advance(pieces: Iterator[str]) -> str | Result:
    """The next text piece, or the Result once the generation ended (StopIteration cannot cross threads)."""
    try:
        return next(pieces)
    except StopIteration as done:
        return done.value


def _sse(data: object) -> dict[str, Any]:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return {"type": "http.response.body", "body": f"data: {text}\n\n".encode(), "more_body": True}


class _Completion:
    """The ASGI response of one checked request: wait for a slot, generate, answer whole or streamed. A
    client that disconnects cancels this; the generator is then closed and the slot released."""

    def __init__(self, service: Service, req: Request, prompt_ids: list[int]) -> None:
        self.service, self.req, self.prompt_ids = service, req, prompt_ids
        self.reply = Reply(req.chat, service.model)
        self.scope: Scope = {}
        self.started = False  # the stream's headers were sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await self._answer(send)
            finally:
                group.cancel_scope.cancel()

    def _pyramid(self, slot: Slot) -> Pyramid:
        """The slot's pyramid, or a view of its tiers with this request's bottom-stage lookahead."""
        pyr = slot.pyramid
        if self.req.lookahead is None:
            return pyr
        stages = [dataclasses.replace(pyr.stages[0], lookahead=self.req.lookahead), *pyr.stages[1:]]
        return pyr.with_stages(stages)

    async def _answer(self, send: Send) -> None:
        queued = time.perf_counter()
        slot = await self.service.slots.acquire(self.prompt_ids)
        try:
            cached = slot.reusable(self.prompt_ids)
            pieces = self._pyramid(slot).stream(self.req.prompt, **self.req.options)
            extra = {"slot": slot.index, "queued_seconds": round(time.perf_counter() - queued, 4)}
            try:
                result = await (self._stream(send, pieces) if self.req.stream else self._whole(pieces))
                tail = f", {cached} prompt tokens reused" if cached else ""
                self.service.log(f"slot {slot.index}: {result.stats.line()}{tail}")
                if self.req.stream:
                    await send(_sse(self.reply.last_chunk(result.stats, cached, extra)))
                    if self.req.include_usage:
                        await send(_sse(self.reply.usage_chunk(result.stats)))
                    await send(_sse("[DONE]"))
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    body = self.reply.whole(result.text, result.stats, cached, extra)
                    await JSONResponse(body)(self.scope, _no_receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(pieces.close)
        except EdgeSpecError as e:
            await self._fault(send, e)
        except anyio.get_cancelled_exc_class():
            self.service.log(f"slot {slot.index}: the client went away; generation stopped")
            raise
        finally:
            self.service.slots.release(slot)

    async def _whole(self, pieces: Iterator[str]) -> Result:
        while not isinstance(item := await anyio.to_thread.run_sync(_advance, pieces), Result):
            pass
        return item

    async def _stream(self, send: Send, pieces: Iterator[str]) -> Result:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        self.started = True
        if self.req.chat:
            await send(_sse(self.reply.first_chunk()))
        while not isinstance(item := await anyio.to_thread.run_sync(_advance, pieces), Result):
            await send(_sse(self.reply.chunk(item)))
        return item

    async def _fault(self, send: Send, e: EdgeSpecError) -> None:
        """A generation that failed: an error event when the stream has begun, else a 500 (400 for bad
        settings) answer."""
        status = 400 if isinstance(e, (ConfigError, ContextOverflowError)) else 500
        error = ApiError(status, str(e), kind="invalid_request_error" if status == 400 else "server_error")
        self.service.log(f"error: {e}")
        if self.started:
            await send(_sse(error.body()))
            await send(_sse("[DONE]"))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _error_response(error)(self.scope, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    raise RuntimeError("a finished request has nothing more to receive")


def create_app(service: Service) -> Starlette:
    """The Starlette application over `service`."""

    async def completion(request: HttpRequest, chat: bool) -> Any:
        _authorize(service, request)
        req = parse_request(await _json_body(request), chat, service.defaults)
        if req.model is not None and req.model not in {service.model, *service.aliases}:
            raise ApiError(
                404,
                f"the model {req.model!r} is not served here; this server serves {service.model!r}",
                param="model",
                code="model_not_found",
            )
        if req.lookahead is not None:
            try:
                parse_lookahead(req.lookahead)
            except ConfigError as e:
                raise ApiError(400, str(e), param="speculative") from None
        ids = await anyio.to_thread.run_sync(_prompt_ids, service.pyramid, req)
        return _Completion(service, req, ids)

    async def chat_completions(request: HttpRequest) -> Any:
        return await completion(request, chat=True)

    async def completions(request: HttpRequest) -> Any:
        return await completion(request, chat=False)

    def model_entry() -> dict[str, Any]:
        pyr = service.pyramid
        drafts = pyr.draft if isinstance(pyr.draft, list) else [pyr.draft]  # several: goodput picks per round
        roles = [*(("draft", d) for d in drafts), ("qualifier", pyr.qualifier), ("target", pyr.target)]
        tiers = [
            {"role": role, "model": tier if isinstance(tier, str) else tier.path.name}
            | ({} if isinstance(tier, str) else {"device": tier.device})
            for role, tier in roles
            if tier is not None
        ]
        about = {"tiers": tiers, "n_ctx": pyr.n_ctx, "slots": len(service.slots.all)}
        return {
            "id": service.model,
            "object": "model",
            "created": 0,
            "owned_by": "edge-spec",
            "edge_spec": about,
        }

    async def models(request: HttpRequest) -> JSONResponse:
        _authorize(service, request)
        return JSONResponse({"object": "list", "data": [model_entry()]})

    async def model(request: HttpRequest) -> JSONResponse:
        _authorize(service, request)
        name = request.path_params["name"]
        if name not in {service.model, *service.aliases}:
            raise ApiError(
                404, f"the model {name!r} is not served here", param="model", code="model_not_found"
            )
        return JSONResponse(model_entry())

    async def health(request: HttpRequest) -> JSONResponse:
        slots = service.slots
        return JSONResponse(
            {"status": "ok", "slots": len(slots.all), "busy": slots.busy, "queued": slots.queued}
        )

    async def api_error(request: HttpRequest, e: Exception) -> JSONResponse:
        assert isinstance(e, ApiError)
        return _error_response(e)

    async def http_error(request: HttpRequest, e: Exception) -> JSONResponse:
        assert isinstance(e, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error_response(
            ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code)
        )

    async def server_error(request: HttpRequest, e: Exception) -> JSONResponse:
        return _error_response(ApiError(500, f"internal error: {e!r}", kind="server_error"))

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    handlers = {ApiError: api_error, HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), not yet listening. Raises ConfigError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with edge-spec's start line and signal rules (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[], None], log: Callable[[str], None]) -> None:
        super().__init__(config)
        self.ready, self.log = ready, log

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for listening in self.servers:  # uvicorn's shutdown closes them too; say so only once they are
            listening.close()
        self.log("shutting down: no new connections; running requests finish (Ctrl-C again stops at once)")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def handle(signum: int, _frame: object) -> None:
            if self.should_exit:
                self.log("stopped at once")
                sys.stderr.flush()
                os._exit(128 + signum)  # worker threads may be inside llama.cpp: no interpreter teardown
            self.should_exit = True

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def serve(
    pyramids: Sequence[Pyramid],
    sock: socket.socket,
    *,
    aliases: Collection[str] = (),
    defaults: dict[str, Any],
    api_key: str | None,
    log: Callable[[str], None],
) -> None:
    """Serve on the bound socket until SIGINT or SIGTERM (see the module docstring); returns after a clean
    shutdown. The pyramids stay open (the caller closes them)."""
    model = pyramids[0].model
    service = Service(Slots(pyramids), model, frozenset(aliases), defaults, api_key, log)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        scope = (
            "local connections only"
            if host in ("127.0.0.1", "::1", "localhost")
            else f"every client of {host}"
        )
        log(f"serving {model} on http://{shown}:{port}/v1 ({len(pyramids)} slot(s), {scope}); Ctrl-C stops")

    config = uvicorn.Config(
        create_app(service), log_config=None, log_level="warning", access_log=False, lifespan="off"
    )
    _Server(config, ready, log).run(sockets=[sock])
    log("stopped")
