"""The catalogue: the tools a router chooses between, in one internal representation.

Pydantic models, typed functions and OpenAI `tools` JSON all become `ToolSpec`s whose
`parameters` is a normalised JSON Schema (see `schema.py`). Two catalogues declared in different
forms but meaning the same thing compare equal and have the same `sha256`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from .calls import NoTool, ToolCall, parse_tool_call
from .errors import CatalogueError
from .models import arguments_model
from .schema import SchemaBudget
from .sources import specs_from_openai, tool_from_any
from .tool import ToolSpec, validate_tool_name


@dataclass(frozen=True, eq=False)
class Catalogue:
    """An ordered, duplicate-free set of tools.

    `sources` remembers the Python objects the tools were declared with (a Pydantic class, a
    function) so that calls can be handed back as the user's own types; `copy_marks` the
    copied arguments they declare (`{tool: {argument path: true|false}}`, see `copied.py`).
    Neither plays any part in equality or the hash, which depend on the schemas alone.
    """

    tools: tuple[ToolSpec, ...]
    sources: dict[str, Any] = field(default_factory=dict, repr=False)
    copy_marks: dict[str, dict[str, bool]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, tool in enumerate(self.tools):
            validate_tool_name(tool.name, f"tool #{index + 1}")
            if tool.name in seen:
                raise CatalogueError(f"duplicate tool name '{tool.name}' (tool #{index + 1})")
            seen.add(tool.name)
        if not self.tools:
            raise CatalogueError("a catalogue needs at least one tool")

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_tools(cls, items: Iterable[Any]) -> Catalogue:
        """Build from Pydantic model classes, typed functions and OpenAI tool dicts, mixed freely."""
        specs: list[ToolSpec] = []
        sources: dict[str, Any] = {}
        marks: dict[str, dict[str, bool]] = {}
        budget = SchemaBudget()  # one for the whole catalogue: many tools must not add up unbounded
        for index, item in enumerate(items):
            spec, source, tool_marks = tool_from_any(item, where=f"tool #{index + 1}", budget=budget)
            specs.append(spec)
            if source is not None:
                sources[spec.name] = source
            if tool_marks:
                marks[spec.name] = tool_marks
        return cls(tuple(specs), sources, marks)

    @classmethod
    def from_openai(cls, data: Any, where: str = "tools") -> Catalogue:
        """Build from OpenAI `tools` JSON, a legacy `functions` list, or a dict holding either."""
        declared = specs_from_openai(data, where)
        return cls(tuple(spec for spec, _ in declared), {}, {spec.name: m for spec, m in declared if m})

    @classmethod
    def from_json(cls, text: str, where: str = "tools") -> Catalogue:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogueError(f"{where}: not valid JSON: {exc}") from None
        except RecursionError:
            raise CatalogueError(f"{where}: JSON nested too deeply to read") from None
        return cls.from_openai(data, where)

    # -- reading -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalogue) and self.tools == other.tools

    def __hash__(self) -> int:
        return hash(self.sha256)

    @cached_property
    def _by_name(self) -> dict[str, ToolSpec]:
        return {tool.name: tool for tool in self.tools}

    @property
    def names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def get(self, name: str) -> ToolSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown tool {name!r}; the catalogue has {self.names}") from None

    def to_openai(self) -> list[dict[str, Any]]:
        """The catalogue as OpenAI `tools` JSON (normalised schemas)."""
        return [tool.to_openai() for tool in self.tools]

    def to_json(self) -> str:
        """Deterministic compact JSON of the catalogue; what `sha256` hashes and GGUFs embed."""
        return json.dumps(self.to_openai(), ensure_ascii=False, separators=(",", ":"))

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def subset(self, names: Iterable[str]) -> Catalogue:
        wanted = list(names)
        for name in wanted:
            self.get(name)
        return Catalogue(
            tuple(tool for tool in self.tools if tool.name in wanted),
            {k: v for k, v in self.sources.items() if k in wanted},
            {k: v for k, v in self.copy_marks.items() if k in wanted},
        )

    def diff(self, other: Catalogue) -> str:
        """What differs from `other`, tool by tool (empty when equal)."""
        mine, theirs = self._by_name, other._by_name
        parts = []
        if only := [n for n in mine if n not in theirs]:
            parts.append(f"only in this catalogue: {', '.join(only)}")
        if only := [n for n in theirs if n not in mine]:
            parts.append(f"only in the other: {', '.join(only)}")
        if changed := [n for n in mine if n in theirs and mine[n] != theirs[n]]:
            parts.append(f"declared differently: {', '.join(changed)}")
        if not parts and self.names != other.names:
            parts.append("same tools in another order")
        return "; ".join(parts)

    def union(self, other: Catalogue) -> Catalogue:
        """This catalogue plus the tools only `other` has; a name declared two ways is an error."""
        if changed := [t.name for t in other if t.name in self and self.get(t.name) != t]:
            raise CatalogueError(f"tools declared differently in the two catalogues: {', '.join(changed)}")
        extra = tuple(t for t in other if t.name not in self)
        marks = {name: {**other.copy_marks.get(name, {}), **self.copy_marks.get(name, {})}
                 for name in {*self.copy_marks, *other.copy_marks}}  # fmt: skip
        return Catalogue(self.tools + extra, {**other.sources, **self.sources}, marks)

    # -- typed calls -------------------------------------------------------------------------

    @cached_property
    def _argument_models(self) -> dict[str, type[BaseModel]]:
        return {tool.name: arguments_model(tool) for tool in self.tools}

    def arguments_model(self, name: str) -> type[BaseModel]:
        """The strict Pydantic model generated from the tool's schema."""
        self.get(name)
        return self._argument_models[name]

    def parse(self, text: str) -> ToolCall | NoTool | None:
        """Parse model output into a validated call, a NoTool, or None. Never raises."""
        return parse_tool_call(text, self)
