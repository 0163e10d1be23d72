"""Copied arguments: string arguments whose value must be a span of the routed request.

Declared per field in any tool source, with the JSON Schema keyword `x-toolroute-copy` (OpenAI
`tools` JSON; other tools ignore an `x-` keyword), which Pydantic models and typed functions
spell with the `Copied` annotation:

    class TrackOrder(BaseModel):
        order_id: Annotated[str, Copied] = Field(description="The order number as written.")

    def play(artist: Annotated[str, Copied] | None = None) -> None: ...

The mark is router metadata, not part of the catalogue's identity: the normalised schema leaves
the keyword out, so the catalogue's JSON, its hash, `Router.load(tools=...)` and the server's
`tools` comparison are the same with or without it. A training run also *infers* copied
arguments from its data (`toolroute.train.copied`); the run's manifest and the router file list
each copied argument with why (`CopiedArgument`). A mark on anything but a string property is
refused, naming the tool and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import CatalogueError
from .schema import COPY_KEYWORD, Schema, string_property
from .tool import ToolSpec

# `Annotated[str, Copied]`: the keyword in the field's JSON Schema, as Pydantic writes it.
Copied = Field(json_schema_extra={COPY_KEYWORD: True})

CopySource = Literal["declared", "inferred", "config"]


class CopiedArgument(BaseModel):
    """One copied argument, and why: declared in the catalogue, inferred from the training data
    (with the share of its values that were spans), or forced on by the training config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(max_length=64)
    argument: str = Field(min_length=1, max_length=1024, description="the property path: a, or a.b")
    source: CopySource
    share: float | None = Field(None, ge=0.0, le=1.0, description="training values that were spans")
    values: int | None = Field(None, ge=0, description="training values measured")

    @property
    def key(self) -> str:
        return f"{self.tool}.{self.argument}"

    def describe(self) -> str:
        if self.share is None:
            return self.source
        return f"{self.source} ({self.share:.1%} of {self.values} training values are spans)"


def string_arguments(tool: ToolSpec) -> dict[str, Schema]:
    """Every string property of a tool's arguments, nested objects included, by path (`a`, `a.b`);
    arrays and unions are not walked into (their items cannot be copied)."""
    found: dict[str, Schema] = {}

    def walk(schema: Schema, prefix: str) -> None:
        for name, prop in schema.get("properties", {}).items():
            path = f"{prefix}{name}"
            if prop.get("type") == "string":
                found[path] = prop
            elif prop.get("type") == "object":
                walk(prop, f"{path}.")

    walk(tool.parameters, "")
    return found


def check_copied(tools: Iterable[ToolSpec], copied: Iterable[CopiedArgument], where: str) -> None:
    """Every copied argument names a tool of `tools` and a string property of it, else a
    `CatalogueError` naming the tool and the field."""
    by_name = {tool.name: tool for tool in tools}
    for entry in copied:
        tool = by_name.get(entry.tool)
        if tool is None:
            raise CatalogueError(f"{where}: copied argument {entry.key!r}: no tool {entry.tool!r}")
        if string_property(tool.parameters, entry.argument) is None:
            raise CatalogueError(
                f"{where}: tool '{entry.tool}', field '{entry.argument}': only a string property can be "
                "copied from the request"
            )


def copied_to_json(copied: Iterable[CopiedArgument]) -> str:
    return json.dumps([entry.model_dump(exclude_none=True) for entry in copied], separators=(",", ":"))


def copied_from_json(text: str, tools: Iterable[ToolSpec], where: str) -> tuple[CopiedArgument, ...]:
    """The copied arguments a router file lists, checked against its catalogue."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CatalogueError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise CatalogueError(f"{where}: expected a list of copied arguments")
    try:
        entries = tuple(CopiedArgument.model_validate(item) for item in data)
    except ValidationError as exc:
        raise CatalogueError(f"{where}: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
    if len({entry.key for entry in entries}) != len(entries):
        raise CatalogueError(f"{where}: an argument is listed twice")
    check_copied(tools, entries, where)
    return entries


def optional_ancestor(tool: ToolSpec, argument: str) -> str | None:
    """The shortest prefix of the path `argument` (`a`, `a.b`) naming an optional property: what
    to leave out of a call so that the argument is not written; None when every level is required."""
    schema: Schema = tool.parameters
    parts = argument.split(".")
    for depth, name in enumerate(parts):
        if name not in schema.get("required", []):
            return ".".join(parts[: depth + 1])
        schema = schema.get("properties", {}).get(name, {})
    return None


def without_arguments(tool: ToolSpec, arguments: Iterable[str]) -> ToolSpec:
    """The tool with the optional properties at these paths left out (its grammar then never
    writes them; a call without them is still a valid call of the original tool)."""
    parameters = json.loads(json.dumps(tool.parameters))
    for argument in arguments:
        *parents, name = argument.split(".")
        node = parameters
        for parent in parents:
            node = node.get("properties", {}).get(parent, {})
        node.get("properties", {}).pop(name, None)
    return tool.model_copy(update={"parameters": parameters})
