"""`toolroute serve`: an OpenAI-compatible HTTP endpoint over one router (the `serve` extra).

    POST /v1/chat/completions   messages (+ optional tools, a subset of the catalogue; tool_choice;
                                stream: Server-Sent Events, `streaming.py`)
    GET  /v1/models             the one model served
    GET  /healthz               {"status": "ok"}

What a request means is `service.ChatService`'s business; this module is the transport. It
runs on uvicorn with h11 (a strict, pure-Python HTTP/1.1 parser: one valid Content-Length,
`Transfer-Encoding` only as `chunked`, bounded header size) and Starlette (routing, CORS), and
adds what neither does by default:

- time: a request's head must arrive within `read_timeout_s` of the connection (or of the
  first byte after a kept-alive response), its body within `read_timeout_s` more (408, then
  closed); idle kept-alive connections close after `keep_alive_timeout_s`;
- room: beyond `max_connections` open connections requests get 503; a request waits at most
  `queue_timeout_s` for a router context, behind at most `max_queue` others, else 503 with
  `Retry-After`; a client that leaves while it waits costs no model time;
- access: the Host header must name this server (loopback names by default, more with
  `allowed_hosts`), so a DNS-rebinding page cannot reach it; requests with an `Origin` header
  are refused unless the origin is allowed (then CORS applies); POST bodies must be
  `application/json`; an optional API key (`Authorization: Bearer`);
- framing: every body is read or refused, and a refused one closes the connection, so its
  bytes are never taken for a next request; `Transfer-Encoding` is refused (411), as are bodies
  on GET; bodies over `max_body_bytes` get 413 (declared or while reading); JSON is parsed with a
  depth limit (400).

Stopping: SIGTERM or Ctrl-C stops accepting, lets requests in flight finish for up to
`shutdown_timeout_s` (those still queued then are withdrawn and answered 503 `shutting_down`), and
`serve_forever` returns, so `toolroute serve` exits 0 (uvicorn itself re-raises the signal: 143).

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, naming the header
or field at fault. The one exception is uvicorn's own answer beyond `max_connections` (a plain
503 "Service Unavailable", sent before the request reaches this code). Routing is blocking CPU
work: it runs in a worker thread, so the event loop keeps answering (health checks, 503s).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

try:
    import anyio
    import h11
    import uvicorn
    from starlette.applications import Starlette
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ModuleNotFoundError as exc:  # the runtime core installs without the HTTP stack
    raise ModuleNotFoundError(
        f"toolroute serve needs the serve extra ({exc.name} is missing): pip install 'toolroute[serve]'",
        name=exc.name,  # the CLI names the extra from the module (toolroute.cli.missing_extra)
    ) from exc

from .router import Router
from .server_settings import DEFAULT_MAX_BODY_BYTES, ServerSettings
from .service import ApiError, ChatService, Reply
from .streaming import SSE_DONE, completion_chunks, sse_event

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ApiError",
    "ChatService",
    "RouterServer",
    "ServerSettings",
    "make_server",
    "serve_in_thread",
]

HEALTH_PATH = "/healthz"


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# -- transport: h11 with a deadline on the request head ------------------------------------------


class StrictH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for the request head and JSON-shaped 400s.

    uvicorn times out idle kept-alive connections but not a connection that never completes a
    request head (a fresh one that sends nothing, or a request line trickled a byte at a time):
    those would hold a socket forever. `head_timeout_s` is set per server (`strict_h11`).
    """

    head_timeout_s: float = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer: Any = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Waiting for (the rest of) a request head: the clock runs from the first moment of the wait.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why the connection ends
            error = ApiError(
                408, f"the request head did not arrive within {self.head_timeout_s:g} s", "request_timeout"
            )
            self.transport.write(_raw_response(error))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request's framing (request line, headers, Content-Length...)."""
        error = ApiError(
            400,
            "malformed HTTP request: h11 refused its request line or headers "
            "(e.g. an invalid or conflicting Content-Length, or a Transfer-Encoding other than chunked)",
            "invalid_http",
        )
        self.transport.write(_raw_response(error))
        self.transport.close()


