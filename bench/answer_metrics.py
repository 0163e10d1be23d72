"""Scoring the answer step: is the router's reply to a tool's output faithful, complete and close?

- **Faithfulness**: every fact the answer states (a number, an id, a quoted value) appears in the
  tool's output or the request. Numbers compare by value (`21` is `21.0`, `1,200` is `1200`), ids
  as whole tokens whatever their case (`t-44` is not in `T-4411`), quoted values as text. An answer
  stating one that neither holds has *invented* it: such answers are counted and listed with what
  they invented.
- **Coverage**: the share of the gold answer's ids and numbers that the answer states (rows whose
  gold answer states none are left out of the mean).
- **ROUGE-L**: the F1 of the longest common subsequence of lower-cased words, answer against gold.
  `rouge-score` is not a dependency of this project, and ROUGE-L is a 15-line dynamic programme,
  so it is computed here (no stemming, which `rouge-score` would only apply on request).

A fact is a string of characters the extraction below recognises; words ("three", "Thursday") are
not facts, so a reply that paraphrases a number in words is neither faithful nor unfaithful about it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation

from pydantic import BaseModel

from .metrics import percentile

# An id: letters and digits together (ORD-1234, RF-0042, T-4411, A1B2), joined by - or _.
_ID = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*(?![\w-])")
# A number: digits with thousands commas or a decimal part; no sign (a dash is usually a separator).
_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+(?:\.\d+)?(?![\w])")
# A quoted value: "...", “...”, or '...' standing apart from words (not an apostrophe).
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”|(?<!\w)'([^'\n]{1,200})'(?!\w)")


class Facts(BaseModel):
    ids: list[str]  # as written
    numbers: list[str]  # as written
    quoted: list[str]


def facts(text: str) -> Facts:
    """The ids, numbers and quoted values a text states (numbers inside an id belong to the id)."""
    ids = [match.group(0) for match in _ID.finditer(text)]
    rest = _ID.sub(" ", text)
    numbers = [match.group(0) for match in _NUMBER.finditer(rest)]
    quoted = [next(g for g in match.groups() if g is not None) for match in _QUOTED.finditer(text)]
    return Facts(ids=ids, numbers=numbers, quoted=[q for q in quoted if q.strip()])


def _value(number: str) -> Decimal | None:
    try:
        return Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None


def _numbers_in(text: str) -> set[Decimal]:
    """Every number in a text, ids' digits included (an answer may say "order 1234" for ORD-1234)."""
    found = {_value(m.group(0)) for m in _NUMBER.finditer(text)}
    found |= {_value(m.group(0)) for m in re.finditer(r"\d+(?:\.\d+)?", text)}
    return {value for value in found if value is not None}


def _has_id(identifier: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(identifier)}(?![\w])", text, re.IGNORECASE) is not None


def invented(answer: str, sources: Iterable[str]) -> list[str]:
    """The answer's facts that none of `sources` (the tool output, the request) holds."""
    source = "\n".join(sources)
    stated = facts(answer)
    numbers = _numbers_in(source)
    folded = source.casefold()
    missing = [i for i in stated.ids if not _has_id(i, source)]
    missing += [n for n in stated.numbers if _value(n) not in numbers]
    missing += [q for q in stated.quoted if q.strip().casefold() not in folded]
    return list(dict.fromkeys(missing))


def coverage(answer: str, gold: str) -> float | None:
    """The share of the gold answer's ids and numbers the answer states (None: the gold has none)."""
    wanted = facts(gold)
    if not wanted.ids and not wanted.numbers:
        return None
    numbers = _numbers_in(answer)
    ids = {i.casefold() for i in dict.fromkeys(wanted.ids)}
    values = {v for v in (_value(n) for n in wanted.numbers) if v is not None}
    stated = sum(1 for i in ids if _has_id(i, answer)) + sum(1 for v in values if v in numbers)
    return stated / (len(ids) + len(values))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def rouge_l(answer: str, gold: str) -> float:
    """ROUGE-L F1 over lower-cased words (see the module docstring)."""
    a, b = _words(answer), _words(gold)
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


class AnswerCase(BaseModel):
    """One follow-up: the router's answer beside the gold one."""

    source: str
    request: str
    tool_output: str
    gold: str
    answer: str
    invented: list[str]
    coverage: float | None
    rouge_l: float
    finish_reason: str = "stop"
    latency_ms: float | None = None


class AnswerReport(BaseModel):
    rows: int
    faithful: int
    faithful_rate: float | None
    coverage_rows: int  # rows whose gold answer states an id or a number
    coverage_mean: float | None
    rouge_l_mean: float | None
    cut_at_cap: int  # answers that reached the token cap
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    unfaithful: list[AnswerCase]  # every answer that invented a fact
    least_covered: list[AnswerCase]  # the ten with the lowest coverage below 1


def score_answer(
    answer: str,
    *,
    tool_output: str,
    request: str,
    gold: str,
    source: str = "",
    finish_reason: str = "stop",
    latency_ms: float | None = None,
) -> AnswerCase:
    return AnswerCase(
        source=source,
        request=request,
        tool_output=tool_output,
        gold=gold,
        answer=answer,
        invented=invented(answer, [tool_output, request]),
        coverage=coverage(answer, gold),
        rouge_l=rouge_l(answer, gold),
        finish_reason=finish_reason,
        latency_ms=latency_ms,
    )


def answer_report(cases: Sequence[AnswerCase]) -> AnswerReport:
    faithful = sum(1 for case in cases if not case.invented)
    covered = [case.coverage for case in cases if case.coverage is not None]
    latencies = [case.latency_ms for case in cases if case.latency_ms is not None]
    short = sorted(
        (c for c in cases if c.coverage is not None and c.coverage < 1), key=lambda c: c.coverage or 0
    )
    return AnswerReport(
        rows=len(cases),
        faithful=faithful,
        faithful_rate=faithful / len(cases) if cases else None,
        coverage_rows=len(covered),
        coverage_mean=sum(covered) / len(covered) if covered else None,
        rouge_l_mean=sum(case.rouge_l for case in cases) / len(cases) if cases else None,
        cut_at_cap=sum(1 for case in cases if case.finish_reason == "length"),
        latency_ms_p50=percentile(latencies, 50),
        latency_ms_p95=percentile(latencies, 95),
        unfaithful=[case for case in cases if case.invented],
        least_covered=short[:10],
    )
