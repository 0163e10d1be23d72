"""Small-data augmentation: new training rows by swapping in other values of the same argument.

Where a call's string argument is a span of its request (`toolroute.grammars.spans.is_span`, the
copied-arguments predicate), another value seen for the same tool's argument in the *training*
rows replaces it in the request text and in the call's arguments together, so "where is order
ORD-1234?" with `{"order_id":"ORD-1234"}` also teaches "where is order ORD-5521?" with
`{"order_id":"ORD-5521"}`. Eval rows never lend values. The rules, each for a reason:

- closed-vocabulary strings (`enum`, `const`) are labels, not words of the request: never swapped;
- a value is swapped only where it occurs exactly once in the request (otherwise which occurrence
  the call meant is a guess) and does not overlap another swapped value;
- every value that was a span of the old request must be a span of the new one, and the new
  arguments must pass the tool's schema, else the variant is dropped;
- a new request never equals, up to case and whitespace, a training request, another new one or an
  eval request (`check.RequestIndex`, the overlap `data check --eval` reports);
- the turns after the call (a tool's result, the answer) quote the old values, so a new row keeps
  none of them; the history and system message are kept as they were.

Seeded (`random.Random(seed)`: the same input, seed and caps give the same rows), capped per
source row (`per_row`) and in total (`cap`: a seeded sample of the variants, in source order), and
counted (rows in, rows added, per argument, what was skipped and why).
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from toolroute.grammars import Catalogue, is_span
from toolroute.grammars.copied import string_arguments

from .check import RequestIndex
from .copied import value_at
from .examples import Example, Target

ATTEMPTS_PER_ROW = 8  # random draws per wanted variant before a row is taken as exhausted


class AugmentCounts(BaseModel):
    rows_in: int
    rows_added: int
    source_rows: int  # rows that gave at least one new row
    per_argument: dict[str, int]  # "tool.argument": new rows with that argument's value swapped
    skipped_eval_overlap: int  # variants dropped because an eval request equals them
    skipped_duplicate: int  # variants equal to a training request or an earlier variant
    skipped_by_cap: int
    per_row: int
    cap: int | None
    seed: int


@dataclass(frozen=True)
class Augmentation:
    added: list[Example]
    counts: AugmentCounts


@dataclass(frozen=True)
class _Swap:
    path: str
    start: int
    old: str


def value_pools(examples: Sequence[Example], catalogue: Catalogue) -> dict[tuple[str, str], list[str]]:
    """Per (tool, argument path): the distinct values that are spans of their own request, sorted."""
    pools: dict[tuple[str, str], set[str]] = {}
    for tool in catalogue:
        paths = [
            p
            for p, schema in string_arguments(tool).items()
            if "enum" not in schema and "const" not in schema
        ]
        for example in examples:
            if example.target.tool != tool.name:
                continue
            for path in paths:
                value = value_at(example.target.arguments, path)
                if isinstance(value, str) and is_span(value, example.request):
                    pools.setdefault((tool.name, path), set()).add(value)
    return {key: sorted(values) for key, values in pools.items()}


def _swaps(example: Example, pools: dict[tuple[str, str], list[str]]) -> list[_Swap]:
    """The arguments of a row that can be swapped: a span found once, with other values to take,
    not overlapping an earlier one."""
    found = []
    for (tool, path), pool in pools.items():
        value = value_at(example.target.arguments, path)
        if tool != example.target.tool or not isinstance(value, str) or not is_span(value, example.request):
            continue
        start = example.request.find(value)
        if start != example.request.rfind(value) or pool == [value]:
            continue
        found.append(_Swap(path, start, value))
    kept: list[_Swap] = []
    for swap in sorted(found, key=lambda s: (s.start, s.path)):
        if not kept or swap.start >= kept[-1].start + len(kept[-1].old):
            kept.append(swap)
    return kept


def _set_at(arguments: dict[str, Any], path: str, value: str) -> None:
    *owners, name = path.split(".")
    node = arguments
    for owner in owners:
        node = node[owner]
    node[name] = value


def _variant(
    example: Example, swaps: list[_Swap], values: tuple[str, ...], catalogue: Catalogue, source: str
) -> Example | None:
    """The row with each swap's value replaced, or None where a rule above is broken."""
    request = example.request
    for swap, value in sorted(zip(swaps, values, strict=True), key=lambda pair: -pair[0].start):
        request = request[: swap.start] + value + request[swap.start + len(swap.old) :]
    arguments = copy.deepcopy(example.target.arguments or {})
    for swap, value in zip(swaps, values, strict=True):
        _set_at(arguments, swap.path, value)
    tool = catalogue.get(example.target.tool)
    for path in string_arguments(tool):
        before, after = value_at(example.target.arguments, path), value_at(arguments, path)
        if isinstance(before, str) and is_span(before, example.request) and not is_span(after, request):
            return None
    try:
        catalogue.arguments_model(tool.name).model_validate_json(json.dumps(arguments))
    except ValidationError:
        return None
    # Built anew, not copied: the turns after the call (followup, answer) quote the old values.
    return Example(
        request=request,
        target=Target(tool=tool.name, arguments=arguments),
        history=example.history,
        system=example.system,
        source=source,
    )


