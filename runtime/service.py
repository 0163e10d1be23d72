"""The chat-completions service behind `toolroute serve`, independent of any HTTP library.

The last user message is routed and earlier turns are its history (system messages are the
client's, not the router's: the router keeps the system prompt it was trained with, so they are
ignored). A call comes back as an assistant message with one `tool_calls` entry whose
`function.arguments` is the canonical JSON text, `finish_reason: "tool_calls"`; a no_tool,
low-confidence or invalid result comes back as assistant `content` (the reason) with
`finish_reason: "stop"`, so a client never receives a call the router did not validate. Every
response also carries a `toolroute` object (kind, confidence, runner-up, raw output) that
OpenAI clients ignore.

`tools`, when given, must each equal a catalogue tool (400 otherwise) and narrow the grammar to
them; they are compared by name first and taken as is when they equal the catalogue's own JSON,
so a request pays for schema normalisation only when it declares a known tool differently, and
never for `$ref` expansion (refused). Errors use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`. `complete` blocks (it routes on the CPU):
a server runs it in a worker thread.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolroute.grammars import Catalogue, CatalogueError, ToolCall, make_call

from .bounded_json import JsonInputError, loads_bounded
from .chat_template import Turn
from .context_pool import WaitLimits
from .results import RequestTooLongError, RouteInputError, RouterBusyError, RouteResult, WaitCancelledError
from .router import Router
from .server_settings import ServerSettings

# Keys that make a schema refer elsewhere: expanding them is where crafted tools cost time.
REFERENCE_KEYS = ("$ref", "$defs")
# nginx's code for "the client closed the request": logged, never read (nobody is listening).
CLIENT_CLOSED_REQUEST = 499


class ApiError(Exception):
    """An error response: status, OpenAI-shaped body, and any headers it needs (Retry-After...)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

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


