"""The JSON Schema of every valid router output: a union of one object per tool plus no_tool.

Constrained decoders that take JSON Schema rather than GBNF (outlines, hosted APIs) use this. It
carries the grammar's own caps (`GrammarOptions`), so it admits exactly the lengths the GBNF
admits and a decoder driven by it ends within the same token budget.
"""

from __future__ import annotations

from typing import Any

from .catalogue import Catalogue
from .gbnf import GrammarOptions
from .tool import NO_TOOL


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Spell out additionalProperties: false, which the normalised form leaves implicit."""
    out = dict(schema)
    if out.get("type") == "object":
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        out["additionalProperties"] = False
    if "items" in out:
        out["items"] = _strict(out["items"])
    if "anyOf" in out:
        out["anyOf"] = [_strict(b) for b in out["anyOf"]]
    return out


def _capped(schema: Any, options: GrammarOptions) -> Any:
    """`maxLength` on strings (patterns, enums and formats aside: the GBNF bounds those by their
    own shape) and `maxItems` on arrays, as the grammar caps them."""
    if isinstance(schema, list):
        return [_capped(item, options) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _capped(value, options) for key, value in schema.items()}
    if out.get("type") == "string" and not {"enum", "const", "pattern", "format"} & out.keys():
        out["maxLength"] = min(out.get("maxLength", options.max_string_length), options.max_string_length)
    if out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", options.max_array_items), options.max_array_items)
    return out


def output_json_schema(catalogue: Catalogue, options: GrammarOptions | None = None) -> dict[str, Any]:
    options = options or GrammarOptions()
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {
                "tool": {"const": tool.name},
                "arguments": _capped(_strict(tool.parameters), options),
            },
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for tool in catalogue
    ]
    branches.append(
        {
            "type": "object",
            "properties": {
                "tool": {"const": NO_TOOL},
                "reason": {"type": "string", "minLength": 1, "maxLength": options.max_reason_length},
            },
            "required": ["tool", "reason"],
            "additionalProperties": False,
        }
    )
    return {"oneOf": branches}
