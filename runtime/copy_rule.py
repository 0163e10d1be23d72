"""A router's copied arguments at run time: the per-request tracker, and what to do at a dead end.

`Router` owns one `CopyRule` (from the file's `toolroute.copied_arguments`, unless loaded with
`copy_rule=False`). Per request it gives a `CopyTracker` over the request's text (`tracker`);
when decoding reaches a dead end inside a copied argument (no span of this request fits it: a
pattern, a format or a `minLength` no span meets; or, with `min_span_mass`, an optional
argument the model opened while giving the request's spans less probability than that, and with
`min_required_span_mass` the same for a required one),
`fall_back` says how to decode again: an optional argument is left out of that tool's grammar,
a required one takes its tool out of the choice (no_tool stays, unless the caller asked for a
call). Each retry removes something, so a request ends in a call, no_tool or, with no_tool
excluded and nothing left, an invalid result: never a hang. The result lists such arguments in
`no_span`.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolroute.grammars import Catalogue, CopiedArgument, GrammarOptions, catalogue_gbnf
from toolroute.grammars.copied import optional_ancestor, without_arguments

from .copying import CopyTracker, FieldLimits, RequestText, copied_limits

Dropped = frozenset[tuple[str, str]]  # (tool, argument path) left out of a grammar


@dataclass(frozen=True)
class Fallback:
    """What the next decoding may choose: these tools (and no_tool or not), these arguments out."""

    names: tuple[str, ...]
    dropped: Dropped


class CopyRule:
    """The copied arguments of a router and their length limits. Read-only (thread-safe)."""

    def __init__(
        self,
        catalogue: Catalogue,
        copied: tuple[CopiedArgument, ...],
        options: GrammarOptions,
        min_span_mass: float = 0.0,
        min_required_span_mass: float = 0.0,
    ) -> None:
        self.catalogue = catalogue
        self.copied = copied
        self.options = options
        self.min_span_mass = min_span_mass
        self.min_required_span_mass = min_required_span_mass
        self.limits: dict[str, dict[str, FieldLimits]] = copied_limits(
            catalogue.tools, copied, options.max_string_length
        )
        # The copied arguments a call may leave out (an optional one, or one under an optional
        # object): those the tracker may give up on (`CopyTracker.gives_up`).
        self.optional: dict[str, frozenset[str]] = {
            tool: frozenset(path for path in paths if optional_ancestor(catalogue.get(tool), path))
            for tool, paths in self.limits.items()
        }

    def tracker(self, request: str) -> CopyTracker | None:
        """A tracker for one request's output; None when no tool has a copied argument."""
        if not self.limits:
            return None
        return CopyTracker(
            RequestText(request), self.limits, self.optional, self.min_span_mass, self.min_required_span_mass
        )

    def fall_back(self, names: tuple[str, ...], dropped: Dropped, tool: str, argument: str) -> Fallback:
        """After a dead end in `tool`'s copied `argument`: leave it (or its optional ancestor) out,
        or, when it is required all the way down, leave the tool out."""
        spec = self.catalogue.get(tool)
        optional = optional_ancestor(spec, argument)
        if optional is not None and (tool, optional) not in dropped:
            return Fallback(names, dropped | {(tool, optional)})
        return Fallback(tuple(name for name in names if name != tool), dropped)

    def gbnf(self, fallback: Fallback, no_tool: bool) -> str:
        """The grammar of a fallback: the catalogue's, narrowed and with arguments left out."""
        if not fallback.names:
            return catalogue_gbnf(self.catalogue, self.options, calls=False, no_tool=no_tool)
        tools = []
        for name in fallback.names:
            spec = self.catalogue.get(name)
            paths = [argument for tool, argument in fallback.dropped if tool == name]
            tools.append(without_arguments(spec, paths) if paths else spec)
        return catalogue_gbnf(Catalogue(tuple(tools)), self.options, no_tool=no_tool)
