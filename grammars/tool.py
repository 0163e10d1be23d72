"""One tool of a catalogue, and the reserved no_tool name: the leaf every grammars module builds on."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import CatalogueError

NO_TOOL = "no_tool"
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolSpec(BaseModel):
    """One tool: its name, what it does, and its normalised argument schema."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any]

    @property
    def properties(self) -> dict[str, Any]:
        return self.parameters.get("properties", {})

    @property
    def required(self) -> list[str]:
        return self.parameters.get("required", [])

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


def validate_tool_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
        raise CatalogueError(f"{where}: tool name {name!r} must match {TOOL_NAME_RE.pattern}")
    if name == NO_TOOL:
        raise CatalogueError(f"{where}: '{NO_TOOL}' is reserved for the router's explicit refusal")
    return name
