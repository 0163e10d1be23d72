"""An evaluation's outputs: the JSON document (stable keys) and the Markdown report.

The JSON is what scripts and the benchmark read; the Markdown is what a person reads: the four
numbers first, then the rest, the confusion matrix, per-argument accuracy, the risk-coverage
choice and the worst errors (confidently wrong calls first: nothing downstream catches them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from toolroute.grammars import NO_TOOL, Catalogue
from toolroute.runtime.files import atomic_write_png
from toolroute.runtime.thresholds import CallThreshold, NoToolThreshold

from .answer_metrics import AnswerReport
from .metrics import INVALID, EvalReport, Gold, Prediction, RiskPoint, outcome
from .thresholds import CallChoice, NoToolChoice, RulesSummary

EVAL_FORMAT = "toolroute-eval/1"
MAX_RISK = 0.01
WORST_ERRORS = 10

# Worst first: a confident wrong call, a false call, a call with wrong arguments, then the
# failures an app can see (invalid output, no_tool where a tool was wanted).
SEVERITY = {"wrong tool": 0, "false call": 1, "wrong arguments": 2, "invalid": 3, "missed call": 4}


class ModelInfo(BaseModel):
    path: str
    kind: str  # "gguf" or "run"
    backend: str  # what produced the outputs, e.g. "llama.cpp runtime (GBNF)"
    constrained: bool
    catalogue_sha256: str
    sha256: str | None = None  # the GGUF's; a run is identified by its manifest
    prompt_mode: str | None = None
    copied_arguments: list[str] | None = None  # held to request spans while scoring (None: n/a)
    # The router's decoding cut-offs the outputs were made with (min_span_mass,
    # min_required_span_mass, min_key_probability), so a report says which defaults it ran under.
    cut_offs: dict[str, float] | None = None
    # Whether the names' probabilities were read with name focus (the runtime's default; None: n/a).
    name_focus: bool | None = None


class DataInfo(BaseModel):
    path: str
    sha256: str
    examples: int


class ThresholdChoice(BaseModel):
    max_silent_error_rate: float
    threshold: float | None  # None: no threshold keeps silent errors that low
    coverage: float | None
    silent_error_rate: float | None
    written_to: str | None = None


class StoredRules(BaseModel):
    """The rules a router file holds (picked earlier, on other rows)."""

    min_confidence: float | None = None
    call_threshold: CallThreshold | None = None
    no_tool_threshold: NoToolThreshold | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.min_confidence, self.call_threshold, self.no_tool_threshold))


class ErrorCase(BaseModel):
    kind: str  # a SEVERITY key
    request: str
    gold: str  # canonical-ish text of the gold call
    predicted: str  # the raw output
    confidence: float | None


class EvalDocument(BaseModel):
    format: str = EVAL_FORMAT
    model: ModelInfo
    data: DataInfo
    report: EvalReport
    threshold: ThresholdChoice  # on the name probability alone (format 1's `min_confidence`)
    # Picked on these rows (`--pick-threshold` writes them): abstention, then the best call score.
    call_threshold: CallChoice | None = None
    no_tool_threshold: NoToolChoice | None = None
    risk_coverage_by_score: dict[str, list[RiskPoint]] = {}
    # The file's own rules (picked on other rows), applied to these rows, against no rule at all.
    stored_rules: StoredRules | None = None
    without_rules: RulesSummary | None = None
    with_stored_rules: RulesSummary | None = None
    written_to: str | None = None  # where --pick-threshold wrote the picked rules
    errors: list[ErrorCase]  # every error, worst first
    # The answer step (rows with a tool result and a gold reply), when the data and the model have it.
    answers: AnswerReport | None = None
    answers_note: str | None = None  # why the data's follow-ups were not scored


def _gold_text(gold: Gold) -> str:
    if gold.tool == NO_TOOL:
        return NO_TOOL
    arguments = json.dumps(gold.arguments or {}, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return f"{gold.tool}({arguments})"


def _error_kind(gold: Gold, prediction: Prediction, matched: bool) -> str | None:
    if prediction.kind == "invalid":
        return "invalid"
    if prediction.kind == "no_tool":
        return None if gold.tool == NO_TOOL else "missed call"
    if gold.tool == NO_TOOL:
        return "false call"
    if prediction.tool != gold.tool:
        return "wrong tool"
    return None if matched else "wrong arguments"


def error_cases(
    golds: Sequence[Gold], predictions: Sequence[Prediction], catalogue: Catalogue
) -> list[ErrorCase]:
    """Every wrong output, worst first (by kind, then by how confident the router was)."""
    cases = []
    for gold, prediction in zip(golds, predictions, strict=True):
        kind = _error_kind(gold, prediction, outcome(gold, prediction, catalogue).right_arguments)
        if kind is not None:
            cases.append(
                ErrorCase(
                    kind=kind,
                    request=gold.request,
                    gold=_gold_text(gold),
                    predicted=prediction.raw,
                    confidence=prediction.confidence,
                )
            )
    return sorted(cases, key=lambda c: (SEVERITY[c.kind], -(c.confidence or 0.0)))


def threshold_choice(report: EvalReport, max_risk: float = MAX_RISK) -> ThresholdChoice:
    """The threshold with the most coverage whose silent-error rate stays at or below `max_risk`."""
    safe = [p for p in report.risk_coverage if p.silent_error_rate <= max_risk]
    best = max(safe, key=lambda p: (p.coverage, -p.threshold)) if safe else None
    return ThresholdChoice(
        max_silent_error_rate=max_risk,
        threshold=best.threshold if best else None,
        coverage=best.coverage if best else None,
        silent_error_rate=best.silent_error_rate if best else None,
    )


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f}%" if percent else f"{value:.3f}"


def _cell(text: str, limit: int = 90) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def headline_rows(report: EvalReport) -> list[tuple[str, str]]:
    return [
        ("valid-tool-call rate", _fmt(report.valid_tool_call_rate)),
        ("tool-name accuracy", _fmt(report.tool_name_accuracy)),
        ("argument-match accuracy (valid calls to the gold tool)", _fmt(report.argument_match_accuracy)),
        ("false-tool-call rate (gold no_tool)", _fmt(report.false_tool_call_rate, percent=True)),
    ]


def markdown(document: EvalDocument) -> str:
    report, model, data = document.report, document.model, document.data
    lines = [
        f"# Evaluation: `{model.path}`",
        "",
        f"- backend: {model.backend}; prompt mode: {model.prompt_mode or 'n/a'}",
        *(
            ["- cut-offs: " + ", ".join(f"{name} {value:g}" for name, value in model.cut_offs.items())]
            if model.cut_offs
            else []
        ),
        f"- data: `{data.path}` ({data.examples} examples, sha256 {data.sha256[:12]})",
        "",
        "| the four numbers | |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in headline_rows(report)),
        "",
        "| more | |",
        "|---|---:|",
        f"| missed-call rate (gold tool, said no_tool) | {_fmt(report.missed_call_rate, True)} |",
        "| silent-error rate (valid call, wrong tool or arguments) | "
        f"{_fmt(report.silent_error_rate, True)} |",
        f"| exact-call accuracy | {_fmt(report.exact_call_accuracy)} |",
        f"| slot precision / recall / F1 | {_fmt(report.slot_precision)} / {_fmt(report.slot_recall)} / "
        f"{_fmt(report.slot_f1)} |",
        f"| latency p50 / p95 (ms) | {_ms(report.latency_ms_p50)} / {_ms(report.latency_ms_p95)} |",
        f"| prompt tokens per request (mean) | {_ms(report.prompt_tokens_mean)} |",
        "",
        "## Risk-coverage",
        "",
    ]
    choice = document.threshold
    if choice.threshold is None:
        lines.append(
            f"No confidence threshold keeps silent errors at or below {choice.max_silent_error_rate:.0%}"
            " (or the backend reports no confidence)."
        )
    else:
        lines += [
            "| max silent errors | threshold | coverage | silent-error rate |",
            "|---:|---:|---:|---:|",
            f"| {choice.max_silent_error_rate:.0%} | {choice.threshold:.4f} | "
            f"{_fmt(choice.coverage, True)} | {_fmt(choice.silent_error_rate, True)} |",
        ]
        if choice.written_to:
            lines.append(f"\nWritten into `{choice.written_to}` as `toolroute.min_confidence`.")
    lines += ["", *_rules_section(document)]
    lines += ["", *_confusion_table(report), "", *_argument_table(report), "", *_worst_table(document)]
    lines += _answers_section(document)
    return "\n".join(lines) + "\n"


def _answers_section(document: EvalDocument) -> list[str]:
    """The answer step: faithfulness, coverage, ROUGE-L, and every answer that invented a fact."""
    answers = document.answers
    if answers is None:
        return ["", "## Answers", "", document.answers_note] if document.answers_note else []
    lines = [
        "",
        "## Answers",
        "",
        "Replies to the data's tool outputs, answered from the gold call (bench/answer_metrics.py).",
        "",
        "| answers | |",
        "|---|---:|",
        f"| follow-ups answered | {answers.rows} |",
        f"| faithful (no number, id or quoted value the tool output and request lack) | "
        f"{_fmt(answers.faithful_rate, True)} ({answers.faithful}) |",
        f"| coverage of the gold answer's ids and numbers (mean over {answers.coverage_rows}) | "
        f"{_fmt(answers.coverage_mean, True)} |",
        f"| ROUGE-L F1 against the gold answer (mean) | {_fmt(answers.rouge_l_mean)} |",
        f"| answers cut at the token cap | {answers.cut_at_cap} |",
        f"| answer latency p50 / p95 (ms) | {_ms(answers.latency_ms_p50)} / {_ms(answers.latency_ms_p95)} |",
    ]
    if answers.unfaithful:
        lines += ["", "| invented | request | tool output | answer |", "|---|---|---|---|"]
        for case in answers.unfaithful:
            cells = [", ".join(case.invented), case.request, case.tool_output, case.answer]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rules_section(document: EvalDocument) -> list[str]:
    """Each call score's best threshold, the abstention rule, and the file's rules on these rows."""
    lines: list[str] = []
    call = document.call_threshold
    if call is not None:
        risk = document.threshold.max_silent_error_rate
        lines += [
            f"## Call scores at <= {risk:.0%} silent errors (picked on these rows)",
            "",
            "| score | threshold | coverage | silent-error rate | |",
            "|---|---:|---:|---:|---|",
        ]
        for score, point in call.by_score.items():
            chosen = "chosen" if call.rule is not None and call.rule.score == score else ""
            if point is None:
                lines.append(f"| {score} | n/a | n/a | n/a | |")
            else:
                lines.append(
                    f"| {score} | {point.threshold:.4f} | {_fmt(point.coverage, True)} | "
                    f"{_fmt(point.silent_error_rate, True)} | {chosen} |"
                )
        lines.append("")
    no_tool = document.no_tool_threshold
    if no_tool is not None:
        rule = no_tool.rule
        lines.append(
            "Abstention: no rule makes fewer wrong call/no-call decisions than none "
            f"({no_tool.errors_without})."
            if rule is None
            else f"Abstention: hold a call back on `{rule.score}` {rule.value:.4f} "
            f"({no_tool.errors} wrong call/no-call decisions instead of {no_tool.errors_without})."
        )
        lines.append("")
    if document.written_to:
        lines += [f"Written into `{document.written_to}`.", ""]
    if document.without_rules is not None:
        lines += [
            "## The file's rules on these rows" if document.with_stored_rules else "## Without rules",
            "",
            "| | dispatched | silent errors | false calls | missed calls | held back |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows = [
            ("without rules", document.without_rules),
            ("with the file's rules", document.with_stored_rules),
        ]
        for label, summary in rows:
            if summary is not None:
                lines.append(
                    f"| {label} | {_fmt(summary.coverage, True)} | {_fmt(summary.silent_error_rate, True)} | "
                    f"{_fmt(summary.false_tool_call_rate, True)} | {_fmt(summary.missed_call_rate, True)} | "
                    f"{summary.held_back} |"
                )
        if document.stored_rules is not None and document.stored_rules.any:
            lines += ["", f"The file's rules: `{document.stored_rules.model_dump_json(exclude_none=True)}`."]
    return lines


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _confusion_table(report: EvalReport) -> list[str]:
    golds = sorted(report.confusion, key=lambda name: (name == NO_TOOL, name))
    predicted = sorted(
        {label for row in report.confusion.values() for label in row} | set(golds),
        key=lambda name: (name == INVALID, name == NO_TOOL, name),
    )
    lines = [
        "## Confusion matrix (rows: gold, columns: predicted)",
        "",
        "| gold \\ predicted | " + " | ".join(predicted) + " |",
        "|---|" + "---:|" * len(predicted),
    ]
    for gold in golds:
        row = report.confusion[gold]
        lines.append(f"| **{gold}** | " + " | ".join(str(row.get(p, 0) or "·") for p in predicted) + " |")
    return lines


def _argument_table(report: EvalReport) -> list[str]:
    if not report.per_argument_accuracy:
        return ["## Per-argument accuracy", "", "No gold arguments."]
    return [
        "## Per-argument accuracy (calls to the gold tool)",
        "",
        "| argument | accuracy |",
        "|---|---:|",
        *(f"| {key} | {value:.3f} |" for key, value in report.per_argument_accuracy.items()),
    ]


def _worst_table(document: EvalDocument) -> list[str]:
    worst = document.errors[:WORST_ERRORS]
    lines = [f"## The {len(worst)} worst errors (of {len(document.errors)})", ""]
    if not worst:
        return [*lines, "None."]
    lines += ["| kind | confidence | request | gold | predicted |", "|---|---:|---|---|---|"]
    for case in worst:
        lines.append(
            f"| {case.kind} | {_fmt(case.confidence)} | {_cell(case.request)} | {_cell(case.gold)} | "
            f"`{_cell(case.predicted)}` |"
        )
    return lines


def dump_json(document: EvalDocument) -> str:
    return json.dumps(document.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n"


def risk_coverage_plot(document: EvalDocument, path: Any) -> bool:
    """A PNG of silent-error rate against coverage; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    curves = document.risk_coverage_by_score or {"name_probability": document.report.risk_coverage}
    figure, axes = plt.subplots(figsize=(6, 4.2), dpi=120)
    for score, curve in curves.items():
        points = sorted(curve, key=lambda p: p.coverage)
        if points:
            xs = [p.coverage * 100 for p in points]
            axes.plot(xs, [p.silent_error_rate * 100 for p in points], marker=".", label=score)
    axes.legend(fontsize=8)
    choice = document.threshold
    axes.axhline(choice.max_silent_error_rate * 100, color="grey", linestyle="--", linewidth=1)
    call = document.call_threshold
    if call is not None and call.rule is not None and call.coverage is not None:
        label, coverage, risk = (
            f"{call.rule.score} >= {call.rule.value:.3f}",
            call.coverage,
            call.silent_error_rate,
        )
    else:
        label, coverage, risk = f"threshold {choice.threshold}", choice.coverage, choice.silent_error_rate
    if coverage is not None:
        axes.annotate(
            f"{label}\ncoverage {coverage:.0%}",
            (coverage * 100, (risk or 0) * 100),
            xytext=(10, 25),
            textcoords="offset points",
            arrowprops={"arrowstyle": "->"},
        )
    axes.set_xlabel("coverage: requests dispatched as calls (%)")
    axes.set_ylabel("silent errors (% of all requests)")
    axes.set_title(f"Risk-coverage: {document.model.path}", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write_png(figure, path)
    plt.close(figure)
    return True
