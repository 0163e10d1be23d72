"""Which string arguments a training run marks copied, and why: declared, forced, or inferred.

Inferred on the rows as given (before any augmentation): an argument is copied when at least
`copy_share` (default 95%) of its training values are spans of their own request
(`toolroute.grammars.spans.is_span`), over at least `MIN_VALUES` values. With fewer values of its
own (small data: 10 rows per intent leave 121 of HWU64's 391 string arguments 1 to 4 values each),
an argument whose values are all spans is copied when the catalogue says the same at large: the
values of every unlabelled string argument nobody declared or forced, pooled, are spans in at
least `copy_share` of at least `MIN_VALUES` values (`pooled` in the decision). The config's
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
    # Inferred from fewer than MIN_VALUES values of its own, backed by the catalogue's pooled share.
    pooled: bool = False

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
    pool: bool = True,
) -> list[CopyDecision]:
    """Every string argument of the catalogue, decided on the rows as given. `pool`: an argument
    with 1 to MIN_VALUES - 1 values, all spans, is copied where the catalogue's pooled values are."""
    overrides = overrides or {}
    measured: list[tuple[str, str, dict[str, Any], list[bool]]] = []
    for tool in catalogue:
        rows = [example for example in examples if example.target.tool == tool.name]
        for path, schema in string_arguments(tool).items():
            values = [
                (v, e.request) for e in rows if isinstance(v := value_at(e.target.arguments, path), str)
            ]
            measured.append((tool.name, path, schema, [is_span(value, request) for value, request in values]))
    undecided = [
        spans
        for tool, path, schema, spans in measured
        if (tool, path) not in overrides
        and path not in catalogue.copy_marks.get(tool, {})
        and not _labels(schema)
    ]
    pooled_values = sum(len(spans) for spans in undecided)
    pool_holds = (
        pool
        and pooled_values >= MIN_VALUES
        and sum(sum(spans) for spans in undecided) >= share * pooled_values
    )
    decisions = []
    for tool, path, schema, spans in measured:
        declared = catalogue.copy_marks.get(tool, {})
        own = sum(spans) / len(spans) if spans else None
        source: CopySource | None
        backed = False
        if (tool, path) in overrides:
            copied, source = overrides[(tool, path)], "config"
        elif path in declared:
            copied, source = declared[path], "declared"
        else:
            enough = len(spans) >= MIN_VALUES
            backed = not enough and pool_holds and all(spans)
            copied = not _labels(schema) and own is not None and own >= share and (enough or backed)
            source = "inferred" if copied else None
        decisions.append(
            CopyDecision(
                tool=tool,
                argument=path,
                copied=copied,
                source=source,
                share=own,
                values=len(spans),
                pooled=copied and backed,
            )
        )
    return decisions


def _labels(schema: dict[str, Any]) -> bool:
    """Closed-vocabulary strings: their values are labels, not words of the request."""
    return "enum" in schema or "const" in schema


def copied_arguments(decisions: Iterable[CopyDecision]) -> tuple[CopiedArgument, ...]:
    """The copied arguments of a run, as the router file lists them."""
    return tuple(decision.as_copied() for decision in decisions if decision.copied)


def describe(decisions: Iterable[CopyDecision]) -> list[str]:
    """One line per string argument, for the training log."""
    lines = []
    for d in decisions:
        share = "no values" if d.share is None else f"{d.share:.1%} of {d.values} values are spans"
        verdict = (
            f"copied ({d.source}{', few values: the catalogue pooled' if d.pooled else ''})"
            if d.copied
            else ("not copied" + (f" ({d.source})" if d.source else ""))
        )
        lines.append(f"{d.tool}.{d.argument}: {verdict}; {share}")
    return lines