class _ToolName(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class _RequestTool(BaseModel):
    """Just enough of a request tool to compare names before anything costly."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: _ToolName


class ChatRequest(BaseModel):
    """The fields of a chat completion request this server reads (others are accepted, unused)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    stream: bool | None = None
    n: int | None = None


def parse_body(raw: bytes) -> Any:
    """The request body as JSON (depth-limited: hostile nesting is a 400, never a crash)."""
    try:
        return loads_bounded(raw, what="the body")
    except JsonInputError as exc:
        raise ApiError(400, str(exc), "invalid_json") from None


def history_turn(message: _Message, catalogue: Catalogue) -> Turn | None:
    """A message before the routed one as the router's prompt shows it (None: not shown)."""
    if message.role in ("system", "developer"):
        return None
    if message.role == "assistant" and message.tool_calls:
        # An earlier call in the router's own canonical text, written by the code that writes
        # training prompts' history, so a served prompt is byte for byte a trained one.
        call = message.tool_calls[0].function
        try:
            arguments = loads_bounded(call.arguments, what="tool_calls[].function.arguments")
        except JsonInputError as exc:
            raise ApiError(400, str(exc), "invalid_arguments", "messages") from None
        if not isinstance(arguments, dict):
            raise ApiError(
                400, "tool_calls[].function.arguments must be a JSON object", "invalid_arguments", "messages"
            )
        try:
            canonical = make_call(catalogue, call.name, arguments).canonical
        except (KeyError, ValueError) as exc:  # an unknown tool, or arguments its schema refuses
            raise ApiError(
                400,
                f"an earlier tool call to {call.name[:64]!r} does not fit the router's catalogue: "
                f"{str(exc)[:300]}",
                "invalid_tool_call",
                "messages",
            ) from None
        return Turn(role="assistant", content=canonical)
    return Turn(role=message.role, content=message.text())  # type: ignore[arg-type]


def canonical_arguments(call: ToolCall) -> str:
    """The arguments part of the call's canonical text, byte for byte."""
    head = '{"tool":' + json.dumps(call.tool, ensure_ascii=False) + ',"arguments":'
    if not (call.canonical.startswith(head) and call.canonical.endswith("}")):
        raise ValueError(f"not a canonical call: {call.canonical!r}")
    return call.canonical[len(head) : -1]


def _has_reference(value: Any) -> bool:
    """Whether a `$ref`/`$defs` key appears anywhere (iterative: the body's depth is bounded anyway)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(key in node for key in REFERENCE_KEYS):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class ChatService:
    """Turns chat completion requests into routes and routes into chat completion objects."""

    def __init__(self, router: Router, model_id: str, settings: ServerSettings | None = None) -> None:
        self.router = router
        self.model_id = model_id
        self.settings = settings or ServerSettings()
        self.created = int(time.time())
        self._catalogue_json = {tool["function"]["name"]: tool for tool in router.catalogue.to_openai()}

    @classmethod
    def for_router(
        cls, router: Router, model_id: str | None = None, settings: ServerSettings | None = None
    ) -> ChatService:
        return cls(router, model_id or Path(router.path).stem, settings)

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
        names = []
        for index, tool in enumerate(tools):
            try:
                names.append(_RequestTool.model_validate(tool).function.name)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ApiError(
                    400, f"invalid tools: tools[{index}].{where}: {first['msg']}", "invalid_tools", "tools"
                ) from None
        if unknown := [name for name in names if name not in self._catalogue_json]:
            raise ApiError(
                400,
                "tools must be a subset of the router's catalogue; "
                f"not in the router's catalogue: {', '.join(unknown)}",
                "tools_mismatch",
                "tools",
            )
        if all(tool == self._catalogue_json[name] for tool, name in zip(tools, names, strict=True)):
            return self._unique(names)
        if _has_reference(tools):
            raise ApiError(
                400,
                "invalid tools: $ref/$defs are not accepted in request tools; send each tool as "
                "the router's catalogue declares it (inlined, as `toolroute inspect` prints it)",
                "invalid_tools",
                "tools",
            )
        try:
            given = Catalogue.from_openai(tools)
        except CatalogueError as exc:
            raise ApiError(400, f"invalid tools: {exc}", "invalid_tools", "tools") from None
        catalogue = self.router.catalogue
        if different := [t.name for t in given if catalogue.get(t.name) != t]:
            raise ApiError(
                400,
                "tools must be a subset of the router's catalogue; "
                f"declared differently from the router's catalogue: {', '.join(different)}",
                "tools_mismatch",
                "tools",
            )
        return given.names

    @staticmethod
    def _unique(names: list[str]) -> list[str]:
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ApiError(
                400, f"invalid tools: declared twice: {', '.join(duplicates)}", "invalid_tools", "tools"
            )
        return names

    def complete_body(self, raw: bytes, cancelled: threading.Event | None = None) -> dict[str, Any]:
        """`complete` for a raw request body."""
        return self.complete(parse_body(raw), cancelled)

    def complete(self, body: Any, cancelled: threading.Event | None = None) -> dict[str, Any]:
        """A chat completion for a parsed request body; `cancelled` withdraws it while it waits."""
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
        catalogue = self.router.catalogue
        history = [t for m in request.messages[:last] if (t := history_turn(m, catalogue)) is not None]
        wait = WaitLimits(
            timeout_s=self.settings.queue_timeout_s, max_waiting=self.settings.max_queue, cancelled=cancelled
        )
        try:
            result = self.router.route(request.messages[last].text(), history, tools=tools, wait=wait)
        except RequestTooLongError as exc:
            raise ApiError(400, str(exc), "context_length_exceeded", "messages") from None
        except RouteInputError as exc:
            raise ApiError(400, str(exc), "invalid_request", "messages") from None
        except RouterBusyError as exc:
            raise ApiError(
                503,
                f"the router is busy: {exc}; retry later",
                "overloaded",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        except WaitCancelledError as exc:
            raise ApiError(CLIENT_CLOSED_REQUEST, str(exc), "client_closed_request") from None
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
