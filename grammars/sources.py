"""Turn the three ways users declare tools into `ToolSpec`s.

(a) a Pydantic model per tool: name from the class (snake_case) or `model_config["title"]`,
    description from the docstring, arguments from the fields;
(b) a typed function: name from `__name__`, description and argument descriptions from the
    docstring (Google, NumPy or Sphinx style), arguments from the signature;
(c) OpenAI `tools` JSON or the legacy `functions` list.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import CatalogueError
from .schema import SchemaBudget, normalize_parameters_and_marks
from .tool import ToolSpec, validate_tool_name

CopyMarks = dict[str, bool]  # argument path -> declared copied (`schema.COPY_KEYWORD`)


def snake_case(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def tool_from_any(
    item: Any, where: str, budget: SchemaBudget | None = None
) -> tuple[ToolSpec, Any, CopyMarks]:
    """One tool from a model class, a function or an OpenAI dict; returns (spec, source, the
    copied-argument marks it declares).

    `budget` bounds the schema nodes of a whole catalogue (see `schema.SchemaBudget`).
    """
    if isinstance(item, type) and issubclass(item, BaseModel):
        spec, marks = _model_spec(item, budget)
        return spec, item, marks
    if isinstance(item, dict):
        spec, marks = _spec_from_function_json(_unwrap_tool(item, where), where, budget)
        return spec, None, marks
    if inspect.isfunction(item) or inspect.ismethod(item) or inspect.isbuiltin(item):
        model = function_arguments_model(item)
        spec, marks = _spec(item.__name__, _docstring_summary(item), model, where, budget)
        return spec, item, marks
    raise CatalogueError(
        f"{where}: {item!r} is not a Pydantic model class, a typed function or an OpenAI tool dict"
    )


def tool_from_model(model: type[BaseModel], budget: SchemaBudget | None = None) -> ToolSpec:
    return _model_spec(model, budget)[0]


def _model_spec(model: type[BaseModel], budget: SchemaBudget | None) -> tuple[ToolSpec, CopyMarks]:
    name = model.model_config.get("title") or snake_case(model.__name__)
    schema = model.model_json_schema()
    return _spec(name, schema.get("description", ""), model, f"model {model.__name__}", budget)


def _spec(
    name: str, description: str, model: type[BaseModel], where: str, budget: SchemaBudget | None
) -> tuple[ToolSpec, CopyMarks]:
    validate_tool_name(name, where)
    schema = model.model_json_schema()
    schema.pop("description", None)
    parameters, marks = normalize_parameters_and_marks(name, schema, budget)
    return ToolSpec(name=name, description=(description or "").strip(), parameters=parameters), marks


# -- functions ---------------------------------------------------------------------------------


def function_arguments_model(function: Callable[..., Any]) -> type[BaseModel]:
    """A Pydantic model of a function's parameters, with descriptions from its docstring."""
    name = getattr(function, "__name__", repr(function))
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:  # a NameError in a string annotation, say
        raise CatalogueError(f"function {name}: cannot resolve its type hints: {exc}") from None
    descriptions = _docstring_params(inspect.getdoc(function) or "")
    fields: dict[str, Any] = {}
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise CatalogueError(f"function {name}: *{param.name} parameters cannot be tool arguments")
        if param.name not in hints:
            raise CatalogueError(f"function {name}: parameter '{param.name}' has no type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=descriptions.get(param.name)))
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Arguments"
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


_SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?)\s*:?\s*$"
)


def _docstring_summary(function: Callable[..., Any]) -> str:
    lines = (inspect.getdoc(function) or "").splitlines()
    summary: list[str] = []
    for index, line in enumerate(lines):
        if _is_header(lines, index) or line.strip().startswith(":param"):
            break
        summary.append(line)
    return "\n".join(summary).strip()


_PARAM_SECTIONS = ("Args", "Arguments", "Parameters", "Params")


def _is_header(lines: list[str], index: int) -> bool:
    """A Google header ("Args:") or a NumPy header (a title underlined with dashes)."""
    stripped = lines[index].strip()
    underlined = index + 1 < len(lines) and set(lines[index + 1].strip()) == {"-"}
    return bool(_SECTION_RE.match(stripped)) and (stripped.endswith(":") or underlined)


def _docstring_params(doc: str) -> dict[str, str]:
    """Parameter descriptions from a Google, NumPy or Sphinx docstring."""
    found = {m.group(1): m.group(2).strip() for m in re.finditer(r":param\s+(?:[^:]*\s)?(\w+):\s*(.+)", doc)}
    lines = doc.splitlines()
    index = 0
    while index < len(lines):
        header = lines[index].strip()
        if not (_is_header(lines, index) and header.rstrip(":").strip() in _PARAM_SECTIONS):
            index += 1
            continue
        numpy = not header.endswith(":")
        index += 2 if numpy else 1
        entry_indent: int | None = None
        current: str | None = None
        while index < len(lines):
            line, stripped = lines[index], lines[index].strip()
            if not stripped:
                index += 1
                continue
            indent = len(line) - len(line.lstrip())
            entry_indent = indent if entry_indent is None else entry_indent
            if indent < entry_indent or _is_header(lines, index):
                break
            if indent == entry_indent:
                entry = re.match(r"^(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
                if entry is None:
                    break
                current = entry.group(1)
                found[current] = "" if numpy else entry.group(3).strip()
            elif current is not None:
                found[current] = f"{found[current]} {stripped}".strip()
            index += 1
    return {name: text for name, text in found.items() if text}


# -- OpenAI JSON -------------------------------------------------------------------------------


class _FunctionJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: dict[str, Any]


def _format_validation_error(exc: ValidationError, where: str) -> str:
    problems = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"])
        problems.append(f"{where}.{path}: {error['msg']}" if path else f"{where}: {error['msg']}")
    return "; ".join(problems)


def _unwrap_tool(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A `{"type":"function","function":{...}}` entry or a bare legacy function dict."""
    if "function" in item or "type" in item:
        try:
            tool = _ToolJson.model_validate(item)
        except ValidationError as exc:
            raise CatalogueError(_format_validation_error(exc, where)) from None
        return {"__where__": f"{where}.function", **tool.function}
    return {"__where__": where, **item}


def _spec_from_function_json(
    item: dict[str, Any], where: str, budget: SchemaBudget | None
) -> tuple[ToolSpec, CopyMarks]:
    where = item.pop("__where__", where)
    try:
        function = _FunctionJson.model_validate(item)
    except ValidationError as exc:
        raise CatalogueError(_format_validation_error(exc, where)) from None
    validate_tool_name(function.name, f"{where}.name")
    parameters, marks = normalize_parameters_and_marks(function.name, function.parameters, budget)
    spec = ToolSpec(name=function.name, description=function.description.strip(), parameters=parameters)
    return spec, marks


def specs_from_openai(data: Any, where: str) -> list[tuple[ToolSpec, CopyMarks]]:
    if isinstance(data, dict) and ("tools" in data or "functions" in data):
        key = "tools" if "tools" in data else "functions"
        data, where = data[key], f"{where}.{key}"
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CatalogueError(f"{where}: expected a list of tools, got {type(data).__name__}")
    specs = []
    budget = SchemaBudget()
    for index, item in enumerate(data):
        item_where = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise CatalogueError(f"{item_where}: expected a tool object, got {type(item).__name__}")
        specs.append(_spec_from_function_json(_unwrap_tool(item, item_where), item_where, budget))
    return specs
