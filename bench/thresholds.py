"""Picking the rules that hold calls back, on validation rows, and reporting them on other rows.

Two rules, picked in this order on the rows `toolroute eval --pick-threshold` is given (validation
rows: never the rows the numbers are then reported on):

1. **Abstention** (`NoToolThreshold`): hold a call back when no_tool's probability at the decision
   point is at least t, or when the chosen tool's lead over no_tool is below t. Of the two scores
   and every t, the one with the fewest wrong decisions (a call dispatched on a gold no_tool row,
   plus a right call held back), if it makes fewer than no rule at all.
2. **The call threshold** (`CallThreshold`), after abstention: for each call score (the name's
   probability, the call's log-probability, the least token log-probability) the risk-coverage
   curve (for each threshold, the share of rows dispatched as calls, and the share that are
   silent errors: dispatched calls to the wrong tool or with wrong arguments); the score whose
   curve dispatches the most rows at or below the allowed risk wins (ties: the name probability,
   then the call's, then the least token's), with its threshold.

The same functions apply the rules to a report's predictions after the fact (`apply_rules`): a
held-back call counts as not called (the app falls back), exactly as the router would have
answered with the rules stored (the rules change only a result's kind, never its text).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from toolroute.grammars import NO_TOOL, Catalogue
from toolroute.runtime.thresholds import (
    CALL_SCORES,
    NO_TOOL_SCORES,
    CallScore,
    CallThreshold,
    NoToolThreshold,
)

from .metrics import Gold, Prediction, RiskPoint, outcome


class CallChoice(BaseModel):
    """The call score and threshold with the most coverage at or below the allowed risk."""

    rule: CallThreshold | None  # None: no threshold keeps the risk that low
    coverage: float | None
    silent_error_rate: float | None
    by_score: dict[str, RiskPoint | None]  # each score's best point at the allowed risk


class NoToolChoice(BaseModel):
    rule: NoToolThreshold | None  # None: no rule makes fewer wrong decisions than none
    errors: int  # wrong call/no-call decisions with the rule (without: errors_without)
    errors_without: int


class RulesSummary(BaseModel):
    """What the rules do to a set of rows: dispatched share, silent errors, false calls."""

    coverage: float
    silent_error_rate: float
    false_tool_call_rate: float | None
    missed_call_rate: float | None
    held_back: int


def score_of(prediction: Prediction, score: CallScore) -> float | None:
    return {
        "name_probability": prediction.confidence,
        "call_logprob": prediction.call_logprob,
        "min_token_logprob": prediction.min_token_logprob,
    }[score]


def curve(
    golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue, score: CallScore
) -> list[RiskPoint]:
    """Coverage and silent-error rate for each threshold on `score` (calls below it held back)."""
    total = len(golds) or 1
    calls = [
        (score_of(p, score), outcome(g, p, catalogue).silent_error)
        for g, p in zip(golds, predictions, strict=True)
        if p.kind == "call"
    ]
    known = sorted({value for value, _ in calls if value is not None})
    points = []
    for threshold in known or [0.0]:  # the lowest keeps every call
        kept = [silent for value, silent in calls if value is None or value >= threshold]
        points.append(
            RiskPoint(threshold=threshold, coverage=len(kept) / total, silent_error_rate=sum(kept) / total)
        )
    return points


def pick_call_threshold(
    golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue, max_risk: float
) -> CallChoice:
    best: dict[str, RiskPoint | None] = {}
    for score in CALL_SCORES:
        if all(score_of(p, score) is None for p in predictions if p.kind == "call"):
            best[score] = None  # the backend does not report this score
            continue
        safe = [p for p in curve(golds, predictions, catalogue, score) if p.silent_error_rate <= max_risk]
        best[score] = max(safe, key=lambda p: (p.coverage, -p.threshold)) if safe else None
    ranked = [(point.coverage, -CALL_SCORES.index(s), s) for s, point in best.items() if point is not None]
    if not ranked:
        return CallChoice(rule=None, coverage=None, silent_error_rate=None, by_score=best)
    _, _, winner = max(ranked)
    point = best[winner]
    assert point is not None
    return CallChoice(
        rule=CallThreshold(score=winner, value=point.threshold),
        coverage=point.coverage,
        silent_error_rate=point.silent_error_rate,
        by_score=best,
    )


# A dispatched call, as abstention sees it: (tool probability, no_tool's, gold is no_tool, right call).
_Call = tuple[float | None, float | None, bool, bool]


def _calls(golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue) -> list[_Call]:
    return [
        (p.confidence, p.no_tool_probability, g.tool == NO_TOOL, outcome(g, p, catalogue).right_arguments)
        for g, p in zip(golds, predictions, strict=True)
        if p.kind == "call"
    ]


def _wrong_decisions(calls: Sequence[_Call], rule: NoToolThreshold | None) -> int:
    """False calls dispatched plus right calls held back."""
    wrong = 0
    for tool_p, no_tool_p, gold_no_tool, right in calls:
        held = rule is not None and rule.holds_back(tool_p, no_tool_p)
        wrong += (gold_no_tool and not held) or (held and right)
    return wrong


def pick_no_tool_threshold(
    golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue
) -> NoToolChoice:
    calls = _calls(golds, predictions, catalogue)
    without = _wrong_decisions(calls, None)
    best: tuple[int, NoToolThreshold] | None = None
    scored = [(t, n) for t, n, _, _ in calls if t is not None and n is not None]
    for score in NO_TOOL_SCORES:
        if score == "no_tool_probability":
            values = sorted({n for _, n in scored}, reverse=True)
        else:
            values = sorted({t - n for t, n in scored})
        for value in values:  # each observed value: from holding back the fewest calls to the most
            rule = NoToolThreshold(score=score, value=max(-1.0, min(1.0, value)))
            errors = _wrong_decisions(calls, rule)
            if best is None or errors < best[0]:
                best = (errors, rule)
    if best is None or best[0] >= without:
        return NoToolChoice(rule=None, errors=without, errors_without=without)
    return NoToolChoice(rule=best[1], errors=best[0], errors_without=without)


def apply_rules(
    predictions: Sequence[Prediction],
    call_rule: CallThreshold | None = None,
    no_tool_rule: NoToolThreshold | None = None,
    min_confidence: float | None = None,
) -> list[Prediction]:
    """The predictions as the router answers with these rules: a held-back call is not called."""
    out = []
    for p in predictions:
        held = p.kind == "call" and (
            (no_tool_rule is not None and no_tool_rule.holds_back(p.confidence, p.no_tool_probability))
            or (call_rule is not None and call_rule.holds_back({s: score_of(p, s) for s in CALL_SCORES}))
            or (min_confidence is not None and p.confidence is not None and p.confidence < min_confidence)
        )
        out.append(p.model_copy(update={"kind": "no_tool", "held_back": True}) if held else p)
    return out


def summarize(golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue) -> RulesSummary:
    total = len(golds) or 1
    outcomes = [outcome(g, p, catalogue) for g, p in zip(golds, predictions, strict=True)]
    gold_no_tool = [p for g, p in zip(golds, predictions, strict=True) if g.tool == NO_TOOL]
    gold_calls = [p for g, p in zip(golds, predictions, strict=True) if g.tool != NO_TOOL]
    return RulesSummary(
        coverage=sum(p.kind == "call" for p in predictions) / total,
        silent_error_rate=sum(o.silent_error for o in outcomes) / total,
        false_tool_call_rate=(
            sum(p.kind == "call" for p in gold_no_tool) / len(gold_no_tool) if gold_no_tool else None
        ),
        missed_call_rate=sum(p.kind == "no_tool" for p in gold_calls) / len(gold_calls)
        if gold_calls
        else None,
        held_back=sum(p.held_back for p in predictions),
    )
