"""Render a catalogue as the router's system prompt, in four verbosity modes.

The modes are the cost strategies of hosted function calling, made measurable:
`full` (names, descriptions, argument signatures), `compact` (signatures, no descriptions),
`names` (tool names only), `none` (no catalogue: the fine-tuned router knows its tools).
Training and the runtime both call `render_system_prompt`, so their prompts match byte for byte.
"""

from __future__ import annotations

import json
from enum import StrEnum

from .catalogue import Catalogue
from .schema import Schema
from .tool import NO_TOOL, ToolSpec


class PromptMode(StrEnum):
    full = "full"
    compact = "compact"
    names = "names"
    none = "none"


INSTRUCTION = (
    "You are a tool router. Reply with one JSON object and nothing else: "
    '{"tool":"<name>","arguments":{...}} to call a tool, or '
    f'{{"tool":"{NO_TOOL}","reason":"..."}} when no tool fits or a required argument is missing.'
)


def _bounds(schema: Schema) -> str:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    low_op = ">" if "exclusiveMinimum" in schema else ">="
    high_op = "<" if "exclusiveMaximum" in schema else "<="
    if low is not None and high is not None and low_op == ">=" and high_op == "<=":
        return f" {low}..{high}"
    parts = ([f"{low_op}{low}"] if low is not None else []) + (
        [f"{high_op}{high}"] if high is not None else []
    )
    return f" {' '.join(parts)}" if parts else ""


def type_signature(schema: Schema) -> str:
    """A short TypeScript-like rendering of a normalised schema."""
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(type_signature(branch) for branch in schema["anyOf"])
    kind = schema["type"]
    if kind == "string":
        if "format" in schema:
            return schema["format"]
        if "pattern" in schema:
            return f"string /{schema['pattern']}/"
        if "minLength" in schema or "maxLength" in schema:
            return f"string[{schema.get('minLength', 0)}..{schema.get('maxLength', '')}]"
        return "string"
    if kind in ("integer", "number"):
        return f"{kind}{_bounds(schema)}"
    if kind == "array":
        item = type_signature(schema["items"])
        item = f"({item})" if " | " in item else item
        if "minItems" in schema or "maxItems" in schema:
            return f"{item}[{schema.get('minItems', 0)}..{schema.get('maxItems', '')}]"
        return f"{item}[]"
    if kind == "object":
        return "{" + ", ".join(_arguments(schema)) + "}"
    return kind


def _one_line(text: str) -> str:
    """Docstrings arrive wrapped; the prompt wants each description on one line."""
    return " ".join(text.split())


def _arguments(schema: Schema) -> list[str]:
    required = set(schema.get("required", []))
    signatures = []
    for name, prop in schema.get("properties", {}).items():
        default = f" = {json.dumps(prop['default'], ensure_ascii=False)}" if "default" in prop else ""
        signatures.append(f"{name}{'' if name in required else '?'}: {type_signature(prop)}{default}")
    return signatures


def _described_arguments(schema: Schema, indent: str) -> list[str]:
    lines = []
    for name, prop in schema.get("properties", {}).items():
        if prop.get("description"):
            lines.append(f"{indent}{name}: {_one_line(prop['description'])}")
        if prop.get("type") == "object":
            lines += _described_arguments(prop, indent + "  ")
    return lines


def tool_signature(tool: ToolSpec) -> str:
    return f"{tool.name}({', '.join(_arguments(tool.parameters))})"


def render_system_prompt(catalogue: Catalogue, mode: PromptMode | str = PromptMode.full) -> str:
    mode = PromptMode(mode)
    if mode is PromptMode.none:
        return INSTRUCTION
    if mode is PromptMode.names:
        return f"{INSTRUCTION}\nTools: {', '.join(catalogue.names)}"
    lines = [INSTRUCTION, "Tools:"]
    for tool in catalogue:
        if mode is PromptMode.compact:
            lines.append(f"- {tool_signature(tool)}")
            continue
        description = f": {_one_line(tool.description)}" if tool.description else ""
        lines.append(f"- {tool_signature(tool)}{description}")
        lines += _described_arguments(tool.parameters, "    ")
    return "\n".join(lines)
