"""The supported JSON Schema subset: what is normalised how, and what is refused with which message."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from toolroute.grammars import Catalogue, SchemaError
from toolroute.grammars.schema import normalize_parameters


def params(properties: dict, required: list | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or []}


def test_pydantic_refs_optionals_and_titles_are_normalised():
    class Inner(BaseModel):
        x: int

    class Outer(BaseModel):
        """Outer."""

        inner: Inner = Field(description="The inner one.")
        maybe: str | None = None
        nullable: int | None
        when: dt.date
        kind: Literal["a", "b"] = "a"

    spec = Catalogue.from_tools([Outer]).tools[0]
    props = spec.properties
    assert props["inner"] == {
        "type": "object",
        "description": "The inner one.",
        "properties": {"x": {"type": "integer"}},
        "required": ["x"],
    }
    assert props["maybe"] == {"type": "string"}  # optional None means "omit it"
    assert props["nullable"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}  # required: null kept
    assert props["when"] == {"type": "string", "format": "date"}
    assert props["kind"] == {"type": "string", "enum": ["a", "b"], "default": "a"}
    assert spec.required == ["inner", "nullable", "when"]


def test_type_lists_and_one_of_become_any_of():
    schema = normalize_parameters(
        "t",
        params(
            {
                "a": {"type": ["string", "null"], "maxLength": 3},
                "b": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
                "c": {"enum": [1, 2]},
            },
            ["a", "b", "c"],
        ),
    )
    props = schema["properties"]
    assert props["a"] == {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]}
    assert props["b"] == {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}
    assert props["c"] == {"type": "integer", "enum": [1, 2]}


def test_integer_bounds_become_inclusive():
    class M(BaseModel):
        n: Annotated[int, Field(gt=0, lt=10)]

    assert Catalogue.from_tools([M]).tools[0].properties["n"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 9,
    }


@pytest.mark.parametrize(
    "prop, field, keyword, detail",
    [
        ({"type": "string", "format": "email"}, "x", "format", "format 'email' is not supported"),
        (
            {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "x",
            "uniqueItems",
            "not in the supported JSON Schema subset",
        ),
        (
            {"type": "object", "additionalProperties": {"type": "string"}},
            "x",
            "additionalProperties",
            "free-form objects are not supported",
        ),
        ({"type": "object"}, "x", "properties", "a nested object must declare its properties"),
        ({"type": "number", "maximum": 2.5}, "x", "maximum", "not a whole number"),
        ({"type": "string", "pattern": "(?=a)b"}, "x", "pattern", "not supported"),
        ({"type": "string", "pattern": "a("}, "x", "pattern", "invalid regular expression"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "x", "maxLength", "one of format, pattern"),
        ({"type": "array"}, "x", "items", "an array needs an 'items' schema"),
        ({"type": "array", "items": [{"type": "string"}]}, "x", "items", "tuple arrays"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "x", "minimum", "no integer lies between"),
        ({"type": "string", "minLength": 4, "maxLength": 2}, "x", "minLength", "exceeds maxLength"),
        ({"type": "string", "minimum": 1}, "x", "minimum", "does not apply to type 'string'"),
        ({"type": "tuple"}, "x", "type", "unsupported type 'tuple'"),
        ({"allOf": [{"type": "string"}, {"maxLength": 2}]}, "x", "allOf", "single-schema allOf"),
        ({"$ref": "#/$defs/Missing"}, "x", "$ref", "cannot resolve"),
        ({"type": "string", "enum": ["a", 1]}, "x", "enum", "value 1 is not of type 'string'"),
        ({"not": {"type": "string"}}, "x", "not", "not in the supported JSON Schema subset"),
        (
            {"type": "object", "properties": {"y": {"type": "string", "format": "uri"}}},
            "x.y",
            "format",
            "format 'uri' is not supported",
        ),
    ],
)
def test_unsupported_features_are_refused_with_tool_field_and_keyword(prop, field, keyword, detail):
    with pytest.raises(SchemaError) as error:
        normalize_parameters("my_tool", params({"x": prop}))
    message = str(error.value)
    assert message.startswith(f"tool 'my_tool', field '{field}': keyword '{keyword}':")
    assert detail in message
    assert (error.value.tool, error.value.field, error.value.keyword) == ("my_tool", field, keyword)


def test_recursive_models_are_refused():
    class Node(BaseModel):
        children: list[Node] = []

    with pytest.raises(SchemaError, match="recursive reference"):
        Catalogue.from_tools([Node])


def test_parameters_must_be_an_object():
    with pytest.raises(SchemaError, match="keyword 'type': a tool's parameters must be of type 'object'"):
        normalize_parameters("t", {"type": "string"})
