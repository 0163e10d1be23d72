"""Dispatch: run the function registered for a routed call, and nothing else.

A function is registered under a catalogue tool's name. `dispatch` re-validates the call's
arguments with the tool's strict model before calling, never calls a tool that is not
registered (or not in the catalogue), never runs `invalid` or `low_confidence` results, and turns
an exception in the tool into an error result: the router lives on.

Calling convention, decided once at registration from the signature: a function whose only
parameter is annotated with the tool's Pydantic class gets the model instance; any other
function gets the arguments as keyword arguments (each converted to the parameter's annotated
type, so a `datetime.date` parameter receives a date), with omitted optional arguments left to
the function's defaults.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from toolroute.grammars import Catalogue, NoTool, ToolCall

if TYPE_CHECKING:
    from .results import RouteResult


class DispatchResult(BaseModel):
    """What dispatching one result did.

    - `called`: the tool's function ran; `value` is what it returned;
    - `no_tool`: the router refused; `reason` is its reason; nothing ran;
    - `refused`: nothing ran (an invalid or low-confidence result, an unregistered or unknown
      tool, arguments failing re-validation); `reason` says why;
    - `error`: the function raised; `reason` is the message, `error_type` the exception class.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    status: Literal["called", "no_tool", "refused", "error"]
    tool: str | None = None
    value: Any = None
    reason: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class _Registered:
    function: Callable[..., Any]
    model: type[BaseModel] | None  # passed as one model instance when set
    adapters: dict[str, TypeAdapter[Any]]  # keyword arguments converted to annotated types


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: fall back to what is not a string
        annotations = getattr(function, "__annotations__", {})
        return {k: v for k, v in annotations.items() if not isinstance(v, str)}


class Registry:
    """Tool name -> function, for one catalogue."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._functions: dict[str, _Registered] = {}

    @property
    def names(self) -> list[str]:
        return [name for name in self.catalogue.names if name in self._functions]

    def register(self, name: str, function: Callable[..., Any]) -> None:
        if name not in self.catalogue:
            raise ValueError(f"cannot register {name!r}: not a tool of this router ({self.catalogue.names})")
        if not callable(function):
            raise TypeError(f"cannot register {name!r}: {function!r} is not callable")
        signature = inspect.signature(function)
        hints = _hints(function)
        params = [
            p
            for p in signature.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        source = self.catalogue.sources.get(name)
        tool_class = source if isinstance(source, type) and issubclass(source, BaseModel) else None
        model = None
        if len(params) == 1:
            annotation = hints.get(params[0].name)
            written = params[0].annotation
            if annotation is None and tool_class is not None and written == tool_class.__name__:
                annotation = tool_class  # a string annotation get_type_hints could not resolve
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if annotation not in (tool_class, self.catalogue.arguments_model(name)):
                    raise TypeError(
                        f"cannot register {name!r}: its parameter is annotated {annotation.__name__}, "
                        f"but the tool is declared by {tool_class.__name__ if tool_class else 'JSON schema'} "
                        "(pass tools=[...] to Router.load to declare it with your class)"
                    )
                model = annotation
        adapters = {}
        if model is None:
            properties = self.catalogue.get(name).properties
            for param in params:
                if param.name in hints and param.name in properties:
                    adapters[param.name] = TypeAdapter(hints[param.name])
        self._functions[name] = _Registered(function, model, adapters)

    def dispatch(self, result: RouteResult | ToolCall | NoTool) -> DispatchResult:
        if isinstance(result, NoTool):
            return DispatchResult(status="no_tool", tool=result.tool, reason=result.reason)
        if isinstance(result, ToolCall):
            call = result
        elif result.kind == "no_tool" and result.no_tool is not None:
            return DispatchResult(status="no_tool", tool=result.no_tool.tool, reason=result.no_tool.reason)
        elif result.kind != "call" or result.call is None:
            return DispatchResult(
                status="refused",
                tool=result.tool,
                reason=f"a {result.kind} result is never dispatched: {result.error}",
            )
        else:
            call = result.call
        if call.tool not in self.catalogue:
            return DispatchResult(
                status="refused", tool=call.tool, reason=f"{call.tool!r} is not a tool of this router"
            )
        registered = self._functions.get(call.tool)
        if registered is None:
            return DispatchResult(
                status="refused", tool=call.tool, reason=f"no function is registered for {call.tool!r}"
            )
        try:
            strict = self.catalogue.arguments_model(call.tool)
            strict.model_validate_json(json.dumps(call.arguments, ensure_ascii=False))
            if registered.model is not None:
                args: tuple[Any, ...] = (registered.model.model_validate(call.arguments),)
                kwargs: dict[str, Any] = {}
            else:
                args = ()
                kwargs = {
                    key: registered.adapters[key].validate_python(value)
                    if key in registered.adapters
                    else value
                    for key, value in call.arguments.items()
                }
        except ValidationError as exc:
            return DispatchResult(
                status="refused", tool=call.tool, reason=f"arguments fail validation: {exc}"
            )
        try:
            value = registered.function(*args, **kwargs)
        except Exception as exc:  # a tool's failure is a result, not the router's crash
            return DispatchResult(
                status="error", tool=call.tool, reason=str(exc), error_type=type(exc).__name__
            )
        return DispatchResult(status="called", tool=call.tool, value=value)
