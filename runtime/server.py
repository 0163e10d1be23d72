"""`toolroute serve`: an OpenAI-compatible HTTP endpoint over one router (stdlib only).

    POST /v1/chat/completions   messages (+ optional tools, a subset of the catalogue)
    GET  /v1/models             the one model served
    GET  /healthz               {"status": "ok"}

The last user message is routed and earlier turns are its history (system messages are the
client's, not the router's: the router keeps the system prompt it was trained with, so they are
ignored). A call comes back as an assistant message with one `tool_calls` entry whose
`function.arguments` is the canonical JSON text, `finish_reason: "tool_calls"`; a no_tool,
low-confidence or invalid result comes back as assistant `content` (the reason) with
`finish_reason: "stop"`, so a client never receives a call the router did not validate. Every
response also carries a `toolroute` object (kind, confidence, runner-up, raw output) that
OpenAI clients ignore.

`tools`, when given, must each equal a catalogue tool (400 otherwise) and narrow the grammar to
them. Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`. Bodies over
`max_body_bytes` get 413 without being read. `ThreadingHTTPServer` handles requests in threads;
the router's context pool does the locking. It binds to loopback unless told otherwise.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolroute.grammars import Catalogue, CatalogueError, ToolCall

from .chat import Turn
from .results import RequestTooLongError, RouteInputError, RouteResult
from .router import Router

DEFAULT_MAX_BODY_BYTES = 1 << 20


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class _ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    type: str = "function"
    function: _Function


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCallIn] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(part.type != "text" for part in self.content):
            raise ApiError(400, "only text content parts are supported", "unsupported_content", "messages")
        return "".join(part.text or "" for part in self.content)


class ChatRequest(BaseModel):
    """The fields of a chat completion request this server reads (others are accepted, unused)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    stream: bool | None = None
    n: int | None = None


def _history_turn(message: _Message) -> Turn | None:
    if message.role in ("system", "developer"):
        return None
    if message.role == "assistant" and message.tool_calls:
        # The router's own format for an earlier call: what it was trained to write.
        call = message.tool_calls[0].function
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            raise ApiError(
                400, "tool_calls[].function.arguments is not JSON", "invalid_arguments", "messages"
            ) from None
        text = json.dumps(
            {"tool": call.name, "arguments": arguments}, ensure_ascii=False, separators=(",", ":")
        )
        return Turn(role="assistant", content=text)
    return Turn(role=message.role, content=message.text())  # type: ignore[arg-type]


def canonical_arguments(call: ToolCall) -> str:
    """The arguments part of the call's canonical text, byte for byte."""
    head = '{"tool":' + json.dumps(call.tool, ensure_ascii=False) + ',"arguments":'
    if not (call.canonical.startswith(head) and call.canonical.endswith("}")):
        raise ValueError(f"not a canonical call: {call.canonical!r}")
    return call.canonical[len(head) : -1]


