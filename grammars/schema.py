"""Normalise a tool's argument schema to the JSON Schema subset toolroute enforces.

All three ways of declaring a tool (Pydantic model, typed function, OpenAI JSON) pass through
`normalize_parameters`, so they end up as the same dict: `$ref`/`$defs` inlined, titles dropped,
`oneOf` read as `anyOf`, a non-required `X | None = None` field read as an optional `X`, and keys
in one fixed order. Whatever the grammar could not enforce is refused here with a `SchemaError`.

Inlining `$ref`s can grow a small schema exponentially (each level referring to the next twice),
and tool schemas arrive in request bodies, so normalisation is bounded: a `SchemaBudget` caps the
nodes a whole catalogue may normalise into (an inlined `$ref` costs its full size each time it is
used, though it is only worked out once) and `MAX_SCHEMA_DEPTH` caps nesting, so a crafted schema
is refused in milliseconds instead of stalling the process or ending in a `RecursionError`.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from typing import Any

from .errors import SchemaError
from .patterns import PatternError, check_pattern

# Marks a string argument as copied from the request (see `copied.py`). An annotation of the
# router, not of the schema: read here and left out of the normalised schema, so the catalogue's
# identity (its JSON and hash) is the same with or without it.
COPY_KEYWORD = "x-toolroute-copy"

JsonValue = Any
Schema = dict[str, Any]

# Nodes (schemas, properties, branches, enum values) one catalogue may normalise into. Real tool
# catalogues use a few hundred; this leaves two orders of magnitude while bounding the work.
MAX_SCHEMA_NODES = 20_000
# Nested schemas, counting each $ref hop, allOf and anyOf as a level. Real schemas nest < 10.
MAX_SCHEMA_DEPTH = 64


class SchemaBudget:
    """The schema nodes a catalogue may still normalise into; shared by all its tools."""

    def __init__(self, nodes: int = MAX_SCHEMA_NODES) -> None:
        self.limit = nodes
        self.spent = 0

    @property
    def left(self) -> int:
        return self.limit - self.spent


SUPPORTED_FORMATS = ("date", "date-time", "time")

# Keywords that only annotate; they are dropped (description and default are kept).
_ANNOTATIONS = frozenset(
    {
        "title",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",
        "$schema",
        "$id",
    }
)
_TYPE_KEYWORDS: dict[str, frozenset[str]] = {
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "boolean": frozenset(),
    "null": frozenset(),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
}
_GENERAL = frozenset(
    {
        "type",
        "description",
        "default",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
    }
)
_TYPED = frozenset().union(*_TYPE_KEYWORDS.values())
_KNOWN = _GENERAL | _ANNOTATIONS | _TYPED

# Output key order: a normalised schema is hashed, so the same meaning must give the same bytes.
_KEY_ORDER = (
    "type",
    "description",
    "enum",
    "const",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "items",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "anyOf",
    "default",
)


# Sorted keys, so that equal text means equal schemas as dicts compare (which ignores key order).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, default=repr)

_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 3, 60, 60, 6, 6


def _show(value: Any) -> str:
    """A short repr for an error message: a hostile value may be huge or nested too deep for repr()."""
    return _SHOW.repr(value)


def _salient_keyword(node: Schema) -> str:
    """The keyword to blame for a node too big or too deep: what makes it grow."""
    return next((k for k in ("$ref", "allOf", "anyOf", "oneOf", "items", "properties") if k in node), "type")


def _ordered(schema: Schema) -> Schema:
    return {key: schema[key] for key in _KEY_ORDER if key in schema}


def json_type_of(value: JsonValue) -> str | None:
    """The JSON Schema type name of a scalar JSON value (None for arrays/objects/others)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else None
    if isinstance(value, str):
        return "string"
    return None


def _fits_type(value: JsonValue, type_name: str) -> bool:
    found = json_type_of(value)
    if type_name == "number":
        return found in ("integer", "number")
    return found == type_name


