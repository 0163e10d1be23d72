"""Small-data learning curves: routers and the classical reference, point by point, one table and a plot.

    python -m toolroute.bench.learning_curve --out results/hwu64-small \\
        --point "k=10" results/hwu64-small/k10-q4_k_m/eval.json results/hwu64-small/classical-k10.json \\
        --point "k=30" ... \\
        --point "all" results/hwu64-e2/q4_k_m-test/eval.json results/hwu64-small/classical-all.json

Each point names a training set (k rows per label, or all of them) and two reports on the same
evaluation rows: a router's `toolroute eval` document (`eval.json`) and the classical reference's
`toolroute bench-classical --json` result trained on the same rows. Nothing is measured here: the
numbers are read from those files, which say how they were made. Writes `CURVE.md` (the table, with
the router's lead over the classical reference) and `curve.png` (tool accuracy, slot F1 and false
calls against the point, both engines).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from toolroute.runtime.files import atomic_write_png, atomic_write_text

from .classical import ClassicalResult
from .metrics import EvalReport
from .reporting import EvalDocument

COLUMNS = (
    ("tool_name_accuracy", "tool acc", False),
    ("slot_f1", "slot F1", False),
    ("false_tool_call_rate", "false calls", True),
    ("silent_error_rate", "silent errors", True),
)


class CurvePoint(BaseModel):
    label: str
    router: EvalReport
    router_file: str
    classical: EvalReport
    classical_train_rows: int


def read_point(label: str, router_eval: Path, classical_json: Path) -> CurvePoint:
    document = EvalDocument.model_validate_json(router_eval.read_text(encoding="utf-8"))
    classical = ClassicalResult.model_validate_json(classical_json.read_text(encoding="utf-8"))
    # Results that recorded their data must name the same file; older ones the same row count.
    same = (
        document.data.sha256 == classical.data_sha256
        if classical.data_sha256
        else document.report.examples == classical.measurement.report.examples
    )
    if not same:
        raise ValueError(
            f"{label}: {router_eval} and {classical_json} were measured on different data "
            f"({document.data.path}, {document.report.examples} rows / {classical.data or 'not recorded'}, "
            f"{classical.measurement.report.examples} rows)"
        )
    return CurvePoint(
        label=label,
        router=document.report,
        router_file=document.model.path,
        classical=classical.measurement.report,
        classical_train_rows=classical.train_rows,
    )


def summary(point: CurvePoint) -> dict[str, object]:
    """The point's numbers as the table shows them (the full reports stay in their own files)."""
    return {
        "label": point.label,
        "train_rows": point.classical_train_rows,
        "eval_rows": point.router.examples,
        "router_file": point.router_file,
        **{
            f"{engine}_{key}": getattr(getattr(point, engine), key)
            for engine in ("router", "classical")
            for key, _, _ in COLUMNS
        },
    }


def _cell(value: float | None, rate: bool) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f}%" if rate else f"{value:.3f}"


def markdown(points: Sequence[CurvePoint]) -> str:
    header = "| point | train rows | eval rows | " + " | ".join(
        f"router {name} | classical {name}" for _, name, _ in COLUMNS
    )
    lines = [
        "# Small-data learning curve",
        "",
        header + " |",
        "|---|---:|---:|" + "---:|---:|" * len(COLUMNS),
    ]
    for point in points:
        cells = [point.label, f"{point.classical_train_rows:,}", f"{point.router.examples:,}"]
        for key, _, rate in COLUMNS:
            cells += [_cell(getattr(point.router, key), rate), _cell(getattr(point.classical, key), rate)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Router files: " + ", ".join(f"{p.label}: `{p.router_file}`" for p in points)]
    return "\n".join(lines) + "\n"


def plot(points: Sequence[CurvePoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(COLUMNS) - 1, figsize=(12, 4), dpi=120)
    positions = list(range(len(points)))
    for axis, (key, name, rate) in zip(axes, COLUMNS[:-1], strict=True):
        for engine, marker in (("router", "o"), ("classical", "s")):
            values = [getattr(getattr(p, engine), key) for p in points]
            shown = [None if v is None else (v * 100 if rate else v) for v in values]
            axis.plot(positions, shown, marker=marker, label=engine)
        axis.set_xticks(positions, [p.label for p in points])
        axis.set_title(name + (" (%)" if rate else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        "Small-data learning curve (same training rows and eval rows for both engines)", fontsize=10
    )
    figure.tight_layout()
    atomic_write_png(figure, path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.learning_curve", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--point", nargs=3, action="append", required=True, metavar=("LABEL", "ROUTER_EVAL", "CLASSICAL_JSON")
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    points = [read_point(label, Path(router), Path(classical)) for label, router, classical in args.point]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "CURVE.md", markdown(points))
    atomic_write_text(args.out / "curve.json", json.dumps([summary(p) for p in points], indent=2) + "\n")
    plot(points, args.out / "curve.png")
    print(markdown(points))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