class ChatService:
    """Turns chat completion requests into routes and routes into chat completion objects."""

    def __init__(self, router: Router, model_id: str) -> None:
        self.router = router
        self.model_id = model_id
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "toolroute"}
            ],
        }

    def _tools(self, tools: list[dict[str, Any]] | None) -> list[str] | None:
        if tools is None:
            return None
        if not tools:
            raise ApiError(
                400, "tools is empty: leave it out to offer all the router's tools", "invalid_tools", "tools"
            )
        try:
            given = Catalogue.from_openai(tools)
        except CatalogueError as exc:
            raise ApiError(400, f"invalid tools: {exc}", "invalid_tools", "tools") from None
        catalogue = self.router.catalogue
        unknown = [t.name for t in given if t.name not in catalogue]
        different = [t.name for t in given if t.name in catalogue and catalogue.get(t.name) != t]
        if unknown or different:
            parts = []
            if unknown:
                parts.append(f"not in the router's catalogue: {', '.join(unknown)}")
            if different:
                parts.append(f"declared differently from the router's catalogue: {', '.join(different)}")
            raise ApiError(
                400,
                "tools must be a subset of the router's catalogue; " + "; ".join(parts),
                "tools_mismatch",
                "tools",
            )
        return given.names

    def complete(self, body: Any) -> dict[str, Any]:
        try:
            request = ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(
                400, f"invalid request: {param}: {first['msg']}", "invalid_request", param
            ) from None
        if request.stream:
            raise ApiError(
                400, "streaming is not supported: a route is one short JSON call", "unsupported", "stream"
            )
        if request.n not in (None, 1):
            raise ApiError(400, "n must be 1: a router gives one answer", "unsupported", "n")
        if request.tool_choice not in (None, "auto"):
            raise ApiError(400, "only tool_choice 'auto' is supported", "unsupported", "tool_choice")
        tools = self._tools(request.tools)
        last = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=None)
        if last is None:
            raise ApiError(400, "messages has no user message to route", "no_user_message", "messages")
        history = [t for m in request.messages[:last] if (t := _history_turn(m)) is not None]
        try:
            result = self.router.route(request.messages[last].text(), history, tools=tools)
        except RequestTooLongError as exc:
            raise ApiError(400, str(exc), "context_length_exceeded", "messages") from None
        except RouteInputError as exc:
            raise ApiError(400, str(exc), "invalid_request", "messages") from None
        return self._completion(result)

    def _completion(self, result: RouteResult) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if result.kind == "call" and result.call is not None:
            call = result.call
            arguments = canonical_arguments(call)
            message["tool_calls"] = [
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": call.tool, "arguments": arguments},
                }
            ]
            finish = "tool_calls"
        else:
            message["content"] = result.no_tool.reason if result.no_tool is not None else (result.error or "")
            finish = "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
            "toolroute": {
                "kind": result.kind,
                "confidence": result.confidence,
                "runner_up": None if result.runner_up is None else result.runner_up.model_dump(),
                "raw": result.raw,
                "latency_ms": result.latency_ms,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    server: RouterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "toolroute"

    routes: ClassVar[set[tuple[str, str]]] = {
        ("GET", "/healthz"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    }

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.quiet:
            return
        super().log_message(format, *args)

    def _send(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: ApiError, extra: dict[str, str] | None = None) -> None:
        self._send(error.status, error.body(), extra)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _dispatch(self, method: str) -> None:
        path = self._path()
        if (method, path) not in self.routes:
            if any(p == path for _, p in self.routes):
                allowed = ", ".join(sorted(m for m, p in self.routes if p == path))
                self.close_connection = method == "POST"  # an unread body must not be taken for a request
                self._error(
                    ApiError(405, f"{method} is not allowed on {path}", "method_not_allowed"),
                    {"Allow": allowed},
                )
            else:
                self.close_connection = method == "POST"
                self._error(ApiError(404, f"no such endpoint: {method} {path}", "not_found"))
            return
        try:
            if path == "/healthz":
                self._send(200, {"status": "ok", "model": self.server.service.model_id})
            elif path == "/v1/models":
                self._send(200, self.server.service.models())
            else:
                self._send(200, self.server.service.complete(self._read_json()))
        except ApiError as exc:
            self._error(exc)
        except Exception as exc:  # the server stays up; the client gets a structured 500
            print(f"toolroute serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._error(ApiError(500, f"internal error: {type(exc).__name__}", "internal_error"))

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not supported: send Content-Length", "length_required")
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "a JSON body with a Content-Length header is required", "invalid_request")
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the body is left unread
            raise ApiError(
                413,
                f"request body of {length} bytes exceeds the limit of {self.server.max_body_bytes}",
                "body_too_large",
            )
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")


class RouterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        service: ChatService,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        quiet: bool = False,
    ) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.quiet = quiet
        super().__init__(address, _Handler)


def make_server(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    model_id: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    quiet: bool = False,
) -> RouterHTTPServer:
    """A server bound to (host, port); port 0 picks a free one (`server.server_address`)."""
    from pathlib import Path

    service = ChatService(router, model_id or Path(router.path).stem)
    return RouterHTTPServer((host, port), service, max_body_bytes=max_body_bytes, quiet=quiet)


def serve_in_thread(server: RouterHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="toolroute-serve", daemon=True)
    thread.start()
    return thread