def augment_examples(
    examples: Sequence[Example],
    catalogue: Catalogue,
    per_row: int,
    cap: int | None = None,
    seed: int = 13,
    eval_examples: Sequence[Example] = (),
) -> Augmentation:
    """Up to `per_row` new rows per training row (at most `cap` in all), never an eval request."""
    if per_row < 1:
        raise ValueError(f"augment: per_row must be at least 1, got {per_row}")
    if cap is not None and cap < 0:
        raise ValueError(f"augment: cap must be 0 or more, got {cap}")
    rng = random.Random(seed)
    pools = value_pools(examples, catalogue)
    held_out, seen = RequestIndex(eval_examples), RequestIndex(examples)
    variants: list[tuple[Example, tuple[str, ...], int]] = []  # row, arguments swapped, source index
    skipped = Counter[str]()
    for index, example in enumerate(examples):
        swaps = _swaps(example, pools) if not example.target.is_no_tool else []
        if not swaps:
            continue
        choices = [[v for v in pools[(example.target.tool, s.path)] if v != s.old] for s in swaps]
        tried: set[tuple[str, ...]] = set()
        made = 0
        for _ in range(per_row * ATTEMPTS_PER_ROW):
            if made == per_row:
                break
            values = tuple(rng.choice(options) for options in choices)
            if values in tried:
                continue
            tried.add(values)
            source = f"{example.source} (augmented {made + 1})"
            variant = _variant(example, swaps, values, catalogue, source)
            if variant is None:
                continue
            if variant.request in held_out:
                skipped["eval"] += 1
                continue
            if variant.request in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(variant.request)
            made += 1
            names = tuple(f"{example.target.tool}.{s.path}" for s in swaps)
            variants.append((variant, names, index))
    keep = range(len(variants))
    if cap is not None and len(variants) > cap:
        keep = sorted(rng.sample(range(len(variants)), cap))
    kept = [variants[i] for i in keep]
    per_argument = Counter(name for _, names, _ in kept for name in names)
    counts = AugmentCounts(
        rows_in=len(examples),
        rows_added=len(kept),
        source_rows=len({index for _, _, index in kept}),
        per_argument=dict(sorted(per_argument.items())),
        skipped_eval_overlap=skipped["eval"],
        skipped_duplicate=skipped["duplicate"],
        skipped_by_cap=len(variants) - len(kept),
        per_row=per_row,
        cap=cap,
        seed=seed,
    )
    return Augmentation(added=[row for row, _, _ in kept], counts=counts)


def format_counts(counts: AugmentCounts) -> str:
    arguments = ", ".join(f"{name} {n}" for name, n in counts.per_argument.items()) or "none"
    return (
        f"augment: {counts.rows_in} rows in, {counts.rows_added} added from {counts.source_rows} rows "
        f"(per argument: {arguments}); skipped: {counts.skipped_eval_overlap} equal to eval requests, "
        f"{counts.skipped_duplicate} duplicates, {counts.skipped_by_cap} over the cap"
    )


def router_line(example: Example, catalogue: Catalogue, with_tools: bool) -> str:
    """One row in the router format (`data check` reads it back), with the catalogue when the
    file's rows carried their own `tools` rather than a `--tools` catalogue."""
    messages: list[dict[str, str]] = []
    if example.system is not None:
        messages.append({"role": "system", "content": example.system})
    messages += [{"role": turn.role, "content": turn.content} for turn in example.history]
    messages += [
        {"role": "user", "content": example.request},
        {"role": "assistant", "content": example.target.canonical(catalogue)},
    ]
    row: dict[str, Any] = {"messages": messages}
    if with_tools:
        row["tools"] = catalogue.to_openai()
    return json.dumps(row, ensure_ascii=False)
