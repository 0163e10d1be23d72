"""The latency breakdown's results: what a run recorded, its summaries, and the report written from them.

`breakdown.json` holds every request's breakdown (`RequestBreakdown`, from `latency_seams.py`);
the Markdown tables and the stacked-bar PNG are computed from it, so a run can be re-reported
without re-running it (`write_results(BreakdownResults.model_validate_json(...), out)`).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolroute.runtime.files import atomic_write_png, atomic_write_text

from .latency_seams import (
    CALL_SCORE,
    CATEGORIES,
    CONFIDENCE,
    COPY,
    DECODE,
    FORCED,
    LABELS,
    MASKS,
    OVERHEAD,
    PICK,
    PREPARE,
    PROMPT,
    RequestBreakdown,
    SeamTime,
)
from .metrics import percentile
from .router_files import UNTUNED


class ConfigRun(BaseModel):
    label: str
    options: dict[str, Any]
    route_options: dict[str, Any] = {}
    load_s: float
    required: list[str]  # the categories this configuration must reach (checked after the run)
    plain_ms: list[float]  # the un-timed route, per request, on the breakdown's clock
    plain_wall_ms: list[float]  # the same routes' RouteResult.latency_ms (wall time)
    same_output: int  # requests whose timed and un-timed outputs are identical
    requests: list[RequestBreakdown]


class NaiveRun(BaseModel):
    latencies_ms: list[float]
    completion_tokens: list[int]


class CatalogueRun(BaseModel):
    catalogue: str
    about: str
    router: str
    router_label: str
    tools: int
    arguments: int  # over all tools
    texts: list[str]
    configs: list[ConfigRun]
    naive: NaiveRun | None = None
    peak_rss_mb: float  # after every configuration, before the naive reference
    load_average: tuple[float, float]  # the machine's 1-minute load average at the start and the end


class BreakdownResults(BaseModel):
    command: str
    machine: str
    threads: int
    clock: str = "wall"  # of every ms in the breakdown: "wall", or "cpu" (the routing thread's)
    date: str
    catalogues: list[CatalogueRun]


# -- summaries ---------------------------------------------------------------------------------


class CategorySummary(BaseModel):
    median_ms: float  # the nearest-rank p50 over the requests, as every median here (`_p`)
    mean_ms: float
    share: float  # of the summed totals
    count: float | None  # median per request of the category's count (COUNT_OF)


class ConfigSummary(BaseModel):
    label: str
    requests: int
    plain_p50_ms: float
    plain_p95_ms: float
    plain_wall_p50_ms: float
    timed_p50_ms: float
    same_output: int
    categories: dict[str, CategorySummary]
    medians: dict[str, float]  # counts per request
    per_step: dict[str, float | None]  # unit costs, from sums over the requests


# The count shown beside each category, and its unit.
COUNT_OF = {
    PREPARE: ("prompt_tokens", "prompt tokens"),
    PROMPT: ("prompt_batch_tokens", "tokens evaluated"),
    DECODE: ("decode_steps", "steps"),
    MASKS: ("masks", "mask calls"),
    PICK: ("picks", "model-chosen tokens"),
    FORCED: ("forced_bytes", "bytes forced"),
    CONFIDENCE: ("confidence_batches", "extra batches"),
    CALL_SCORE: ("call_score_masks", "mask calls"),
    COPY: ("copy_checks", "span checks"),
    OVERHEAD: ("generations", "decodings"),
}


def request_counts(row: RequestBreakdown) -> dict[str, float]:
    """What one request did, from its seams and counters."""
    picks = row.calls(PICK, "pick_greedy")
    model_tokens = picks - row.counters.get(f"{PICK}.end", 0)
    completion = row.completion_tokens or 0
    return {
        "prompt_tokens": row.prompt_tokens or 0,
        "uncached_prompt_tokens": (row.prompt_tokens or 0) - (row.cached_tokens or 0),
        "prompt_batch_tokens": row.counters.get(f"{PROMPT}.tokens", 0),
        "decode_steps": row.calls(DECODE, "Context.extend") + row.calls(DECODE, "Context.extend_rows"),
        "decode_tokens": row.counters.get(f"{DECODE}.tokens", 0),
        "masks": row.calls(MASKS, "Matcher.mask"),
        "picks": picks,
        "completion_tokens": completion,
        "model_tokens": model_tokens,
        "forced_tokens": completion - model_tokens,
        "forced_bytes": row.counters.get(f"{FORCED}.bytes", 0),
        "confidence_batches": row.calls(CONFIDENCE, "Context.decode"),
        "call_score_masks": row.calls(CALL_SCORE, "Matcher.mask"),
        "copy_checks": row.calls(COPY, "CopyTracker.allows"),
        "generations": row.calls(OVERHEAD, "Router._generate"),
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def summarise(run: ConfigRun) -> ConfigSummary:
    rows = run.requests
    counts = [request_counts(row) for row in rows]
    totals = [row.total_ms for row in rows]
    grand = sum(totals)
    categories = {}
    for category in CATEGORIES:
        values = [row.ms.get(category, 0.0) for row in rows]
        key = COUNT_OF.get(category, (None, ""))[0]
        categories[category] = CategorySummary(
            median_ms=_p(values, 50),
            mean_ms=statistics.fmean(values),
            share=sum(values) / grand if grand else 0.0,
            count=_p([c[key] for c in counts], 50) if key else None,
        )

    def summed(category: str) -> float:
        return sum(row.ms.get(category, 0.0) for row in rows)

    def counted(key: str) -> float:
        return sum(c[key] for c in counts)

    mask_ms = sum(row.seams.get(MASKS, {}).get("Matcher.mask", SeamTime()).ms for row in rows)
    per_step = {
        "ms per prompt token": _ratio(summed(PROMPT), counted("prompt_batch_tokens")),
        "ms per decode step": _ratio(summed(DECODE), counted("decode_steps")),
        "µs per mask call (greedy loop)": _ratio(mask_ms * 1000.0, counted("masks")),
        "grammar ms per model-chosen token (masks + pick)": _ratio(
            summed(MASKS) + summed(PICK), counted("picks")
        ),
        "ms per forced byte": _ratio(summed(FORCED), counted("forced_bytes")),
        "ms of confidence per request": _ratio(summed(CONFIDENCE), len(rows)),
        "ms of call score per model-chosen token": _ratio(summed(CALL_SCORE), counted("picks")),
    }
    keys = counts[0].keys() if counts else []
    return ConfigSummary(
        label=run.label,
        requests=len(rows),
        plain_p50_ms=_p(run.plain_ms, 50),
        plain_p95_ms=_p(run.plain_ms, 95),
        plain_wall_p50_ms=_p(run.plain_wall_ms, 50),
        timed_p50_ms=_p(totals, 50),
        same_output=run.same_output,
        categories=categories,
        medians={key: _p([c[key] for c in counts], 50) for key in keys},
        per_step=per_step,
    )


def _p(values: Sequence[float], q: float) -> float:
    """`metrics.percentile`, the benchmarks' one definition (nearest rank): every "median" in this
    report is its p50, so a median and a p50 side by side are the same statistic, and each is a
    value some request had (never the mean of the two middle ones); NaN for no requests."""
    value = percentile(values, q)
    return float("nan") if value is None else value


# -- report ------------------------------------------------------------------------------------


def markdown(results: BreakdownResults) -> str:
    lines = [
        "# Latency breakdown",
        "",
        f"`{results.command}`",
        "",
        f"{results.machine}; {results.threads} llama.cpp thread(s); {results.date}.",
        "",
        CLOCK_NOTES.get(results.clock, results.clock),
        "",
    ]
    for run in results.catalogues:
        summaries = [summarise(config) for config in run.configs]
        lines += [f"## {run.catalogue}", "", *_about(run, summaries), ""]
        lines += _category_table(summaries)
        lines += ["", *_step_table(summaries), ""]
    lines += [
        "Columns: median ms per request per category; share of the summed time; the median count per "
        "request (prompt: tokens in the first model batch, i.e. the request's uncached tokens plus the "
        'forced `{"tool":"` evaluated with them; decode: model batches after it, each one model-chosen '
        "token plus any forced tokens before it; masks: llama.cpp grammar mask calls of the greedy loop, "
        "probes included; forced: bytes found forced, each probed one at a time; confidence: extra model "
        "batches of the name scorer; call score: the mask calls it spends; copy rule: candidate tokens "
        "checked against the request's spans; overhead: decodings from the prompt, more than 1 after a "
        "copy-rule dead end). The categories add up to the timed total; `plain` is the same route "
        "without timers.",
        "",
    ]
    return "\n".join(lines)


CLOCK_NOTES = {
    "wall": "Every ms is wall time.",
    "cpu": "Every ms in the tables is CPU time of the routing thread (`--clock cpu`: with one llama.cpp "
    "thread the model runs on it too), which a busy machine inflates far less than wall time; the wall "
    "time a caller waited is given beside it.",
}


def _about(run: CatalogueRun, summaries: list[ConfigSummary]) -> list[str]:
    router = (
        "untuned (the default base with this catalogue's metadata and inferred copied arguments: its "
        "choices are not a trained router's, so per-request totals depend on what it wrote, listed "
        "below; per-step costs carry over)"
        if run.router_label == UNTUNED
        else f"`{run.router_label}`"
    )
    lines = [
        f"- {run.about}: {run.tools} tools, {run.arguments} arguments, {len(run.texts)} requests",
        f"- router: {router}; peak RSS {run.peak_rss_mb:.0f} MB; machine load average"
        f" {run.load_average[0]:.1f} at the start, {run.load_average[1]:.1f} at the end",
    ]
    if run.naive is not None:
        p50, tokens = _p(run.naive.latencies_ms, 50), _p(run.naive.completion_tokens, 50)
        lines.append(
            f"- naive `create_chat_completion(grammar=...)`, same file: p50 {p50:.0f} ms,"
            f" median {tokens:.0f} completion tokens"
        )
    for config, summary in zip(run.configs, summaries, strict=True):
        median = summary.medians
        options = {**config.options, **{f"route.{k}": v for k, v in config.route_options.items()}}
        settings = ", ".join(f"{key}={json.dumps(value)}" for key, value in options.items())
        counted = Counter(row.kind for row in config.requests)
        kinds = ", ".join(f"{n} {kind}" for kind, n in counted.most_common())
        lines.append(
            f"- `{summary.label}`{f' ({settings})' if settings else ''}: outputs {kinds};"
            f" plain p50 {summary.plain_p50_ms:.0f} ms,"
            f" p95 {summary.plain_p95_ms:.0f} ms (wall p50 {summary.plain_wall_p50_ms:.0f} ms);"
            f" median {median['completion_tokens']:.0f} completion tokens ({median['forced_tokens']:.0f}"
            f" forced, {median['model_tokens']:.0f} chosen by the model),"
            f" {median['uncached_prompt_tokens']:.0f} uncached prompt tokens;"
            f" timed and plain outputs identical on {summary.same_output}/{summary.requests}"
        )
    return lines


def _category_table(summaries: list[ConfigSummary]) -> list[str]:
    header = "| category |" + "".join(f" {s.label}: median ms | share | count |" for s in summaries)
    rule = "|---|" + "---:|---:|---:|" * len(summaries)
    lines = [header, rule]
    for category in CATEGORIES:
        cells = []
        for summary in summaries:
            stat = summary.categories[category]
            unit = COUNT_OF.get(category, (None, ""))[1]
            count = "" if stat.count is None else f"{stat.count:.0f} {unit}"
            cells.append(f" {stat.median_ms:.1f} | {stat.share * 100:.0f}% | {count} |")
        lines.append(f"| {LABELS[category]} |" + "".join(cells))
    lines.append(
        "| **total, timed (p50)** |" + "".join(f" **{s.timed_p50_ms:.0f}** | | |" for s in summaries)
    )
    lines.append("| total, plain (p50) |" + "".join(f" {s.plain_p50_ms:.0f} | | |" for s in summaries))
    return lines


def _step_table(summaries: list[ConfigSummary]) -> list[str]:
    lines = [
        "| per-step cost |" + "".join(f" {s.label} |" for s in summaries),
        "|---|" + "---:|" * len(summaries),
    ]
    for key in summaries[0].per_step if summaries else []:
        cells = "".join(" - |" if s.per_step[key] is None else f" {s.per_step[key]:.3g} |" for s in summaries)
        lines.append(f"| {key} |{cells}")
    return lines


COLOURS = {
    PREPARE: "#9e9e9e",
    PROMPT: "#1f77b4",
    DECODE: "#aec7e8",
    MASKS: "#d62728",
    PICK: "#ff9896",
    FORCED: "#ff7f0e",
    CONFIDENCE: "#2ca02c",
    CALL_SCORE: "#98df8a",
    COPY: "#9467bd",
    OVERHEAD: "#c7c7c7",
}


def plot(results: BreakdownResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{run.catalogue} / {summary.label}", summary)
        for run in results.catalogues
        for summary in (summarise(config) for config in run.configs)
    ]
    height = 2.0 + 0.45 * len(bars)
    figure, axis = plt.subplots(figsize=(10, height), dpi=120)
    for index, (_, summary) in enumerate(bars):
        left = 0.0
        for category in CATEGORIES:
            width = summary.categories[category].mean_ms
            label = LABELS[category] if index == 0 else None
            axis.barh(index, width, left=left, color=COLOURS[category], label=label)
            left += width
    axis.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
    axis.invert_yaxis()
    clock = "CPU time of the routing thread" if results.clock == "cpu" else "wall time"
    axis.set_xlabel(f"mean ms per request ({clock}, {results.threads} llama.cpp thread(s))")
    axis.grid(axis="x", alpha=0.3)
    axis.set_title("Where a route's time goes", fontsize=10)
    figure.legend(fontsize=7, loc="lower center", ncols=4, frameon=False)
    figure.tight_layout(rect=(0, 0.5 / height, 1, 1))  # half an inch for the legend
    atomic_write_png(figure, path)
    plt.close(figure)


def write_results(results: BreakdownResults, out: Path) -> None:
    atomic_write_text(out / "breakdown.json", results.model_dump_json() + "\n")  # every request: compact
    atomic_write_text(out / "BREAKDOWN.md", markdown(results))
    plot(results, out / "breakdown.png")
