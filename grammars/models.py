"""Strict Pydantic models generated from normalised argument schemas: one model per tool.

These are the contract every call is checked against before anything is dispatched, whatever
form the tool was declared in. Scalars are strict (no "3" for 3), unknown keys are refused,
formats are checked to the same spelling the grammar produces.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    create_model,
)

from .schema import Schema, json_type_of
from .tool import ToolSpec

_FORMAT_SHAPES = {
    "date": re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII),
    "time": re.compile(r"\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?", re.ASCII),
    "date-time": re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?", re.ASCII),
}
_FORMAT_PARSERS = {
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "date-time": dt.datetime.fromisoformat,
}


def _format_checker(fmt: str) -> AfterValidator:
    def check(value: str) -> str:
        if not _FORMAT_SHAPES[fmt].fullmatch(value):
            raise ValueError(f"not an RFC 3339 {fmt} in the form the grammar produces")
        _FORMAT_PARSERS[fmt](value)  # raises ValueError for 2023-02-30 and the like
        return value

    return AfterValidator(check)


def _same_json_type(choices: tuple[Any, ...]) -> Any:
    """Literal matching alone lets `true` pass for 1 and `1.0` for 1; JSON types must agree too."""
    kinds = {json_type_of(choice) for choice in choices}

    def check(value: Any) -> Any:
        kind = json_type_of(value)
        if kind not in kinds and not (kind == "integer" and "number" in kinds):
            raise ValueError(f"expected one of {list(choices)!r}")
        return value

    return check


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text) if part)


def python_type(schema: Schema, name: str) -> Any:
    """The annotation (type plus constraints) validating values of a normalised schema."""
    if "anyOf" in schema:
        options = tuple(python_type(branch, f"{name}Option{i}") for i, branch in enumerate(schema["anyOf"]))
        if len([o for o in options if o is not None]) <= 1:
            # `X | None` is Pydantic's nullable X, not a union: there is no branch order to set,
            # and `union_mode` on it fails to build the model (RuntimeError, found by fuzzing).
            return Union[options]  # noqa: UP007
        return Annotated[Union[options], Field(union_mode="left_to_right")]  # noqa: UP007
    if "const" in schema or "enum" in schema:
        choices = tuple(schema["enum"]) if "enum" in schema else (schema["const"],)
        return Annotated[Literal[choices], BeforeValidator(_same_json_type(choices))]
    kind = schema["type"]
    if kind == "string":
        extra: list[Any] = [Strict()]
        if "format" in schema:
            extra.append(_format_checker(schema["format"]))
        constraints = StringConstraints(
            min_length=schema.get("minLength"),
            max_length=schema.get("maxLength"),
            pattern=schema.get("pattern"),
        )
        return Annotated[str, constraints, *extra]
    if kind in ("integer", "number"):
        bounds = Field(
            ge=schema.get("minimum"),
            gt=schema.get("exclusiveMinimum"),
            le=schema.get("maximum"),
            lt=schema.get("exclusiveMaximum"),
        )
        number_type = int if kind == "integer" else float
        return Annotated[number_type, Strict(), bounds]
    if kind == "boolean":
        return Annotated[bool, Strict()]
    if kind == "null":
        return None
    if kind == "array":
        item = python_type(schema["items"], f"{name}Item")
        return Annotated[
            list[item], Field(min_length=schema.get("minItems"), max_length=schema.get("maxItems"))
        ]
    return object_model(schema, name)


def object_model(schema: Schema, name: str, doc: str | None = None) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for prop, prop_schema in schema["properties"].items():
        annotation = python_type(prop_schema, f"{name}{_camel(prop)}")
        required = prop in schema["required"]
        default = ... if required else prop_schema.get("default")
        fields[prop] = (annotation, Field(default, description=prop_schema.get("description")))
    # python-re: patterns were checked with Python's regex engine, so validate with the same one.
    config = ConfigDict(extra="forbid", regex_engine="python-re")
    return create_model(name, __config__=config, __doc__=doc, **fields)


def arguments_model(tool: ToolSpec) -> type[BaseModel]:
    """The strict argument model of one tool, e.g. `TrackOrderArguments`."""
    return object_model(tool.parameters, f"{_camel(tool.name)}Arguments", tool.description or None)
