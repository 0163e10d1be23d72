"""Typed results of routing: a validated `ToolCall` or an explicit `NoTool`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .canonical import serialize_call, serialize_no_tool
from .tool import NO_TOOL

if TYPE_CHECKING:
    from .catalogue import Catalogue


class NoTool(BaseModel):
    """The router's explicit refusal: no tool in the catalogue fits the request."""

    model_config = ConfigDict(frozen=True)

    tool: Literal["no_tool"] = NO_TOOL
    reason: str

    @property
    def canonical(self) -> str:
        return serialize_no_tool(self.reason)


class ToolCall(BaseModel):
    """A call whose arguments passed the tool's strict model.

    `arguments` holds the JSON values as the model wrote them; `args` is the validated model
    instance (the user's own Pydantic class when the tool was declared with one).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    tool: str
    arguments: dict[str, Any]
    args: BaseModel
    canonical: str


def make_call(catalogue: Catalogue, tool: str, arguments: dict[str, Any]) -> ToolCall:
    """Validate arguments for `tool` and build the call; raises KeyError/ValidationError/ValueError."""
    model = catalogue.arguments_model(tool)
    args = model.model_validate_json(json.dumps(arguments, ensure_ascii=False))
    source = catalogue.sources.get(tool)
    if isinstance(source, type) and issubclass(source, BaseModel):
        args = source.model_validate(arguments)
    return ToolCall(
        tool=tool, arguments=arguments, args=args, canonical=serialize_call(catalogue, tool, arguments)
    )


def parse_tool_call(text: Any, catalogue: Catalogue) -> ToolCall | NoTool | None:
    """Parse model output into a validated call, a NoTool, or None. Never raises on bad text.

    Whitespace and key order are forgiven (free generation is evaluated with this too); an
    unknown tool, extra keys, or arguments failing the tool's schema give None.
    """
    try:
        data = json.loads(text) if isinstance(text, str | bytes) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("tool"), str):
        return None
    if data["tool"] == NO_TOOL:
        if set(data) != {"tool", "reason"} or not isinstance(data["reason"], str):
            return None
        return NoTool(reason=data["reason"])
    if set(data) != {"tool", "arguments"} or not isinstance(data["arguments"], dict):
        return None
    if data["tool"] not in catalogue:
        return None
    try:
        return make_call(catalogue, data["tool"], data["arguments"])
    except (ValidationError, ValueError, TypeError, KeyError):
        return None
