"""The prompt-mode comparison: one training config trained and evaluated once per prompt mode.

`full | compact | names | none` differ in how much of the catalogue the system prompt spells out
(see `grammars/system_prompt.py`); a longer prompt costs training time (tokens x parameters) and prompt
tokens per request, and may or may not buy accuracy. Each mode is a run `NAME-MODE` (reused when
complete with the same config), exported at Q4_K_M and measured like a benchmark row.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolroute.bench.measure import Measurement
from toolroute.runtime.files import atomic_write_png, atomic_write_text

from .quant_bench import _machine, _num, _pct, measure_in_subprocess

MODES = ("full", "compact", "names", "none")
LEVEL = "q4_k_m"


class ModeRow(BaseModel):
    mode: str
    run: str
    train_steps: int | None = None
    seconds_per_step: float | None = None
    train_wall_s: float | None = None
    final_eval_loss: float | None = None
    measurement: Measurement | None = None
    error: str | None = None


class ModeResults(BaseModel):
    format: str = "toolroute-bench-modes/1"
    config: str
    overrides: dict[str, Any]
    data: str
    machine: str
    seconds: float
    rows: list[ModeRow]


def _train_or_reuse(config: Any) -> Any:
    from toolroute.train.run_dir import RunDir
    from toolroute.train.trainer import train

    run = RunDir(config.run_dir)
    if run.is_complete():
        manifest = run.load_manifest()
        if manifest.config == json.loads(config.model_dump_json()):
            return manifest
    return train(config, resume=run.marker.exists())


def bench_modes(
    config_path: Path,
    modes: Sequence[str],
    data: Path,
    dist: Path,
    out: Path,
    *,
    overrides: dict[str, Any],
    limit: int | None = None,
    threads: int | None = None,
) -> ModeResults:
    from toolroute.train.config import load_config
    from toolroute.train.run_dir import RunDir

    from .quant_bench import router_files

    started = time.perf_counter()
    rows = []
    for mode in modes:
        base = load_config(config_path, {})
        config = load_config(config_path, {**overrides, "mode": mode, "name": f"{base.name}-{mode}"})
        row = ModeRow(mode=mode, run=str(config.run_dir))
        try:
            manifest = _train_or_reuse(config)
            row.train_steps = int(manifest.metrics.get("steps") or 0) or None
            row.seconds_per_step = manifest.metrics.get("seconds_per_step")
            row.train_wall_s = manifest.wall_time_s
            row.final_eval_loss = manifest.metrics.get("final_eval_loss")
            files, errors = router_files(RunDir(config.run_dir), [LEVEL], dist)
            if LEVEL in errors:
                raise RuntimeError(errors[LEVEL])
            row.measurement = measure_in_subprocess(files[LEVEL], data, "router", limit, threads)
        except (RuntimeError, ValueError) as exc:
            row.error = str(exc)
            print(f"toolroute bench-modes: {mode}: {exc}", file=sys.stderr)
        rows.append(row)
    results = ModeResults(
        config=str(config_path),
        overrides={k: v for k, v in overrides.items() if v is not None},
        data=str(data),
        machine=_machine(),
        seconds=round(time.perf_counter() - started, 1),
        rows=rows,
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "modes.json", json.dumps(results.model_dump(mode="json"), indent=2) + "\n")
    atomic_write_text(out / "MODES.md", markdown(results))
    plot(results, out / "modes.png")
    return results


def markdown(results: ModeResults) -> str:
    lines = [
        "# Prompt-mode comparison",
        "",
        f"- config `{results.config}` with {results.overrides or 'no overrides'}; Q4_K_M; "
        f"data `{results.data}`",
        f"- machine: {results.machine}; wall time {results.seconds:.0f} s",
        "",
        "| mode | prompt tokens | train s/step | train wall s | eval loss | p50 ms | p95 ms | tool acc | "
        "arg acc | false calls | silent errors | slot F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.rows:
        m = row.measurement
        if m is None:
            lines.append(f"| {row.mode} | {row.error or 'not measured'} |" + " |" * 10)
            continue
        r = m.report
        lines.append(
            f"| {row.mode} | {_num(r.prompt_tokens_mean, 0)} | {_num(row.seconds_per_step, 2)} | "
            f"{_num(row.train_wall_s, 0)} | {_num(row.final_eval_loss)} | {_num(m.latency_ms_p50, 0)} | "
            f"{_num(m.latency_ms_p95, 0)} | {_num(r.tool_name_accuracy)} | "
            f"{_num(r.argument_match_accuracy)} | "
            f"{_pct(r.false_tool_call_rate)} | {_pct(r.silent_error_rate)} | {_num(r.slot_f1)} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: ModeResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for row in results.rows:
        if row.measurement is None or row.measurement.report.prompt_tokens_mean is None:
            continue
        report = row.measurement.report
        axis.scatter(report.prompt_tokens_mean, report.tool_name_accuracy, s=60, edgecolors="black")
        axis.annotate(row.mode, (report.prompt_tokens_mean, report.tool_name_accuracy), xytext=(5, 4),
                      textcoords="offset points")  # fmt: skip
    axis.set_xlabel("prompt tokens per request")
    axis.set_ylabel("tool-name accuracy (Q4_K_M)")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.set_title("What a longer prompt buys", fontsize=10)
    figure.tight_layout()
    atomic_write_png(figure, path)
    plt.close(figure)
