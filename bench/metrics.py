"""The evaluation numbers, as the lesson defines them, computed from gold targets and predictions.

Pure functions over plain data, so the same code scores a GGUF through the runtime, a merged HF
model through transformers, or free generation parsed after the fact.

- valid-tool-call rate: outputs that parse, name a catalogue tool or no_tool, and whose arguments
  pass that tool's schema (over all examples);
- tool-name accuracy: the predicted tool (no_tool included) is the gold one (over all examples;
  an invalid output is wrong);
- argument-match accuracy on valid calls: of the valid calls to the gold tool, those whose
  arguments equal the gold arguments (defaults spelled out or left out count the same);
- false-tool-call rate: of the gold no_tool examples, those where a tool was called;
- missed-call rate: of the gold tool examples, those answered with no_tool;
- silent-error rate: valid calls to the wrong tool or with wrong arguments, over all examples (the
  failure nothing downstream can detect);
- exact-call accuracy, slot precision/recall/F1 over (tool, argument, value) triples, a confusion
  matrix, per-argument accuracy, latency percentiles and prompt tokens per request.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from toolroute.grammars import NO_TOOL, Catalogue

INVALID = "(invalid)"


class Gold(BaseModel):
    request: str
    tool: str
    arguments: dict[str, Any] | None = None


class Prediction(BaseModel):
    kind: Literal["call", "no_tool", "invalid"]
    tool: str | None = None  # the tool called (kind "call"); None otherwise
    arguments: dict[str, Any] | None = None
    raw: str = ""
    confidence: float | None = None  # the name's probability at the decision point
    call_logprob: float | None = None  # the call-level scores (runtime.thresholds)
    min_token_logprob: float | None = None
    no_tool_probability: float | None = None  # no_tool's probability at the decision point
    held_back: bool = False  # a call a stored rule held back (then kind "no_tool": not called)
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def label(self) -> str:
        return {"call": self.tool or INVALID, "no_tool": NO_TOOL}.get(self.kind, INVALID)


class RiskPoint(BaseModel):
    threshold: float
    coverage: float  # share of examples on which a call is dispatched
    silent_error_rate: float


class EvalReport(BaseModel):
    examples: int
    valid_tool_call_rate: float
    tool_name_accuracy: float
    argument_match_accuracy: float | None
    false_tool_call_rate: float | None
    missed_call_rate: float | None
    silent_error_rate: float
    exact_call_accuracy: float
    slot_precision: float | None
    slot_recall: float | None
    slot_f1: float | None
    confusion: dict[str, dict[str, int]]  # gold tool -> predicted label -> count
    per_argument_accuracy: dict[str, float]  # "tool.argument" -> accuracy
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    prompt_tokens_mean: float | None
    risk_coverage: list[RiskPoint]
    threshold_for_1pct: float | None  # lowest-risk-keeping threshold with the most coverage


def normalize_arguments(arguments: dict[str, Any] | None, tool: str, catalogue: Catalogue) -> dict[str, Any]:
    """Arguments with absent optionals and explicit defaults made the same: both left out."""
    if not arguments:
        return {}
    properties = catalogue.get(tool).properties if tool in catalogue else {}
    return {
        key: value
        for key, value in arguments.items()
        if value is not None
        and not ("default" in properties.get(key, {}) and properties[key]["default"] == value)
    }


def _value_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


class Outcome(BaseModel):
    valid: bool
    right_tool: bool
    right_arguments: bool  # only meaningful for a valid call to the gold tool
    silent_error: bool
    exact: bool


def outcome(gold: Gold, prediction: Prediction, catalogue: Catalogue) -> Outcome:
    valid = prediction.kind != "invalid"
    right_tool = valid and prediction.label == gold.tool
    right_arguments = (
        right_tool
        and gold.tool != NO_TOOL
        and normalize_arguments(prediction.arguments, gold.tool, catalogue)
        == normalize_arguments(gold.arguments, gold.tool, catalogue)
    )
    called = prediction.kind == "call"
    silent = called and not (right_tool and right_arguments)
    exact = (right_tool and gold.tool == NO_TOOL) or right_arguments
    return Outcome(
        valid=valid, right_tool=right_tool, right_arguments=right_arguments, silent_error=silent, exact=exact
    )


def risk_coverage(
    golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue, max_risk: float = 0.01
) -> tuple[list[RiskPoint], float | None]:
    """Silent-error rate and coverage when calls below a confidence threshold become no_tool."""
    outcomes = [outcome(g, p, catalogue) for g, p in zip(golds, predictions, strict=True)]
    confidences = sorted({p.confidence for p in predictions if p.kind == "call" and p.confidence is not None})
    thresholds = [0.0, *confidences]
    points = []
    total = len(golds) or 1
    for threshold in thresholds:
        kept = [
            o for o, p in zip(outcomes, predictions, strict=True)
            if p.kind == "call" and (p.confidence is None or p.confidence >= threshold)
        ]  # fmt: skip
        points.append(
            RiskPoint(
                threshold=threshold,  # exact: a rounded-up threshold would hold back the call it keeps
                coverage=len(kept) / total,
                silent_error_rate=sum(o.silent_error for o in kept) / total,
            )
        )
    safe = [p for p in points if p.silent_error_rate <= max_risk]
    best = max(safe, key=lambda p: (p.coverage, -p.threshold)) if safe else None
    return points, best.threshold if best else None


def evaluate_predictions(
    golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue
) -> EvalReport:
    if len(golds) != len(predictions):
        raise ValueError(f"{len(golds)} gold examples but {len(predictions)} predictions")
    outcomes = [outcome(g, p, catalogue) for g, p in zip(golds, predictions, strict=True)]
    n = len(golds)
    gold_no_tool = [i for i, g in enumerate(golds) if g.tool == NO_TOOL]
    gold_calls = [i for i, g in enumerate(golds) if g.tool != NO_TOOL]
    to_gold_tool = [i for i in gold_calls if outcomes[i].right_tool]

    gold_triples: Counter[tuple[str, str, str]] = Counter()
    predicted_triples: Counter[tuple[str, str, str]] = Counter()
    argument_hits: dict[str, list[bool]] = defaultdict(list)
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for gold, prediction, scored in zip(golds, predictions, outcomes, strict=True):
        confusion[gold.tool][prediction.label] += 1
        gold_args = normalize_arguments(gold.arguments, gold.tool, catalogue)
        gold_triples.update((gold.tool, k, _value_key(v)) for k, v in gold_args.items())
        if prediction.kind == "call" and prediction.tool:
            predicted_args = normalize_arguments(prediction.arguments, prediction.tool, catalogue)
            predicted_triples.update((prediction.tool, k, _value_key(v)) for k, v in predicted_args.items())
        if scored.right_tool and gold.tool != NO_TOOL:
            predicted_args = normalize_arguments(prediction.arguments, gold.tool, catalogue)
            for key, value in gold_args.items():
                argument_hits[f"{gold.tool}.{key}"].append(
                    key in predicted_args and _value_key(predicted_args[key]) == _value_key(value)
                )
    true_positive = sum((gold_triples & predicted_triples).values())
    precision = _ratio(true_positive, sum(predicted_triples.values()))
    recall = _ratio(true_positive, sum(gold_triples.values()))
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    latencies = [p.latency_ms for p in predictions if p.latency_ms is not None]
    prompt_tokens = [p.prompt_tokens for p in predictions if p.prompt_tokens is not None]
    points, threshold = risk_coverage(golds, predictions, catalogue)
    return EvalReport(
        examples=n,
        valid_tool_call_rate=sum(o.valid for o in outcomes) / n if n else 0.0,
        tool_name_accuracy=sum(o.right_tool for o in outcomes) / n if n else 0.0,
        argument_match_accuracy=_ratio(
            sum(outcomes[i].right_arguments for i in to_gold_tool), len(to_gold_tool)
        ),
        false_tool_call_rate=_ratio(
            sum(predictions[i].kind == "call" for i in gold_no_tool), len(gold_no_tool)
        ),
        missed_call_rate=_ratio(sum(predictions[i].kind == "no_tool" for i in gold_calls), len(gold_calls)),
        silent_error_rate=sum(o.silent_error for o in outcomes) / n if n else 0.0,
        exact_call_accuracy=sum(o.exact for o in outcomes) / n if n else 0.0,
        slot_precision=precision,
        slot_recall=recall,
        slot_f1=f1,
        confusion={gold: dict(row) for gold, row in confusion.items()},
        per_argument_accuracy={key: sum(hits) / len(hits) for key, hits in sorted(argument_hits.items())},
        latency_ms_p50=percentile(latencies, 50),
        latency_ms_p95=percentile(latencies, 95),
        prompt_tokens_mean=sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None,
        risk_coverage=points,
        threshold_for_1pct=threshold,
    )
