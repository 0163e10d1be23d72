"""The chat-completions service behind `toolroute serve`, independent of any HTTP library.

A conversation whose last message is a `tool` result (or a legacy `function` one) is answered:
the call it answers (the assistant message right before it, found by `tool_call_id` or by name)
is validated again against the catalogue and `Router.answer` writes the reply, which comes back
as assistant `content` with `finish_reason: "stop"` ("length" at the answer's token cap); a
router trained without answers refuses with a 400 (`answers_not_trained`), never with the same
call again, and a tool output that does not fit the context is a 400 before anything runs.
Otherwise the last user message is routed and earlier turns are its history (system messages are the
client's, not the router's: the router keeps the system prompt it was trained with, so they are
ignored). A call comes back as an assistant message with one `tool_calls` entry whose
`function.arguments` is the canonical JSON text, `finish_reason: "tool_calls"`; a no_tool,
low-confidence or invalid result comes back as assistant `content` (the reason) with
`finish_reason: "stop"`, so a client never receives a call the router did not validate. Every
response also carries a `toolroute` object (kind, confidence, runner-up, raw output) that
OpenAI clients ignore.

`tool_choice` goes into the grammar, not the prompt: `"auto"` (the default) lets the router
choose among the tools and no_tool; `"none"` leaves only no_tool (its reason comes back as
content); `"required"` takes no_tool out, and `{"type": "function", "function": {"name": N}}`
leaves only tool N (`{"type": "allowed_tools", ...}` narrows to its tools in mode auto or
required). When a call is required, a call below the confidence threshold is still returned
(the client ruled out "no call", which is all the threshold can fall back to); its
`toolroute.kind` says `low_confidence`. `parallel_tool_calls` is accepted either way: a response
carries at most one call. `"stream": true` returns the same completion as Server-Sent Events
(`streaming.py`), routed first, so that every error is still a status, not a broken stream.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolroute.grammars import Catalogue, CatalogueError, ToolCall, make_call

from .bounded_json import JsonInputError, loads_bounded
from .chat_template import Turn
from .context_pool import WaitLimits
from .results import (
    AnswersNotTrainedError,
    InvalidCallError,
    RequestTooLongError,
    RouteInputError,
    RouterBusyError,
    RouteResult,
    ToolOutputTooLongError,
    WaitCancelledError,
)
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

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCallIn] | None = None
    function_call: _Function | None = None  # legacy: the assistant's call
    tool_call_id: str | None = None  # a `tool` message: the call it answers
    name: str | None = None  # a legacy `function` message: the function that ran

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


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """The fields of a chat completion request this server reads (others are accepted, unused)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # checked by `grammar_choice`, which names what is wrong
    parallel_tool_calls: bool | None = None  # accepted: a response carries at most one call anyway
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    n: int | None = None


@dataclass(frozen=True)
class GrammarChoice:
    """What a request's `tool_choice` leaves in the grammar: `tools` (None: all; empty: none)
    and whether no_tool stays (without it a call is required)."""

    tools: list[str] | None
    no_tool: bool

    @property
    def call_required(self) -> bool:
        return not self.no_tool


TOOL_CHOICE_FORMS = (
    '"auto", "none", "required", {"type": "function", "function": {"name": NAME}} or '
    '{"type": "allowed_tools", "allowed_tools": {"mode": "auto"|"required", "tools": [...]}}'
)


def _choice_error(message: str, code: str = "invalid_tool_choice") -> ApiError:
    return ApiError(400, message, code, "tool_choice")


