"""The one validated example type every training-data format is read into."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from toolroute.grammars import NO_TOOL, Catalogue, serialize_call, serialize_no_tool
from toolroute.runtime.chat_template import Turn


class Target(BaseModel):
    """What the router should answer: a call with arguments, or no_tool with a reason."""

    model_config = ConfigDict(frozen=True)

    tool: str
    arguments: dict[str, Any] | None = None
    reason: str | None = None

    @property
    def is_no_tool(self) -> bool:
        return self.tool == NO_TOOL

    def canonical(self, catalogue: Catalogue) -> str:
        if self.is_no_tool:
            return serialize_no_tool(self.reason or "")
        return serialize_call(catalogue, self.tool, self.arguments or {})


class Answer(BaseModel):
    """The answer step of a row: the tool's output after the call, and the assistant's reply to it."""

    model_config = ConfigDict(frozen=True)

    tool_output: str
    text: str


class Example(BaseModel):
    """One routed request, wherever it came from.

    `history` holds the turns before the routed user turn (multi-turn context); `followup` keeps
    the turns after the call (tool results and the assistant's answer), unchanged; `answer` is
    the answer step read from them (the call's tool output and the assistant's reply), which
    training learns beside the call; `system` is the system message as the file had it (the prompt used
    for training is re-rendered from the catalogue in the run's prompt mode).
    """

    model_config = ConfigDict(frozen=True)

    request: str
    target: Target
    history: tuple[Turn, ...] = ()
    followup: tuple[dict[str, Any], ...] = ()
    answer: Answer | None = None
    system: str | None = None
    source: str  # "file:line"


def normalize_request(text: str) -> str:
    """Case- and whitespace-insensitive form, for duplicate and overlap checks."""
    return re.sub(r"\s+", " ", text).strip().casefold()