class _Normalizer:
    def __init__(self, tool: str, root: Schema, budget: SchemaBudget) -> None:
        self.tool = tool
        self.budget = budget
        self.depth = 0
        self.deepest = 0  # the deepest level the current normalisation has reached
        # Results by input node: a `$defs` entry used N times is worked out once. Keyed by id(),
        # holding the node itself so that the id stays its own: (node, result, size, height).
        self.done: dict[int, tuple[Schema, Schema, int, int]] = {}
        self.keys: dict[int, tuple[Schema, str]] = {}  # canonical text by result, the same way
        self.defs: dict[str, Schema] = {}
        for key in ("$defs", "definitions"):
            defs = root.get(key, {})
            if not isinstance(defs, dict):
                raise self.error("", key, "must be an object of named schemas")
            self.defs.update({f"#/{key}/{name}": value for name, value in defs.items()})
        self.ref_stack: list[str] = []
        self.copy_marks: dict[str, bool] = {}  # field path -> the declared `COPY_KEYWORD` value
        # Marks found under a node, relative to its field path: a reused result re-records them.
        self.marks_under: dict[int, list[tuple[str, bool]]] = {}

    def error(self, field: str, keyword: str, detail: str) -> SchemaError:
        return SchemaError(self.tool, field, keyword, detail)

    def spend(self, nodes: int, field: str, node: Schema) -> None:
        self.budget.spent += nodes
        if self.budget.spent > self.budget.limit:
            raise self.error(
                field,
                _salient_keyword(node),
                f"the catalogue's schemas grow past {self.budget.limit:,} nodes once $refs are "
                "inlined; simplify them",
            )

    def normalize(self, node: Any, field: str) -> Schema:
        if not isinstance(node, dict):
            raise self.error(field, "schema", f"expected a schema object, got {_show(node)}")
        if COPY_KEYWORD in node:
            mark = node[COPY_KEYWORD]
            if not isinstance(mark, bool):
                raise self.error(field, COPY_KEYWORD, f"must be true or false, got {_show(mark)}")
            self.copy_marks[field] = mark
            node = {key: value for key, value in node.items() if key != COPY_KEYWORD}
        if (done := self.done.get(id(node))) is not None and done[0] is node:
            _, result, size, height = done
            self.spend(size, field, node)
            self._enter(self.depth + height, field, node)
            for suffix, mark in self.marks_under.get(id(node), []):
                self.copy_marks[field + suffix] = mark
            return result
        marks_before = dict(self.copy_marks)
        spent, outer_deepest = self.budget.spent, self.deepest
        self.depth += 1
        self.deepest = self.depth
        try:
            self._enter(self.depth, field, node)
            self.spend(1, field, node)
            result = self._normalize(node, field)
        finally:
            self.depth -= 1
        height = self.deepest - self.depth
        self.deepest = max(outer_deepest, self.deepest)
        self.done[id(node)] = (node, result, self.budget.spent - spent, height)
        found = [(path, mark) for path, mark in self.copy_marks.items() if marks_before.get(path) != mark]
        self.marks_under[id(node)] = [(path[len(field) :], mark) for path, mark in found]
        return result

    def _enter(self, level: int, field: str, node: Schema) -> None:
        """Note that normalisation (or a reused result) reaches `level`; refuse it past the limit."""
        if level > self.deepest:
            self.deepest = level
        if level > MAX_SCHEMA_DEPTH:
            raise self.error(
                field, _salient_keyword(node), f"schemas nest more than {MAX_SCHEMA_DEPTH} levels deep"
            )

    def _normalize(self, node: Schema, field: str) -> Schema:
        if "$ref" in node:
            return self._follow_ref(node, field)
        if "allOf" in node:
            return self._merge_all_of(node, field)
        unknown = node.keys() - _KNOWN
        if unknown:
            raise self.error(field, sorted(unknown)[0], "is not in the supported JSON Schema subset")
        if "anyOf" in node or "oneOf" in node:
            return self._union(node, field)
        type_name = node.get("type")
        if isinstance(type_name, list):
            return self._type_list(node, type_name, field)
        if type_name is None:
            type_name = self._infer_type(node, field)
        if not isinstance(type_name, str) or type_name not in _TYPE_KEYWORDS:  # {} is unhashable
            raise self.error(field, "type", f"unsupported type {_show(type_name)}")
        for keyword in sorted(node.keys() & _TYPED):
            if keyword not in _TYPE_KEYWORDS[type_name]:
                raise self.error(field, keyword, f"does not apply to type '{type_name}'")
        out: Schema = {"type": type_name}
        self._copy_description(node, out, field)
        self._literals(node, out, type_name, field)
        handler = getattr(self, f"_{type_name}")
        handler(node, out, field)
        if "default" in node:
            out["default"] = node["default"]
        return _ordered(out)

    # -- structural keywords -------------------------------------------------------------

    def _follow_ref(self, node: Schema, field: str) -> Schema:
        ref = node["$ref"]
        if ref not in self.defs:
            raise self.error(field, "$ref", f"cannot resolve {_show(ref)} (only local #/$defs refs)")
        if ref in self.ref_stack:
            raise self.error(field, "$ref", f"recursive reference {_show(ref)} is not supported")
        self.ref_stack.append(ref)
        try:
            merged = {**self.defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
            return self.normalize(merged, field)
        finally:
            self.ref_stack.pop()

    def _merge_all_of(self, node: Schema, field: str) -> Schema:
        parts = node["allOf"]
        if not isinstance(parts, list) or len(parts) != 1:
            raise self.error(field, "allOf", "only a single-schema allOf (as Pydantic emits) is supported")
        merged = {**parts[0], **{k: v for k, v in node.items() if k != "allOf"}}
        return self.normalize(merged, field)

    def _union(self, node: Schema, field: str) -> Schema:
        keyword = "anyOf" if "anyOf" in node else "oneOf"
        if "anyOf" in node and "oneOf" in node:
            raise self.error(field, "oneOf", "anyOf and oneOf together are not supported")
        extra = set(node) - {keyword, "description", "default"} - _ANNOTATIONS
        if extra:
            raise self.error(field, sorted(extra)[0], f"cannot be combined with {keyword}")
        branches_raw = node[keyword]
        if not isinstance(branches_raw, list) or not branches_raw:
            raise self.error(field, keyword, "must be a non-empty list of schemas")
        self._fits(len(branches_raw), field, keyword)
        # Keyed by text: a hash lookup per branch, where comparing with every kept branch was quadratic.
        branches: dict[str, Schema] = {}
        for branch in branches_raw:
            normalized = self.normalize(branch, field)
            for piece in normalized.get("anyOf", [normalized]):
                branches.setdefault(self._key(piece), piece)
        out: Schema = {}
        self._copy_description(node, out, field)
        if len(branches) == 1:
            out = {**next(iter(branches.values())), **out}
        else:
            out["anyOf"] = list(branches.values())
        if "default" in node:
            out["default"] = node["default"]
        return _ordered(out)

    def _type_list(self, node: Schema, types: list[Any], field: str) -> Schema:
        if not types or not all(isinstance(t, str) for t in types):
            raise self.error(field, "type", "a type list must hold type names")
        branches = []
        for type_name in types:
            if type_name not in _TYPE_KEYWORDS:
                raise self.error(field, "type", f"unsupported type {_show(type_name)}")
            own = _TYPE_KEYWORDS[type_name]
            branch = {
                k: v
                for k, v in node.items()
                if k not in ("type", "description", "default") and (k in own or k in _ANNOTATIONS)
            }
            if "enum" in node:
                values = [v for v in node["enum"] if _fits_type(v, type_name)]
                if not values:
                    continue
                branch["enum"] = values
            branches.append({"type": type_name, **branch})
        union = {"anyOf": branches, **{k: node[k] for k in ("description", "default") if k in node}}
        return self.normalize(union, field)

    def _infer_type(self, node: Schema, field: str) -> str:
        values = node["enum"] if "enum" in node else [node["const"]] if "const" in node else None
        if values is None:
            raise self.error(field, "type", "missing 'type' (and no enum/const to infer it from)")
        if not isinstance(values, list) or not values:
            raise self.error(field, "enum", "must be a non-empty list")
        kinds = {json_type_of(v) for v in values}
        if kinds == {"integer", "number"}:
            kinds = {"number"}
        if len(kinds) != 1 or None in kinds:
            raise self.error(field, "enum", f"values must share one scalar type, got {_show(values)}")
        return kinds.pop()  # type: ignore[return-value]

    # -- shared pieces ---------------------------------------------------------------------

    def _key(self, schema: Schema) -> str:
        """Canonical text of a normalised schema, for de-duplication by hashing."""
        known = self.keys.get(id(schema))
        if known is not None and known[0] is schema:
            return known[1]
        text = _CANONICAL_JSON.encode(schema)
        self.keys[id(schema)] = (schema, text)
        return text

    def _fits(self, count: int, field: str, keyword: str) -> None:
        """Refuse a list of `count` schemas at once when it cannot fit in what is left."""
        if count > self.budget.left:
            raise self.error(
                field,
                keyword,
                f"{count:,} entries do not fit in the catalogue's limit of "
                f"{self.budget.limit:,} schema nodes",
            )

    def _copy_description(self, node: Schema, out: Schema, field: str) -> None:
        if "description" in node:
            if not isinstance(node["description"], str):
                raise self.error(field, "description", "must be a string")
            if node["description"].strip():
                out["description"] = node["description"].strip()

    def _literals(self, node: Schema, out: Schema, type_name: str, field: str) -> None:
        if "enum" in node and "const" in node:
            raise self.error(field, "const", "enum and const together are not supported")
        if "enum" in node:
            values = node["enum"]
            if not isinstance(values, list) or not values:
                raise self.error(field, "enum", "must be a non-empty list")
            self._fits(len(values), field, "enum")
            self.spend(len(values), field, node)
            for value in values:
                if not _fits_type(value, type_name):
                    raise self.error(field, "enum", f"value {_show(value)} is not of type '{type_name}'")
            if len({repr(v) for v in values}) != len(values):
                raise self.error(field, "enum", "values must be unique")
            out["enum"] = list(values)
        if "const" in node:
            if not _fits_type(node["const"], type_name):
                raise self.error(field, "const", f"value {_show(node['const'])} is not of type '{type_name}'")
            out["const"] = node["const"]

    def _non_negative_int(self, node: Schema, keyword: str, field: str) -> int | None:
        if keyword not in node:
            return None
        value = node[keyword]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(field, keyword, f"must be a non-negative integer, got {_show(value)}")
        return value

    # -- per type ---------------------------------------------------------------------------

    def _string(self, node: Schema, out: Schema, field: str) -> None:
        if "format" in node:
            if node["format"] not in SUPPORTED_FORMATS:
                raise self.error(
                    field,
                    "format",
                    f"format {_show(node['format'])} is not supported "
                    f"(supported: {', '.join(SUPPORTED_FORMATS)})",
                )
            out["format"] = node["format"]
        if "pattern" in node:
            pattern = node["pattern"]
            if not isinstance(pattern, str):
                raise self.error(field, "pattern", "must be a string")
            try:
                check_pattern(pattern)  # first: it refuses nesting too deep for re.compile
                re.compile(pattern)
            except re.error as exc:
                raise self.error(field, "pattern", f"invalid regular expression: {exc}") from None
            except PatternError as exc:
                raise self.error(field, "pattern", str(exc)) from None
            out["pattern"] = pattern
        low = self._non_negative_int(node, "minLength", field)
        high = self._non_negative_int(node, "maxLength", field)
        if low is not None and high is not None and low > high:
            raise self.error(field, "minLength", f"minLength {low} exceeds maxLength {high}")
        if low:
            out["minLength"] = low
        if high is not None:
            out["maxLength"] = high
        constrained = [k for k in ("format", "pattern") if k in out]
        if len(constrained) > 1 or (constrained and ("minLength" in out or "maxLength" in out)):
            keyword = (
                constrained[-1]
                if len(constrained) > 1
                else "maxLength"
                if "maxLength" in out
                else "minLength"
            )
            raise self.error(
                field,
                keyword,
                "the grammar enforces one of format, pattern or minLength/maxLength per string, not several",
            )
        if ("enum" in out or "const" in out) and set(out) & {"format", "pattern", "minLength", "maxLength"}:
            raise self.error(field, "enum", "enum/const cannot be combined with other string constraints")

    def _number_bounds(self, node: Schema, out: Schema, field: str, integer: bool) -> None:
        bounds: dict[str, float | int] = {}
        for keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            if keyword not in node:
                continue
            value = node[keyword]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise self.error(field, keyword, f"must be a finite number, got {_show(value)}")
            bounds[keyword] = value
        if integer:
            # An integer bound is exact once made inclusive; Pydantic's gt=0 becomes minimum 1.
            low = [math.ceil(bounds["minimum"])] if "minimum" in bounds else []
            if "exclusiveMinimum" in bounds:
                low.append(math.floor(bounds["exclusiveMinimum"]) + 1)
            high = [math.floor(bounds["maximum"])] if "maximum" in bounds else []
            if "exclusiveMaximum" in bounds:
                high.append(math.ceil(bounds["exclusiveMaximum"]) - 1)
            if low:
                out["minimum"] = max(low)
            if high:
                out["maximum"] = min(high)
            if low and high and out["minimum"] > out["maximum"]:
                raise self.error(field, "minimum", "no integer lies between the bounds")
            return
        for keyword, value in bounds.items():
            if value != int(value):
                raise self.error(
                    field,
                    keyword,
                    f"number bound {_show(value)} is not a whole number; the grammar enforces number bounds "
                    "only at whole numbers (use an integer field, or scale the unit)",
                )
            out[keyword] = int(value)
        if "minimum" in out and "exclusiveMinimum" in out:
            raise self.error(field, "exclusiveMinimum", "give minimum or exclusiveMinimum, not both")
        if "maximum" in out and "exclusiveMaximum" in out:
            raise self.error(field, "exclusiveMaximum", "give maximum or exclusiveMaximum, not both")
        low_value = out.get("minimum", out.get("exclusiveMinimum"))
        high_value = out.get("maximum", out.get("exclusiveMaximum"))
        if low_value is not None and high_value is not None:
            empty = low_value > high_value or (
                low_value == high_value and ("exclusiveMinimum" in out or "exclusiveMaximum" in out)
            )
            if empty:
                raise self.error(field, "minimum", "no number lies between the bounds")

    def _integer(self, node: Schema, out: Schema, field: str) -> None:
        self._number_bounds(node, out, field, integer=True)

    def _number(self, node: Schema, out: Schema, field: str) -> None:
        self._number_bounds(node, out, field, integer=False)

    def _boolean(self, node: Schema, out: Schema, field: str) -> None:
        pass

    def _null(self, node: Schema, out: Schema, field: str) -> None:
        pass

    def _array(self, node: Schema, out: Schema, field: str) -> None:
        if "items" not in node:
            raise self.error(field, "items", "an array needs an 'items' schema")
        if isinstance(node["items"], list):
            raise self.error(field, "items", "tuple arrays (items as a list) are not supported")
        out["items"] = self.normalize(node["items"], f"{field}[]")
        low = self._non_negative_int(node, "minItems", field)
        high = self._non_negative_int(node, "maxItems", field)
        if low is not None and high is not None and low > high:
            raise self.error(field, "minItems", f"minItems {low} exceeds maxItems {high}")
        if low:
            out["minItems"] = low
        if high is not None:
            out["maxItems"] = high

    def _object(self, node: Schema, out: Schema, field: str) -> None:
        extra = node.get("additionalProperties", False)
        if extra is not False:
            raise self.error(
                field,
                "additionalProperties",
                "free-form objects are not supported; declare the properties "
                "(additionalProperties must be false)",
            )
        if "properties" not in node and field:
            raise self.error(field, "properties", "a nested object must declare its properties")
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise self.error(field, "properties", "must be an object mapping names to schemas")
        self._fits(len(properties), field, "properties")
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.error(field, "required", "must be a list of property names")
        missing = [name for name in required if name not in properties]
        if missing:
            raise self.error(field, "required", f"names undeclared properties {missing}")
        normalized: dict[str, Schema] = {}
        for name, prop in properties.items():
            child = f"{field}.{name}" if field else name
            schema = self.normalize(prop, child)
            if name not in required:
                schema = _drop_optional_null(schema)
            normalized[name] = schema
        out["properties"] = normalized
        out["required"] = [name for name in properties if name in required]


def _drop_optional_null(schema: Schema) -> Schema:
    """`x: T | None = None` that is not required means "omit x": one spelling of absence."""
    if "anyOf" not in schema or schema.get("default", None) is not None:
        return schema
    branches = [b for b in schema["anyOf"] if b != {"type": "null"}]
    if len(branches) == len(schema["anyOf"]):
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if len(branches) == 1:
        merged = {**branches[0], **rest}
        merged.pop("default", None)
        return _ordered(merged)
    return _ordered({**rest, "anyOf": branches})


def normalize_parameters(tool: str, parameters: Any, budget: SchemaBudget | None = None) -> Schema:
    """Normalise a tool's `parameters` schema (an object schema) or raise `SchemaError`.

    `budget` is shared by the tools of one catalogue; without one the tool gets a budget of its own.
    """
    return normalize_parameters_and_marks(tool, parameters, budget)[0]


def normalize_parameters_and_marks(
    tool: str, parameters: Any, budget: SchemaBudget | None = None
) -> tuple[Schema, dict[str, bool]]:
    """`normalize_parameters`, and the `COPY_KEYWORD` marks it read: {argument path: declared value}
    (paths as `a`, `a.b`). A mark anywhere but on a string property is a `SchemaError`."""
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise SchemaError(tool, "", "parameters", f"must be an object schema, got {_show(parameters)}")
    if parameters.get("type", "object") != "object":
        raise SchemaError(tool, "", "type", "a tool's parameters must be of type 'object'")
    body = {k: v for k, v in parameters.items() if k not in ("$defs", "definitions")}
    body["type"] = "object"
    normalizer = _Normalizer(tool, parameters, budget or SchemaBudget())
    schema = normalizer.normalize(body, "")
    for path in normalizer.copy_marks:
        _check_copy_mark(tool, schema, path)
    return schema, dict(sorted(normalizer.copy_marks.items()))


def string_property(schema: Schema, path: str) -> Schema | None:
    """The schema of the string property at `path` (`a`, `a.b`) of a normalised object schema;
    None when there is no such property or it is not a plain string (an array item, a number, a
    union of types...)."""
    if not path or "[]" in path:
        return None
    node: Schema = schema
    for name in path.split("."):
        properties = node.get("properties") if node.get("type") == "object" else None
        if not isinstance(properties, dict) or name not in properties:
            return None
        node = properties[name]
    return node if node.get("type") == "string" else None


def _check_copy_mark(tool: str, schema: Schema, path: str) -> None:
    if string_property(schema, path) is None:
        what = "the parameters object" if not path else f"'{path}'"
        raise SchemaError(
            tool,
            path,
            COPY_KEYWORD,
            f"only a string property can be copied from the request, and {what} is not one",
        )