def _named(entry: Any, where: str) -> str:
    """The NAME of `{"type": "function", "function": {"name": NAME}}`."""
    function = entry.get("function") if isinstance(entry, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not (isinstance(entry, dict) and entry.get("type") == "function" and isinstance(name, str)):
        raise _choice_error(f'{where} must be {{"type": "function", "function": {{"name": NAME}}}}')
    return name


def grammar_choice(tool_choice: Any, offered: list[str] | None, catalogue: Catalogue) -> GrammarChoice:
    """`tool_choice` against the tools a request offers (`offered`; None: the whole catalogue)."""
    if tool_choice is None or tool_choice == "auto":
        return GrammarChoice(offered, no_tool=True)
    if tool_choice == "none":
        return GrammarChoice([], no_tool=True)
    if tool_choice == "required":
        return GrammarChoice(offered, no_tool=False)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = tool_choice.get("allowed_tools")
        mode = allowed.get("mode") if isinstance(allowed, dict) else None
        entries = allowed.get("tools") if isinstance(allowed, dict) else None
        if mode not in ("auto", "required") or not isinstance(entries, list) or not entries:
            raise _choice_error(
                'tool_choice.allowed_tools must be {"mode": "auto"|"required", "tools": [...]} '
                "with at least one tool"
            )
        names = [_named(entry, f"tool_choice.allowed_tools.tools[{i}]") for i, entry in enumerate(entries)]
        return GrammarChoice(_offered(names, offered, catalogue), no_tool=mode == "auto")
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = _named(tool_choice, "tool_choice")
        return GrammarChoice(_offered([name], offered, catalogue), no_tool=False)
    shown = json.dumps(tool_choice)[:80] if isinstance(tool_choice, str | dict | list) else repr(tool_choice)
    raise _choice_error(f"tool_choice {shown} is not one of {TOOL_CHOICE_FORMS}")


def _offered(names: list[str], offered: list[str] | None, catalogue: Catalogue) -> list[str]:
    """`names` if each is a tool this request offers; a 400 naming those that are not."""
    if unknown := [n for n in names if n not in catalogue.names]:
        raise _choice_error(
            f"tool_choice names a tool not in the router's catalogue: {', '.join(n[:64] for n in unknown)}",
            "unknown_tool",
        )
    if offered is not None and (missing := [n for n in names if n not in offered]):
        raise _choice_error(
            f"tool_choice names a tool not among the request's tools: {', '.join(missing)}", "unknown_tool"
        )
    return list(dict.fromkeys(names))


@dataclass
class Reply:
    """A completion and how to send it: as one JSON object, or streamed (`streaming.py`).

    `content`, when set, is streamed in place of the message's content, piece by piece (an
    answer generated while it is sent); `cancelled` is set by the transport when the client
    leaves mid-stream, so such a producer can stop.
    """

    completion: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    content: Iterable[str] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


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
    if message.role == "assistant" and (message.tool_calls or message.function_call):
        # An earlier call in the router's own canonical text, written by the code that writes
        # training prompts' history, so a served prompt is byte for byte a trained one.
        return Turn(role="assistant", content=checked_call(message, catalogue, "messages").canonical)
    # A legacy `function` result is a tool result, as training reads it.
    role = "tool" if message.role == "function" else message.role
    return Turn(role=role, content=message.text())  # type: ignore[arg-type]


def _called_function(message: _Message) -> _Function:
    if message.tool_calls:
        return message.tool_calls[0].function
    assert message.function_call is not None
    return message.function_call


def checked_call(message: _Message, catalogue: Catalogue, param: str) -> ToolCall:
    """An assistant message's call (`tool_calls[0]` or legacy `function_call`), validated against
    the catalogue: a 400 naming `param` for arguments that are not a JSON object, an unknown
    tool, or arguments its schema refuses."""
    call = _called_function(message)
    try:
        arguments = loads_bounded(call.arguments, what="tool_calls[].function.arguments")
    except JsonInputError as exc:
        raise ApiError(400, str(exc), "invalid_arguments", param) from None
    if not isinstance(arguments, dict):
        raise ApiError(
            400, "tool_calls[].function.arguments must be a JSON object", "invalid_arguments", param
        )
    try:
        return make_call(catalogue, call.name, arguments)
    except (KeyError, ValueError) as exc:  # an unknown tool, or arguments its schema refuses
        raise ApiError(
            400,
            f"the tool call to {call.name[:64]!r} does not fit the router's catalogue: {str(exc)[:300]}",
            "invalid_tool_call",
            param,
        ) from None


@dataclass(frozen=True)
class ToolResult:
    """A conversation that ends in a tool's output: what the router answers."""

    request: str
    history: list[Turn]
    call: ToolCall
    output: str
    call_index: int  # the assistant message with the call
    result_index: int  # the tool (or function) message


def tool_result(messages: list[_Message], catalogue: Catalogue) -> ToolResult:
    """The call a final `tool` (or legacy `function`) message answers, and the request it came
    from; a 400 naming the message or field when the conversation does not say which call it is."""
    last = len(messages) - 1
    result = messages[last]
    index = last - 1
    assistant = messages[index] if index >= 0 else None
    if (
        assistant is None
        or assistant.role != "assistant"
        or not (assistant.tool_calls or assistant.function_call)
    ):
        raise ApiError(
            400,
            f"messages[{last}]: a {result.role} message must come right after the assistant message "
            "with the call it answers (one call, one result)",
            "invalid_tool_message",
            f"messages[{last}]",
        )
    if result.role == "tool":
        ids = [call.id for call in assistant.tool_calls or []]
        if result.tool_call_id is None or result.tool_call_id not in ids:
            shown = "none" if result.tool_call_id is None else repr(result.tool_call_id[:64])
            raise ApiError(
                400,
                f"messages[{last}].tool_call_id {shown} does not name a call of messages[{index}] "
                f"(its calls: {', '.join(repr(i) for i in ids) or 'none with an id'})",
                "unknown_tool_call_id",
                f"messages[{last}].tool_call_id",
            )
        if len(ids) != 1:
            raise ApiError(
                400,
                f"messages[{index}] has {len(ids)} tool calls; the router answers one call at a time",
                "unsupported",
                f"messages[{index}].tool_calls",
            )
    elif result.name != _called_function(assistant).name:
        raise ApiError(
            400,
            f"messages[{last}].name {str(result.name)[:64]!r} is not the function messages[{index}] called "
            f"({_called_function(assistant).name[:64]!r})",
            "unknown_function_name",
            f"messages[{last}].name",
        )
    call = checked_call(assistant, catalogue, f"messages[{index}]")
    user = max((i for i in range(index) if messages[i].role == "user"), default=None)
    if user is None:
        raise ApiError(400, "messages has no user message before the call", "no_user_message", "messages")
    history = [t for m in messages[:user] if (t := history_turn(m, catalogue)) is not None]
    return ToolResult(messages[user].text(), history, call, result.text(), index, last)


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

    def complete_body(self, raw: bytes, cancelled: threading.Event | None = None) -> Reply:
        """`complete` for a raw request body."""
        return self.complete(parse_body(raw), cancelled)

    def complete(self, body: Any, cancelled: threading.Event | None = None) -> Reply:
        """A chat completion for a parsed request body; `cancelled` withdraws it while it waits."""
        try:
            request = ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            where = param or "the body"  # no location: the body itself is not a JSON object
            raise ApiError(
                400, f"invalid request: {where}: {first['msg']}", "invalid_request", param
            ) from None
        if request.stream_options is not None and not request.stream:
            raise ApiError(
                400, "stream_options is only allowed with stream: true", "invalid_request", "stream_options"
            )
        if request.n not in (None, 1):
            raise ApiError(400, "n must be 1: a router gives one answer", "unsupported", "n")
        choice = grammar_choice(request.tool_choice, self._tools(request.tools), self.router.catalogue)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        if request.messages[-1].role in ("tool", "function"):
            completion = self._answer(tool_result(request.messages, self.router.catalogue), cancelled)
            return Reply(completion, stream=bool(request.stream), include_usage=include_usage)
        last = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=None)
        if last is None:
            raise ApiError(400, "messages has no user message to route", "no_user_message", "messages")
        catalogue = self.router.catalogue
        history = [t for m in request.messages[:last] if (t := history_turn(m, catalogue)) is not None]
        wait = self._wait(cancelled)
        try:
            result = self.router.route(
                request.messages[last].text(), history, tools=choice.tools, no_tool=choice.no_tool, wait=wait
            )
        except RequestTooLongError as exc:
            raise ApiError(400, str(exc), "context_length_exceeded", "messages") from None
        except RouteInputError as exc:
            raise ApiError(400, str(exc), "invalid_request", "messages") from None
        except (RouterBusyError, WaitCancelledError) as exc:
            raise self._wait_error(exc) from None
        completion = self._completion(result, call_required=choice.call_required)
        return Reply(completion, stream=bool(request.stream), include_usage=include_usage)

    def _wait(self, cancelled: threading.Event | None) -> WaitLimits:
        return WaitLimits(
            timeout_s=self.settings.queue_timeout_s, max_waiting=self.settings.max_queue, cancelled=cancelled
        )

    def _wait_error(self, exc: RouterBusyError | WaitCancelledError) -> ApiError:
        """A wait for a router context that ended without one: busy (503), or the client left."""
        if isinstance(exc, WaitCancelledError):
            return ApiError(CLIENT_CLOSED_REQUEST, str(exc), "client_closed_request")
        return ApiError(
            503,
            f"the router is busy: {exc}; retry later",
            "overloaded",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def _answer(self, result: ToolResult, cancelled: threading.Event | None) -> dict[str, Any]:
        """The router's answer to a tool's output, as an assistant message with `content`."""
        try:
            answer = self.router.answer(
                result.request, result.call, result.output, result.history, wait=self._wait(cancelled)
            )
        except AnswersNotTrainedError as exc:
            # Never the same call again: a client loop would call the tool forever.
            raise ApiError(400, str(exc), "answers_not_trained", "messages") from None
        except ToolOutputTooLongError as exc:
            raise ApiError(
                400, str(exc), "context_length_exceeded", f"messages[{result.result_index}].content"
            ) from None
        except InvalidCallError as exc:
            raise ApiError(400, str(exc), "invalid_tool_call", f"messages[{result.call_index}]") from None
        except RouteInputError as exc:
            raise ApiError(400, str(exc), "invalid_request", "messages") from None
        except (RouterBusyError, WaitCancelledError) as exc:
            raise self._wait_error(exc) from None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
            "toolroute": {"kind": "answer", "answered": result.call.tool, "latency_ms": answer.latency_ms},
        }

    def _completion(self, result: RouteResult, call_required: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        # A held-back (low-confidence) call is sent when the client ruled out "no call".
        sent = result.kind == "call" or (call_required and result.kind == "low_confidence")
        if sent and result.call is not None:
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
                "held_back_by": result.held_back_by,  # which rule held a low_confidence call back
                "call_logprob": result.call_logprob,
                "min_token_logprob": result.min_token_logprob,
                "no_span": result.no_span,
                "left_out": result.left_out,
                "raw": result.raw,
                "latency_ms": result.latency_ms,
            },
        }
