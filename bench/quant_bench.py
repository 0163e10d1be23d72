"""The quantization benchmark: one training run, every level, two reference rows, one table.

For each level the router GGUF is exported (or reused from `dist/` when it was exported from
this very run: its embedded manifest hash says so), then measured in a fresh process
(`toolroute.bench.measure`): file size, load time, peak RSS, p50/p95 route latency, output
tokens/s and the full evaluation report on the data. Reference rows, measured in the same run:

- `untuned base`: the base model itself with the run's prompt and grammar embedded (the zero-shot
  floor: what the grammar alone buys);
- `router without prefix cache`: the Q4_K_M router evaluating the whole prompt for every request
  (what the cached system-prompt prefix saves);
- `naive`: llama-cpp-python's `create_chat_completion(grammar=...)` on the Q4_K_M router (the
  speed reference: a hand-written llama.cpp script);
- `classical`: TF-IDF + logistic regression and a CRF (`classical.py`) trained on the run's own
  training rows, scored on the same data by the same metrics (the bar the router has to clear).

The recommended level is the smallest file within 1 point of F16 on both tool-name accuracy and
exact-call accuracy (`RECOMMENDATION`): tool accuracy alone recommended Q2_K for the customer-support
router, whose tools it keeps (0.961 against 0.967) while its exact calls fall from 0.878 to 0.789.

Writes `results.json`, `RESULTS.md` and `results.png` (accuracy against p50 latency, marker
area proportional to file size) into the output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from toolroute.bench.classical import ENGINE, ClassicalResult
from toolroute.bench.measure import Measurement
from toolroute.bench.metrics import EvalReport
from toolroute.export.quantize import QuantizeError, made_with, tensor_types
from toolroute.export.quantize_options import QuantizeOptions
from toolroute.runtime.files import atomic_write_png, atomic_write_text, file_sha256
from toolroute.runtime.router_file import RouterFileError, read_router_file
from toolroute.train.run_dir import RunDir

BENCH_FORMAT = "toolroute-bench/1"
NAIVE_LEVEL = "q4_k_m"
RECOMMEND_WITHIN = 0.01  # below F16's accuracy that still counts as keeping the router
RECOMMENDATION = "the smallest file within 1 point of F16's tool accuracy and exact-call accuracy"


class BenchRow(BaseModel):
    label: str
    level: str | None = None
    reference: bool = False
    measurement: Measurement | None = None
    error: str | None = None


class BenchResults(BaseModel):
    format: str = BENCH_FORMAT
    run: str
    base: str
    prompt_mode: str
    data: str
    data_sha256: str
    examples: int | None
    machine: str
    threads: int | None
    seconds: float
    quantization: QuantizeOptions | None = None
    recommended_level: str | None = None  # RECOMMENDATION
    rows: list[BenchRow]


def _embedded_manifest_sha(path: Path) -> str | None:
    """The training manifest's hash a router file in `dist/` carries; None for a file that is not a
    valid router (a damaged or foreign file there is exported again, never reused)."""
    try:
        return read_router_file(path).metadata.manifest_sha256
    except RouterFileError:
        return None


def router_files(
    run: RunDir, levels: Sequence[str], dist: Path, quantization: QuantizeOptions | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """The run's router file per level: reused when exported from this run with these quantization
    options (the file's own tensor types and `quantize.imatrix.*` keys say so), exported otherwise."""
    from toolroute.export.pipeline import export_run

    quantization = quantization or QuantizeOptions()
    manifest = run.load_manifest()
    manifest_sha = hashlib.sha256(run.manifest_path.read_bytes()).hexdigest()
    paths = {level: dist / f"{manifest.name}.{level}.gguf" for level in levels}
    missing = [
        level
        for level, path in paths.items()
        if not path.is_file()
        or _embedded_manifest_sha(path) != manifest_sha
        or not made_with(tensor_types(path, level), quantization)
    ]
    errors: dict[str, str] = {}
    if missing:
        try:
            export_run(run.path, missing, dist, parity_prompts=0, quantization=quantization)
        except QuantizeError:
            # One level llama.cpp cannot make for this model: export the others one by one.
            for level in missing:
                try:
                    export_run(run.path, [level], dist, parity_prompts=0, quantization=quantization)
                except QuantizeError as exc:
                    errors[level] = str(exc)
    return {level: path for level, path in paths.items() if level not in errors}, errors


def classical_in_subprocess(train: Path, data: Path, tools: Path, limit: int | None) -> ClassicalResult:
    """The classical reference trained on `train` and measured on `data`, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="toolroute-classical-") as folder:
        out = Path(folder) / "classical.json"
        command = [sys.executable, "-m", "toolroute.bench.classical", "--train", str(train)]
        command += ["--data", str(data), "--tools", str(tools), "--json", str(out)]
        command += ["--limit", str(limit)] if limit else []
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = completed.stderr.strip().splitlines()[-3:]
            raise RuntimeError(f"the classical reference failed: {' | '.join(tail)}")
        return ClassicalResult.model_validate_json(out.read_text(encoding="utf-8"))


def recommended_level(rows: Sequence[BenchRow]) -> str | None:
    """The smallest measured level within `RECOMMEND_WITHIN` of F16's tool-name accuracy and of
    its exact-call accuracy (`RECOMMENDATION`)."""
    measured = {r.level: r.measurement for r in rows if not r.reference and r.level and r.measurement}
    f16 = measured.get("f16")
    if f16 is None:
        return None

    def keeps(report: EvalReport) -> bool:
        return all(
            getattr(report, name) >= getattr(f16.report, name) - RECOMMEND_WITHIN - 1e-9  # a tie is within
            for name in ("tool_name_accuracy", "exact_call_accuracy")
        )

    within = [(m.size_bytes, level) for level, m in measured.items() if keeps(m.report)]
    return min(within)[1]


def untuned_base_of_run(run: RunDir, like: Path, work: Path) -> Path:
    """The run's own base model, never fine-tuned, carrying the router metadata (prompt, grammar,
    catalogue) of `like`, one of the run's router files, with no threshold: the zero-shot row.
    (`router_files.untuned_router` is another thing: the default base with any catalogue.)"""
    from toolroute.export.converter import convert
    from toolroute.export.embed import write_router_gguf

    manifest = run.load_manifest()
    if manifest.base.kind == "gguf":
        base_file = Path(manifest.base.path)
    elif manifest.base.kind == "hf":
        base_file = convert(Path(manifest.base.path), work / "base.f16.gguf", "f16")
    else:
        raise ValueError(f"the base {manifest.base.spec!r} is a hub id: no untuned reference row offline")

    # Read from the header and checked before llama.cpp opens anything (a RouterFileError is a
    # ValueError: the caller reports the row as not measured).
    # No answer rows either: the base was never trained on the answer step, so the row refuses to
    # answer (as `Router.answer` does for such a file) rather than scoring untrained text.
    untrained = {"min_confidence": None, "answer_rows": None}
    metadata = read_router_file(like).metadata.model_copy(update=untrained)
    return write_router_gguf(base_file, work / "untuned-base.gguf", metadata)


def measure_in_subprocess(
    path: Path, data: Path, runner: str, limit: int | None, threads: int | None
) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="toolroute-measure-") as folder:
        out = Path(folder) / "measurement.json"
        command = [sys.executable, "-m", "toolroute.bench.measure", str(path), "--data", str(data)]
        command += ["--runner", runner, "--json", str(out)]
        command += ["--limit", str(limit)] if limit else []
        command += ["--threads", str(threads)] if threads else []
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = completed.stderr.strip().splitlines()[-3:]
            raise RuntimeError(f"measuring {path.name} ({runner}) failed: {' | '.join(tail)}")
        return Measurement.model_validate_json(out.read_text(encoding="utf-8"))


def bench_run(
    run_path: Path,
    data: Path,
    levels: Sequence[str],
    dist: Path,
    out: Path,
    *,
    limit: int | None = None,
    threads: int | None = None,
    references: bool = True,
    quantization: QuantizeOptions | None = None,
) -> BenchResults:
    from toolroute.export.pipeline import options_for_run

    started = time.perf_counter()
    run = RunDir(run_path)
    manifest = run.load_manifest()
    # What export makes for this run (a quant-aware run's levels leave the matrix out): the files
    # reused must match it, and the report records it.
    quantization = options_for_run(quantization or QuantizeOptions(), manifest)
    files, errors = router_files(run, levels, dist, quantization)
    rows: list[tuple[BenchRow, Path | None, str]] = []
    for level in levels:
        row = BenchRow(label=level.upper(), level=level, error=errors.get(level))
        rows.append((row, files.get(level), "router"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bench-", dir=out))
    try:
        if references:
            like = files.get(NAIVE_LEVEL) or next(iter(files.values()), None)
            if like is not None:
                try:
                    untuned = untuned_base_of_run(run, like, work)
                    rows.append(
                        (
                            BenchRow(label="untuned base, same prompt + grammar", reference=True),
                            untuned,
                            "router",
                        )
                    )
                except ValueError as exc:
                    rows.append(
                        (BenchRow(label="untuned base", reference=True, error=str(exc)), None, "router")
                    )
                naive_level = NAIVE_LEVEL if NAIVE_LEVEL in files else next(iter(files))
                no_cache = BenchRow(
                    label=f"router without prefix cache ({naive_level.upper()})",
                    level=naive_level,
                    reference=True,
                )
                rows.append((no_cache, files[naive_level], "router-no-prefix-cache"))
                rows.append(
                    (
                        BenchRow(
                            label=f"naive create_chat_completion ({naive_level.upper()})",
                            level=naive_level,
                            reference=True,
                        ),
                        files[naive_level],
                        "naive",
                    )
                )
        for row, path, runner in tqdm(rows, desc="bench", file=sys.stderr):
            if path is None or row.error:
                continue
            try:
                row.measurement = measure_in_subprocess(path, data, runner, limit, threads)
            except RuntimeError as exc:
                row.error = str(exc)
        if references:
            rows.append((classical_row(run, data, work, limit), None, "classical"))
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
    measured = [row.measurement for row, _, _ in rows if row.measurement]
    bench_rows = [row for row, _, _ in rows]
    results = BenchResults(
        run=manifest.name,
        base=manifest.base.spec,
        prompt_mode=manifest.prompt_mode,
        data=str(data),
        data_sha256=file_sha256(data),
        examples=measured[0].requests if measured else None,
        machine=_machine(),
        threads=measured[0].threads if measured else threads,
        seconds=round(time.perf_counter() - started, 1),
        quantization=quantization,
        recommended_level=recommended_level(bench_rows),
        rows=bench_rows,
    )
    write_results(results, out)
    return results


def classical_row(run: RunDir, data: Path, work: Path, limit: int | None) -> BenchRow:
    """The classical reference, trained on the run's training split with the run's catalogue."""
    manifest = run.load_manifest()
    tools = work / "tools.json"
    atomic_write_text(tools, manifest.load_catalogue().to_json())
    row = BenchRow(label="classical", reference=True)
    try:
        result = classical_in_subprocess(Path(manifest.data["train"].path), data, tools, limit)
    except RuntimeError as exc:
        row.error = str(exc)
        return row
    row.label = f"{ENGINE.split(': ')[0]} (TF-IDF + LR, CRF; trained in {result.train_seconds:.0f} s)"
    row.measurement = result.measurement
    return row


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[BenchRow], recommended: str | None = None) -> list[str]:
    lines = [
        "| row | size MB | load s | peak RSS MB | p50 ms | p95 ms | out tok/s | valid | tool acc | "
        "arg acc | false calls | silent errors | slot F1 | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        m = row.measurement
        if m is None:
            lines.append(f"| {row.label} | {row.error or 'not measured'} |" + " |" * 12)
            continue
        r = m.report
        label = (
            f"**{row.label}** (recommended)"
            if recommended and row.level == recommended and not row.reference
            else row.label
        )
        lines.append(
            f"| {label} | {m.size_bytes / 1e6:.1f} | {m.load_s:.2f} | {m.peak_rss_mb:.0f} | "
            f"{_num(m.latency_ms_p50, 0)} | {_num(m.latency_ms_p95, 0)} | {_num(m.output_tokens_per_s, 0)} | "
            f"{_num(r.valid_tool_call_rate)} | {_num(r.tool_name_accuracy)} | "
            f"{_num(r.argument_match_accuracy)} | "
            f"{_pct(r.false_tool_call_rate)} | {_pct(r.silent_error_rate)} | {_num(r.slot_f1)} | "
            f"{_num(r.exact_call_accuracy)} |"
        )
    return lines


def answers_table(rows: Sequence[BenchRow]) -> list[str]:
    """The answer step per row (the levels of a router trained with answers, on data with
    follow-ups); no lines when no row answered."""
    answered = [row for row in rows if row.measurement and row.measurement.answers]
    if not answered:
        return []
    lines = [
        "Answers to tool results, each generated from the gold call and the data's tool output "
        "(faithful: every id, number and quoted value in the answer is in the tool output or the "
        "request; coverage: the share of the gold answer's ids and numbers the answer states):",
        "",
        "| row | follow-ups | faithful | coverage | ROUGE-L | cut at cap | answer p50 ms | answer p95 ms "
        "| route p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in answered:
        assert row.measurement is not None and row.measurement.answers is not None
        a = row.measurement.answers
        lines.append(
            f"| {row.label} | {a.rows} | {_pct(a.faithful_rate)} ({a.faithful}/{a.rows}) | "
            f"{_pct(a.coverage_mean)} | {_num(a.rouge_l_mean)} | {a.cut_at_cap} | "
            f"{_num(a.latency_ms_p50, 0)} | {_num(a.latency_ms_p95, 0)} | "
            f"{_num(row.measurement.latency_ms_p50, 0)} |"
        )
    return ["", *lines]


def markdown(results: BenchResults) -> str:
    lines = [
        f"# Quantization benchmark: `{results.run}`",
        "",
        f"- base `{results.base}`, prompt mode `{results.prompt_mode}`",
        f"- data `{results.data}` ({results.examples} requests, sha256 {results.data_sha256[:12]})",
        f"- machine: {results.machine}; llama.cpp threads: {results.threads}; "
        f"bench wall time {results.seconds:.0f} s",
        f"- quantization: {_quantization(results.quantization)}",
        f"- recommended level: {_recommended(results)}",
        "",
        *markdown_table(results.rows, results.recommended_level),
        "",
        "Columns: load time and peak RSS from a fresh process per row; p50/p95 = route latency per request "
        "(prompt to validated result); out tok/s = output tokens over routing time (forced bytes "
        "included); valid = valid-tool-call rate; tool acc = tool-name accuracy (no_tool included); "
        "arg acc = argument-match accuracy on valid calls to the gold tool; false calls = tool called "
        "when the gold is no_tool; silent errors = valid call to the wrong tool or with wrong "
        "arguments (share of all requests); slot F1 over (tool, argument, value); exact = whole call right.",
        *answers_table(results.rows),
    ]
    return "\n".join(lines) + "\n"


def _quantization(options: QuantizeOptions | None) -> str:
    if options is None:
        return "not recorded"
    imatrix = (
        f"importance matrix from {options.imatrix_rows} training rows"
        if options.imatrix_rows
        else "no imatrix"
    )
    return f"token embedding {options.token_embedding}, {imatrix}"


def _recommended(results: BenchResults) -> str:
    if results.recommended_level is None:
        return "none (no F16 row measured to compare against)"
    return f"{results.recommended_level.upper()} ({RECOMMENDATION})"


def plot(results: BenchResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in results.rows if row.measurement]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for axis, (metric, title) in zip(
        axes,
        (("tool_name_accuracy", "tool-name accuracy"), ("exact_call_accuracy", "exact-call accuracy")),
        strict=True,
    ):
        for row in measured:
            m = row.measurement
            assert m is not None
            value = getattr(m.report, metric)
            marker = "s" if row.reference else "o"
            axis.scatter(
                m.latency_ms_p50, value, s=max(20.0, m.size_bytes / 1e6 * 3), marker=marker, alpha=0.6,
                edgecolors="black", linewidths=0.6,
            )  # fmt: skip
            axis.annotate(row.label.split(",")[0][:18], (m.latency_ms_p50, value), fontsize=7,
                          xytext=(5, 4), textcoords="offset points")  # fmt: skip
        axis.set_xlabel("p50 route latency (ms)")
        axis.set_ylabel(title)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{results.run}: accuracy vs latency (marker area = file size; squares = references)",
                    fontsize=10)  # fmt: skip
    figure.tight_layout()
    atomic_write_png(figure, path)
    plt.close(figure)


def write_results(results: BenchResults, out: Path) -> None:
    atomic_write_text(out / "results.json", json.dumps(results.model_dump(mode="json"), indent=2) + "\n")
    atomic_write_text(out / "RESULTS.md", markdown(results))
    plot(results, out / "results.png")
