"""What routing and answering return (`RouteResult`, `AnswerResult`, `Exchange`), and the errors a
request can raise."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from toolroute.grammars import NoTool, ToolCall


class RouteInputError(ValueError):
    """The request cannot be routed as given (empty, too long, unknown tools...)."""


class EmptyRequestError(RouteInputError):
    pass


class RequestTooLongError(RouteInputError):
    pass


class AnswersNotTrainedError(RouteInputError):
    """The router file was trained without the answer step (`toolroute inspect`: answers), so it
    has no trained reply to a tool's output; it refuses rather than generate untrained text."""


class InvalidCallError(RouteInputError):
    """The call a tool's output answers is not a valid call of this router's catalogue."""


class ToolOutputTooLongError(RequestTooLongError):
    """The answer prompt (request, call, tool output) and the answer's cap do not fit the context."""


class RouterBusyError(RuntimeError):
    """No context was free within the caller's limits (`reason`: "queue_full" or "timeout").

    Not a RouteInputError: the request is fine, the router is busy; a server answers 503.
    """

    def __init__(self, message: str, reason: Literal["queue_full", "timeout"]) -> None:
        super().__init__(message)
        self.reason = reason


class WaitCancelledError(RuntimeError):
    """The caller withdrew a request (its client went away) while it waited for a context or
    while it was decoded: decoding stops at the next token, so a gone client costs no more."""


class RunnerUp(BaseModel):
    model_config = ConfigDict(frozen=True)

    tool: str
    probability: float


Kind = Literal["call", "no_tool", "low_confidence", "invalid"]


class RouteResult(BaseModel):
    """One routed request.

    `kind` says what happened and which fields are set:

    - `call`: `call` is a validated `ToolCall`: the only kind `dispatch` will run;
    - `no_tool`: `no_tool` holds the router's explicit refusal and its reason;
    - `low_confidence`: a rule held the call back (`held_back_by`: `confidence`, the tool name's
      probability below `min_confidence`; `call_score`, the call-level score below the stored
      call threshold; `no_tool`, abstention: no_tool too probable, or the margin over it too
      small); `call` keeps the would-be call for inspection, `error` says why. Never dispatched;
    - `invalid`: the output failed validation despite the grammar (or was cut short by a
      completion cap); `raw` has the text, `error` the reason. Never dispatched.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Kind
    call: ToolCall | None = None
    no_tool: NoTool | None = None
    error: str | None = None
    raw: str
    confidence: float | None = Field(None, description="probability of the chosen tool name, among the names")
    call_logprob: float | None = Field(
        None, description="sum of log p of the tokens the model chose, under the constrained distribution"
    )
    min_token_logprob: float | None = Field(None, description="the least log p among those tokens")
    scored_tokens: int = Field(0, description="tokens the model chose (forced tokens are not scored)")
    held_back_by: Literal["confidence", "call_score", "no_tool"] | None = None
    no_span: list[str] = Field(
        default_factory=list,
        description="copied arguments (tool.argument) no span of the request fits: left out, or their tool",
    )
    left_out: list[str] = Field(
        default_factory=list,
        description="optional arguments (tool.argument) written below the key rule's probability, "
        "left out and the request decoded again (see key_rule.py)",
    )
    runner_up: RunnerUp | None = None
    probabilities: dict[str, float] = Field(default_factory=dict)
    unresolved_mass: float = Field(
        0.0,
        description="probability mass left unsplit among names other than the chosen tool and no_tool "
        "(name focus, the default): their `probabilities` are lower bounds by at most this much",
    )
    prompt_tokens: int
    cached_tokens: int = Field(description="prompt tokens whose KV state came from the cached prefix")
    completion_tokens: int
    latency_ms: float

    @property
    def tool(self) -> str | None:
        """The chosen tool's name (`no_tool` for a refusal), None when the output is invalid."""
        if self.call is not None:
            return self.call.tool
        if self.no_tool is not None:
            return self.no_tool.tool
        return None

    @field_serializer("call")
    def _dump_call(self, call: ToolCall | None) -> dict[str, Any] | None:
        # `ToolCall.args` is typed BaseModel, which Pydantic would dump as {}: the JSON form is
        # the tool, its arguments as JSON values, and the canonical text.
        if call is None:
            return None
        return {"tool": call.tool, "arguments": call.arguments, "canonical": call.canonical}


class AnswerResult(BaseModel):
    """The router's reply to a tool's output (`Router.answer`).

    `finish_reason` is "stop" when the model ended its turn, "length" when the answer reached its
    token cap (`text` is then what came before the cap).
    """

    model_config = ConfigDict(frozen=True)

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    cached_tokens: int = Field(description="prompt tokens whose KV state came from the cached prefix")
    completion_tokens: int
    latency_ms: float


class Exchange(BaseModel):
    """One request handled end to end (`Router.ask`): the route, what dispatching it did (None when
    nothing was dispatched: not a call), and the answer to the tool's output (None unless the tool ran)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    route: RouteResult
    dispatch: Any = None  # a DispatchResult (dispatch.py imports this module)
    answer: AnswerResult | None = None

    @property
    def text(self) -> str:
        """What to tell the user: the answer, else the router's or the tool's reason."""
        if self.answer is not None:
            return self.answer.text
        if self.dispatch is not None and self.dispatch.reason:
            return str(self.dispatch.reason)
        if self.route.no_tool is not None:
            return self.route.no_tool.reason
        return self.route.error or ""
