"""`toolroute data check`: is this training set usable, and what does it hold?"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from toolroute.grammars import NO_TOOL, Catalogue

from .examples import Example, normalize_request
from .formats import ReadResult, read_examples

MIN_EXAMPLES = 10  # Azure OpenAI's minimum for a fine-tuning file
NO_TOOL_ADVICE = (0.10, 0.20)  # the lesson: enough refusals to learn them, not so many it refuses by habit


class Overlap(BaseModel):
    eval_file: str
    eval_examples: int
    exact: int
    normalized: int
    samples: list[str]


class CheckReport(BaseModel):
    file: str
    formats: dict[str, int]
    examples: int
    per_tool: dict[str, int]
    no_tool_share: float
    # Rows with an answer step (a tool result and the assistant's reply): training learns those replies.
    answers: int = 0
    duplicates: int
    conflicting_duplicates: int
    overlap: Overlap | None = None
    errors: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors


def _duplicates(examples: list[Example]) -> tuple[int, int]:
    """Requests seen more than once (normalised), and those among them labelled differently."""
    by_request: dict[str, set[str]] = {}
    counts = Counter(normalize_request(e.request) for e in examples)
    for example in examples:
        key = normalize_request(example.request)
        by_request.setdefault(key, set()).add(example.target.model_dump_json())
    duplicates = sum(count - 1 for count in counts.values())
    conflicting = sum(1 for labels in by_request.values() if len(labels) > 1)
    return duplicates, conflicting


class RequestIndex:
    """Requests up to case and whitespace (`normalize_request`): the overlap `data check --eval`
    reports, and what augmentation checks every new request against (never an eval request)."""

    def __init__(self, examples: Iterable[Example] = ()) -> None:
        self._keys = {normalize_request(example.request) for example in examples}

    def __contains__(self, request: str) -> bool:
        return normalize_request(request) in self._keys

    def add(self, request: str) -> None:
        self._keys.add(normalize_request(request))


def _overlap(train: list[Example], evaluation: ReadResult) -> Overlap:
    exact_train = {e.request for e in train}
    normalized_train = RequestIndex(train)
    exact = [e for e in evaluation.examples if e.request in exact_train]
    normalized = [e for e in evaluation.examples if e.request in normalized_train]
    return Overlap(
        eval_file=str(evaluation.path),
        eval_examples=len(evaluation.examples),
        exact=len(exact),
        normalized=len(normalized),
        samples=[f"{e.source}: {e.request!r}" for e in normalized[:5]],
    )


def check_data(
    path: str | Path,
    catalogue: Catalogue | None = None,
    eval_path: str | Path | None = None,
    union_tools: bool = False,
) -> CheckReport:
    result = read_examples(path, catalogue, union_tools)
    errors = [str(e) for e in result.errors]
    warnings: list[str] = []
    examples = result.examples
    per_tool: dict[str, int] = {}
    if result.catalogue is not None:
        per_tool = {name: 0 for name in [*result.catalogue.names, NO_TOOL]}
    for example in examples:
        per_tool[example.target.tool] = per_tool.get(example.target.tool, 0) + 1
    total = len(examples)
    if total < MIN_EXAMPLES:
        errors.append(f"{path}: {total} valid examples; at least {MIN_EXAMPLES} are needed")
    share = per_tool.get(NO_TOOL, 0) / total if total else 0.0
    low, high = NO_TOOL_ADVICE
    if total and not low <= share <= high:
        warnings.append(
            f"no_tool is {share:.0%} of the examples; {low:.0%}-{high:.0%} teaches the router to refuse "
            "out-of-scope and underspecified requests without refusing by habit"
        )
    if unused := [name for name, count in per_tool.items() if count == 0 and name != NO_TOOL]:
        warnings.append(f"tools with no example: {', '.join(unused)}")
    duplicates, conflicting = _duplicates(examples)
    if duplicates:
        warnings.append(f"{duplicates} duplicate requests (case and whitespace ignored)")
    if conflicting:
        warnings.append(f"{conflicting} requests appear with different answers")
    overlap = None
    if eval_path is not None:
        evaluation = read_examples(eval_path, result.catalogue, union_tools)
        errors += [str(e) for e in evaluation.errors]
        overlap = _overlap(examples, evaluation)
        if overlap.normalized:
            warnings.append(
                f"{overlap.normalized} eval requests also occur in the training data "
                f"({overlap.exact} verbatim): the eval overstates accuracy"
            )
    return CheckReport(
        file=str(path),
        formats=result.formats,
        examples=total,
        per_tool=per_tool,
        no_tool_share=round(share, 4),
        answers=sum(1 for example in examples if example.answer is not None),
        duplicates=duplicates,
        conflicting_duplicates=conflicting,
        overlap=overlap,
        errors=errors,
        warnings=warnings,
    )


def format_report(report: CheckReport) -> str:
    formats = ", ".join(f"{kind} {count}" for kind, count in report.formats.items())
    lines = [f"{report.file}: {report.examples} examples ({formats})"]
    width = max((len(name) for name in report.per_tool), default=4)
    for name, count in report.per_tool.items():
        share = count / report.examples if report.examples else 0.0
        lines.append(f"  {name:<{width}}  {count:>6}  {share:6.1%}")
    if report.answers:
        lines.append(
            f"answers: {report.answers} rows carry a tool result and the reply to it (the answer step)"
        )
    else:
        lines.append("answers: none (no row has a tool result and a reply after the call: routing only)")
    if report.overlap:
        o = report.overlap
        lines.append(f"eval {o.eval_file}: {o.eval_examples} examples")
        lines.append(f"  overlap with train: {o.exact} exact, {o.normalized} case/whitespace-normalised")
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.errors]
    lines.append("OK" if report.ok else f"FAILED: {len(report.errors)} errors")
    return "\n".join(lines)
