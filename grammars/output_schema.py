"""The JSON Schema of every valid router output: a union of one object per tool plus no_tool.

Constrained decoders that take JSON Schema rather than GBNF (outlines, hosted APIs) use this.
"""

from __future__ import annotations

from typing import Any

from .catalogue import NO_TOOL, Catalogue
from .gbnf import GrammarOptions


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


def output_json_schema(catalogue: Catalogue, options: GrammarOptions | None = None) -> dict[str, Any]:
    options = options or GrammarOptions()
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": tool.name}, "arguments": _strict(tool.parameters)},
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
