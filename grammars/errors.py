"""Errors raised while turning tool declarations into a catalogue.

Every message names the tool, the field path and the JSON Schema keyword at fault, so a user
with a 40-tool catalogue can find the one line to fix.
"""

from __future__ import annotations


class CatalogueError(ValueError):
    """A tool declaration that cannot become part of a catalogue."""


class SchemaError(CatalogueError):
    """An argument schema that uses something outside the supported JSON Schema subset."""

    def __init__(self, tool: str, field: str, keyword: str, detail: str) -> None:
        self.tool = tool
        self.field = field
        self.keyword = keyword
        self.detail = detail
        where = f"field '{field}'" if field else "its parameters"
        super().__init__(f"tool '{tool}', {where}: keyword '{keyword}': {detail}")