def _raw_response(error: ApiError) -> bytes:
    """A complete response written straight to the socket, for connections about to close."""
    body = json.dumps(error.body()).encode()
    reason = {400: "Bad Request", 408: "Request Timeout"}.get(error.status, "Error")
    head = (
        f"HTTP/1.1 {error.status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def strict_h11(head_timeout_s: float) -> type[StrictH11Protocol]:
    return type("ConfiguredStrictH11Protocol", (StrictH11Protocol,), {"head_timeout_s": head_timeout_s})


# -- access and framing rules, before any endpoint runs ------------------------------------------


class RequestGuard:
    """Host, Origin, API key and framing checks; closes the connection when a body is left unread."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, hosts: frozenset[str]) -> None:
        self.app = app
        self.settings = settings
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        body_pending = "transfer-encoding" in headers or int(headers.get("content-length", "0")) > 0

        async def tracked_receive() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending = False
            return message

        async def closing_send(message: Message) -> None:
            # A response before the whole body was read: the rest of the body must not be
            # parsed as a next request, so this connection ends with the response.
            if message["type"] == "http.response.start" and body_pending:
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await error_response(refusal)(scope, tracked_receive, closing_send)
            return
        await self.app(scope, tracked_receive, closing_send)

    def _refusal(self, scope: Scope, headers: Headers) -> ApiError | None:
        settings = self.settings
        host = headers.get("host")
        if "*" not in settings.allowed_hosts and (host is None or host.strip().lower() not in self.hosts):
            return ApiError(
                400,
                f"Host header {host!r} does not name this server (accepted: {', '.join(sorted(self.hosts))}; "
                "`toolroute serve --allow-host NAME` adds one)",
                "invalid_host",
                "Host",
            )
        origin = headers.get("origin")
        if origin is not None and not settings.origin_allowed(origin):
            return ApiError(
                403,
                f"requests from web pages are refused: Origin {origin!r} is not allowed "
                "(`toolroute serve --allow-origin ORIGIN` allows one)",
                "origin_not_allowed",
                "Origin",
            )
        method = scope["method"]
        if method == "OPTIONS" and origin is not None:
            return None  # a CORS preflight from an allowed origin: CORSMiddleware answers it
        if settings.api_key is not None and scope["path"] != HEALTH_PATH:
            expected = f"Bearer {settings.api_key.get_secret_value()}".encode()
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return ApiError(
                    401,
                    "missing or wrong API key: send `Authorization: Bearer KEY`",
                    "invalid_api_key",
                    "Authorization",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if "transfer-encoding" in headers:
            both = "content-length" in headers
            return ApiError(
                400 if both else 411,
                "Transfer-Encoding is not accepted"
                + (" (and contradicts Content-Length)" if both else "")
                + ": send the body with a Content-Length",
                "invalid_framing" if both else "length_required",
                "Transfer-Encoding",
            )
        if method != "POST" and int(headers.get("content-length", "0")) > 0:
            return ApiError(400, f"{method} takes no body", "unexpected_body", "Content-Length")
        return None


# -- endpoints -----------------------------------------------------------------------------------


class Endpoints:
    def __init__(
        self, service: ChatService, settings: ServerSettings, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self.service = service
        self.settings = settings
        self.stopping = stopping  # whether the server is shutting down
        self._threads: anyio.CapacityLimiter | None = None

    def _thread_limiter(self) -> anyio.CapacityLimiter:
        # Enough worker threads for every request the context pool admits (routing + queued, and
        # a few being checked), so that requests wait in the pool, whose wait is bounded and
        # cancellable, not in anyio's default 40-thread limiter, whose wait is neither.
        if self._threads is None:  # created on the event loop, which anyio needs
            admitted = self.service.router.n_contexts + self.settings.max_queue
            self._threads = anyio.CapacityLimiter(admitted + 4)
        return self._threads

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.service.model_id})

    async def models(self, request: Request) -> Response:
        return JSONResponse(self.service.models())

    async def chat_completions(self, request: Request) -> Response:
        try:
            raw = await self._read_body(request)
            reply = await self._complete(raw, request.receive)
            if not reply.stream:
                return JSONResponse(reply.completion)
            return StreamingResponse(
                self._events(reply),
                media_type="text/event-stream",
                # No proxy or browser may hold events back or cache them.
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        except ApiError as exc:
            return error_response(exc)
        except asyncio.CancelledError:
            # uvicorn cancels what is left when the shutdown's drain timeout ends; the request
            # (withdrawn from the queue by then, see `_watch_disconnect`) still gets a status.
            task = asyncio.current_task()
            if not self.stopping() or task is None:
                raise
            task.uncancel()
            return error_response(
                ApiError(
                    503,
                    "the server is shutting down and this request did not finish within "
                    f"{self.settings.shutdown_timeout_s:g} s; retry",
                    "shutting_down",
                    headers={"Retry-After": str(self.settings.retry_after_s), "Connection": "close"},
                )
            )
        except Exception as exc:  # the server stays up; the client gets a structured 500
            print(f"toolroute serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return error_response(ApiError(500, f"internal error: {type(exc).__name__}", "internal_error"))

    async def _read_body(self, request: Request) -> bytes:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(
                415,
                f"Content-Type must be application/json, not {request.headers.get('content-type')!r}",
                "unsupported_media_type",
                "Content-Type",
            )
        declared = request.headers.get("content-length")
        if declared is None:
            raise ApiError(
                411,
                "a JSON body with a Content-Length header is required",
                "length_required",
                "Content-Length",
            )
        limit = self.settings.max_body_bytes
        if int(declared) > limit:
            raise ApiError(
                413,
                f"request body of {declared} bytes exceeds the limit of {limit}",
                "body_too_large",
                "Content-Length",
            )
        body = bytearray()
        try:
            with anyio.fail_after(self.settings.read_timeout_s):
                while True:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        raise ApiError(
                            400, "the client closed the connection mid-body", "client_disconnected"
                        )
                    body += message.get("body", b"")
                    if len(body) > limit:  # h11 holds a body to its Content-Length; this is the backstop
                        raise ApiError(
                            413, f"request body exceeds the limit of {limit} bytes", "body_too_large"
                        )
                    if not message.get("more_body", False):
                        return bytes(body)
        except TimeoutError:
            raise ApiError(
                408,
                f"the request body did not arrive within {self.settings.read_timeout_s:g} s "
                f"({len(body)} of {declared} bytes)",
                "request_timeout",
                "Content-Length",
            ) from None

    async def _events(self, reply: Reply) -> AsyncIterator[bytes]:
        """A reply's Server-Sent Events. Chunks are taken in a worker thread: a producer that
        generates as it streams (an answer) blocks there, not on the event loop.

        Starlette stops iterating when the client disconnects; `reply.cancelled` then tells the
        producer. A producer that fails mid-stream (the status is sent by then) ends the stream
        with an OpenAI-shaped `error` event and no `[DONE]`, which the official clients raise.
        """
        chunks = completion_chunks(reply.completion, include_usage=reply.include_usage, content=reply.content)
        limiter, finished = self._thread_limiter(), False
        try:
            while chunk := await anyio.to_thread.run_sync(_next_chunk, chunks, limiter=limiter):
                yield sse_event(chunk)
            finished = True
            yield SSE_DONE
        except Exception as exc:
            print(f"toolroute serve: internal error mid-stream: {type(exc).__name__}: {exc}", file=sys.stderr)
            finished = True
            error = ApiError(500, f"internal error mid-stream: {type(exc).__name__}", "internal_error")
            yield sse_event(error.body())
        finally:
            if not finished:  # the client left (or the server is cancelling): stop the producer
                reply.cancelled.set()

    async def _complete(self, raw: bytes, receive: Receive) -> Reply:
        """Route in a worker thread while watching the connection; errors leave the task group as is."""
        cancelled = threading.Event()
        outcome: Reply | BaseException | None = None
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(self._watch_disconnect, receive, cancelled)
            try:
                outcome = await anyio.to_thread.run_sync(
                    self.service.complete_body, raw, cancelled, limiter=self._thread_limiter()
                )
            except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                outcome = exc
            finally:
                watchers.cancel_scope.cancel()
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    async def _watch_disconnect(self, receive: Receive, cancelled: threading.Event) -> None:
        """Withdraw the request from the context queue as soon as its client goes away, or as
        soon as the request itself is cancelled (a shutdown whose drain timeout has passed)."""
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            # Also reached when `_complete` cancels this watcher after the route: harmless then.
            cancelled.set()
            self.service.router.contexts.wake()


def _next_chunk(chunks: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    return next(chunks, None)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 405:
        error = ApiError(405, f"{method} is not allowed on {path}", "method_not_allowed", headers=exc.headers)
    elif exc.status_code == 404:
        error = ApiError(404, f"no such endpoint: {method} {path}", "not_found")
    else:
        error = ApiError(exc.status_code, exc.detail, None, headers=exc.headers)
    return error_response(error)


def build_app(
    service: ChatService,
    settings: ServerSettings,
    hosts: frozenset[str],
    stopping: Callable[[], bool] = lambda: False,
) -> Starlette:
    endpoints = Endpoints(service, settings, stopping)
    middleware = [Middleware(RequestGuard, settings=settings, hosts=hosts)]
    if settings.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    app = Starlette(
        routes=[
            Route(HEALTH_PATH, endpoints.healthz, methods=["GET"]),
            Route("/v1/models", endpoints.models, methods=["GET"]),
            Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
        ],
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
    )
    app.router.redirect_slashes = False  # a redirect would re-send a POST body elsewhere
    return app


# -- the server ----------------------------------------------------------------------------------


class RouterServer:
    """A bound, not yet serving, server: `serve_forever()` (blocks), `shutdown()`, `server_close()`."""

    def __init__(
        self, service: ChatService, host: str, port: int, settings: ServerSettings, quiet: bool
    ) -> None:
        self.service = service
        self.settings = settings
        self.socket = _listen(host, port)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        hosts = settings.host_values(host, self.server_address[1])
        config = uvicorn.Config(
            build_app(service, settings, hosts, stopping=lambda: self._uvicorn.should_exit),
            http=strict_h11(settings.read_timeout_s),
            loop="asyncio",
            lifespan="off",
            ws="none",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=settings.keep_alive_timeout_s,
            # uvicorn counts the connection asking too: N + 1 serves N open connections.
            limit_concurrency=settings.max_connections + 1,
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
            log_config=None if quiet else _logging_config(),
            log_level="error" if quiet else "info",
            access_log=not quiet,
        )
        self._uvicorn = _DrainingServer(config)
        self._serving = threading.Event()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def started(self) -> bool:
        return bool(self._uvicorn.started)

    def serve_forever(self) -> None:
        self._serving.set()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to `shutdown_timeout_s`), return."""
        self._uvicorn.should_exit = True
        if self._serving.is_set():
            self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self.socket.close()


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, whose `run()` returns normally after a SIGTERM (or Ctrl-C) and its drain.

    On SIGTERM uvicorn stops accepting, lets in-flight requests finish (up to
    `timeout_graceful_shutdown`, then cancels them), and then re-raises the signal so that the
    process dies of it (exit 143). A server that drained as asked has done its job: here the
    signal only starts the shutdown, and `toolroute serve` exits 0. A second Ctrl-C still forces
    the exit, as in uvicorn.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _logging_config() -> dict[str, Any]:
    """uvicorn's logging, with the access log on stderr too: stdout stays free for the caller."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)


def make_server(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    model_id: str | None = None,
    settings: ServerSettings | None = None,
    quiet: bool = False,
) -> RouterServer:
    """A server bound to (host, port); port 0 picks a free one (`server.server_address`)."""
    settings = settings or ServerSettings()
    service = ChatService.for_router(router, model_id, settings)
    return RouterServer(service, host, port, settings, quiet)


def serve_in_thread(server: RouterServer, startup_timeout_s: float = 10.0) -> threading.Thread:
    """Serve from a daemon thread; returns once the server accepts requests."""
    thread = threading.Thread(target=server.serve_forever, name="toolroute-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("toolroute serve: the server did not start")
        time.sleep(0.01)
    return thread
