"""Which string arguments a training run marks copied, and why: declared, forced, or inferred.

Inferred on the rows as given (before any augmentation): an argument is copied when at least
`copy_share` (default 95%) of its training values are spans of their own request
(`toolroute.grammars.spans.is_span`), over at least `MIN_VALUES` values. The config's
`copy_arguments` forces an argument on or off (`track_order.order_id=on`); a catalogue's
`x-toolroute-copy` mark decides when the config does not (`false` keeps an argument from being
inferred). Closed-vocabulary strings (`enum`, `const`) are never inferred: their values are
labels, not words of the request. Every string argument's decision goes into the run manifest
with its share; the copied ones go into the router file (`toolroute.copied_arguments`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from toolroute.grammars import Catalogue, CopiedArgument, is_span
from toolroute.grammars.copied import CopySource, string_arguments

from .examples import Example

DEFAULT_SHARE = 0.95
MIN_VALUES = 5  # fewer training values than this say too little to infer from
_ON = {
    "on": True,
    "true": True,
    "yes": True,
    "1": True,
    "off": False,
    "false": False,
    "no": False,
    "0": False,
}


class CopyDecision(BaseModel):
    """One string argument of the run's catalogue: copied or not, why, and what the data said."""

    model_config = ConfigDict(frozen=True)

    tool: str
    argument: str
    copied: bool
    source: CopySource | None  # None: not copied and nobody said so (too few values, low share)
    share: float | None  # training values that are spans of their request (None: no values)
    values: int

    def as_copied(self) -> CopiedArgument:
        return CopiedArgument(
            tool=self.tool,
            argument=self.argument,
            source=self.source or "inferred",
            share=self.share,
            values=self.values,
        )


def parse_overrides(entries: Iterable[str] | None, catalogue: Catalogue) -> dict[tuple[str, str], bool]:
    """`tool.argument=on|off` entries as {(tool, argument): copied}; a ValueError names a bad one."""
    overrides: dict[tuple[str, str], bool] = {}
    known = {(tool.name, path) for tool in catalogue for path in string_arguments(tool)}
    for entry in entries or ():
        key, _, value = entry.partition("=")
        tool, _, argument = key.strip().partition(".")
        setting = _ON.get(value.strip().lower())
        if setting is None or not argument:
            raise ValueError(f"copy_arguments: {entry!r} is not tool.argument=on|off")
        if (tool, argument) not in known:
            raise ValueError(
                f"copy_arguments: {entry!r}: tool '{tool}' has no string argument '{argument}' "
                "(only string arguments can be copied)"
            )
        overrides[(tool, argument)] = setting
    return overrides


def value_at(arguments: dict[str, Any] | None, path: str) -> Any:
    """The value at a dotted argument path (`a.b`), or None where there is none."""
    node: Any = arguments or {}
    for name in path.split("."):
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
    return node


def decide_copied(
    examples: Sequence[Example],
    catalogue: Catalogue,
    share: float = DEFAULT_SHARE,
    overrides: dict[tuple[str, str], bool] | None = None,
) -> list[CopyDecision]:
    """Every string argument of the catalogue, decided on the rows as given."""
    overrides = overrides or {}
    decisions = []
    for tool in catalogue:
        declared = catalogue.copy_marks.get(tool.name, {})
        rows = [example for example in examples if example.target.tool == tool.name]
        for path, schema in string_arguments(tool).items():
            values = [
                (v, e.request) for e in rows if isinstance(v := value_at(e.target.arguments, path), str)
            ]
            spans = sum(is_span(value, request) for value, request in values)
            measured = spans / len(values) if values else None
            source: CopySource | None
            if (tool.name, path) in overrides:
                copied, source = overrides[(tool.name, path)], "config"
            elif path in declared:
                copied, source = declared[path], "declared"
            else:
                labels = "enum" in schema or "const" in schema
                copied = (
                    not labels and len(values) >= MIN_VALUES and measured is not None and measured >= share
                )
                source = "inferred" if copied else None
            decisions.append(
                CopyDecision(
                    tool=tool.name,
                    argument=path,
                    copied=copied,
                    source=source,
                    share=measured,
                    values=len(values),
                )
            )
    return decisions


def copied_arguments(decisions: Iterable[CopyDecision]) -> tuple[CopiedArgument, ...]:
    """The copied arguments of a run, as the router file lists them."""
    return tuple(decision.as_copied() for decision in decisions if decision.copied)


def describe(decisions: Iterable[CopyDecision]) -> list[str]:
    """One line per string argument, for the training log."""
    lines = []
    for d in decisions:
        share = "no values" if d.share is None else f"{d.share:.1%} of {d.values} values are spans"
        verdict = (
            f"copied ({d.source})" if d.copied else ("not copied" + (f" ({d.source})" if d.source else ""))
        )
        lines.append(f"{d.tool}.{d.argument}: {verdict}; {share}")
    return lines
