"""The one canonical text of a call: what training targets contain and the grammar accepts.

`{"tool":"<name>","arguments":{...}}` or `{"tool":"no_tool","reason":"..."}`: no spaces, keys in
schema order, optional arguments omitted when absent, strings escaped as `json.dumps(...,
ensure_ascii=False)` does, numbers in plain decimal (never exponent notation).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .tool import NO_TOOL

if TYPE_CHECKING:
    from .catalogue import Catalogue
from .schema import Schema


def json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def format_number(value: int | float, integer: bool = False) -> str:
    """Plain decimal: ints as digits, floats as the shortest repr, with `.0` when whole."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"JSON has no {value!r}")
    if integer or isinstance(value, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return str(int(value))
    if value == 0:
        return "0.0"  # never "-0.0": zero has one spelling
    text = repr(value)
    if "e" in text:
        text = format(Decimal(text), "f")
        if "." not in text:
            text += ".0"
    return text


def _conforms(value: Any, schema: Schema) -> bool:
    """Cheap structural test used only to pick the anyOf branch whose key order to use."""
    if "const" in schema:
        return value == schema["const"] and type(value) is type(schema["const"])
    if "enum" in schema:
        return any(value == v and type(value) is type(v) for v in schema["enum"])
    if "anyOf" in schema:
        return any(_conforms(value, branch) for branch in schema["anyOf"])
    kind = schema.get("type")
    if kind == "object":
        return (
            isinstance(value, dict)
            and set(value) <= set(schema["properties"])
            and set(schema["required"]) <= set(value)
            and all(_conforms(value[k], schema["properties"][k]) for k in value)
        )
    if kind == "array":
        return isinstance(value, list) and all(_conforms(v, schema["items"]) for v in value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return value is None


def dump_value(value: Any, schema: Schema) -> str:
    """Serialise a JSON value canonically, guided by its (normalised) schema."""
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            if _conforms(value, branch):
                return dump_value(value, branch)
        raise ValueError(f"{value!r} matches no branch of {schema['anyOf']!r}")
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, got {value!r}")
        unknown = set(value) - set(schema["properties"])
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}")
        parts = [
            f"{json_string(name)}:{dump_value(value[name], prop)}"
            for name, prop in schema["properties"].items()
            if name in value and not (value[name] is None and name not in schema["required"])
        ]
        return "{" + ",".join(parts) + "}"
    if kind == "array":
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {value!r}")
        return "[" + ",".join(dump_value(item, schema["items"]) for item in value) + "]"
    if kind in ("integer", "number") and value is not None and not isinstance(value, bool):
        return format_number(value, integer=kind == "integer")
    if isinstance(value, float):
        return format_number(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def serialize_call(catalogue: Catalogue, tool: str, arguments: dict[str, Any]) -> str:
    """Canonical text of a tool call. Raises KeyError/ValueError if it does not fit the schema."""
    spec = catalogue.get(tool)
    return f'{{"tool":{json_string(tool)},"arguments":{dump_value(arguments, spec.parameters)}}}'


def serialize_no_tool(reason: str) -> str:
    return f'{{"tool":"{NO_TOOL}","reason":{json_string(reason)}}}'
