"""`toolroute bench RUN --data eval.jsonl`, `toolroute bench-modes CONFIG --data eval.jsonl` and
`toolroute bench-classical --train train.jsonl --data eval.jsonl`."""

from __future__ import annotations

import argparse
from pathlib import Path

from toolroute.cli import require_extra

DEFAULT_BENCH_LEVELS = "f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k"


def _bench(args: argparse.Namespace) -> int:
    require_extra("train")
    from toolroute.bench.quant_bench import RECOMMENDATION, bench_run, markdown_table
    from toolroute.cli.export import quantize_options
    from toolroute.export.quantize import parse_levels

    run = Path(args.run)
    out = Path(args.out) if args.out else Path("results") / run.name
    results = bench_run(
        run, args.data, parse_levels(args.quant), Path(args.dist), out,
        limit=args.limit, threads=args.threads, references=not args.no_references,
        quantization=quantize_options(args),
    )  # fmt: skip
    print("\n".join(markdown_table(results.rows, results.recommended_level)))
    if results.recommended_level:
        print(f"\nrecommended level: {results.recommended_level} ({RECOMMENDATION})")
    print(f"\n{out / 'RESULTS.md'}, {out / 'results.json'}, {out / 'results.png'}")
    return 0 if all(row.measurement for row in results.rows) else 1


def _bench_modes(args: argparse.Namespace) -> int:
    require_extra("train")
    from toolroute.bench.modes_bench import MODES, bench_modes

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise ValueError(f"unknown prompt mode(s) {unknown}; known: {', '.join(MODES)}")
    overrides = {"epochs": args.epochs, "max_steps": args.max_steps}
    out = Path(args.out)
    results = bench_modes(
        Path(args.config), modes, args.data, Path(args.dist), out,
        overrides=overrides, limit=args.limit, threads=args.threads,
    )  # fmt: skip
    print((out / "MODES.md").read_text(encoding="utf-8"))
    return 0 if all(row.measurement for row in results.rows) else 1


def _bench_classical(args: argparse.Namespace) -> int:
    require_extra("train")
    from toolroute.bench.classical import format_arguments, run_classical
    from toolroute.bench.quant_bench import BenchRow, markdown_table
    from toolroute.runtime.files import atomic_write_text

    result = run_classical(
        args.train, args.data, args.tools, k=args.per_label, seed=args.seed, limit=args.limit
    )
    sample = f", {args.per_label} per label (seed {args.seed})" if args.per_label else ""
    print(result.engine)
    print(f"trained on {result.train_rows} rows of {args.train}{sample} in {result.train_seconds} s")
    print(format_arguments(result.arguments))
    print(
        "\n".join(
            markdown_table([BenchRow(label="classical", reference=True, measurement=result.measurement)])
        )
    )
    if args.json:
        atomic_write_text(args.json, result.model_dump_json(indent=2) + "\n")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from toolroute.cli.export import add_quantize_flags

    bench = commands.add_parser("bench", help="measure a run at every quantization level, with references")
    bench.add_argument("run", help="a finished training run directory (runs/NAME)")
    bench.add_argument("--data", type=Path, required=True, help="labelled eval JSONL")
    bench.add_argument("--quant", default=DEFAULT_BENCH_LEVELS, help=f"levels ({DEFAULT_BENCH_LEVELS})")
    bench.add_argument("--dist", default="dist", help="where router files are exported or reused (dist)")
    bench.add_argument("--out", help="results directory (default results/RUN_NAME)")
    bench.add_argument("--limit", type=int, help="N requests spread evenly over the data")
    bench.add_argument("--threads", type=int, help="llama.cpp threads (default: the physical cores)")
    bench.add_argument(
        "--no-references", action="store_true", help="skip the untuned-base, naive and classical rows"
    )
    add_quantize_flags(bench)
    bench.set_defaults(handler=_bench)

    modes = commands.add_parser("bench-modes", help="compare prompt modes: train, export and measure each")
    modes.add_argument("config", help="a training config (TOML), as for `toolroute train --config`")
    modes.add_argument("--data", type=Path, required=True, help="labelled eval JSONL")
    modes.add_argument("--modes", default="full,compact,names,none")
    modes.add_argument("--epochs", type=float, help="override the config's epochs")
    modes.add_argument("--max-steps", type=int, help="override: stop each run after N optimizer steps")
    modes.add_argument("--dist", default="dist")
    modes.add_argument("--out", default="results/modes", help="results directory (results/modes)")
    modes.add_argument("--limit", type=int, help="N requests spread evenly over the data")
    modes.add_argument("--threads", type=int)
    modes.set_defaults(handler=_bench_modes)

    classical = commands.add_parser(
        "bench-classical", help="the classical reference (TF-IDF + LR, CRF) trained and measured on your data"
    )
    classical.add_argument("--train", type=Path, required=True, help="labelled training JSONL")
    classical.add_argument("--data", type=Path, required=True, help="labelled eval JSONL")
    classical.add_argument("--tools", help="tools file or module (default: the catalogue the rows carry)")
    classical.add_argument("--per-label", type=int, help="train on K rows per tool (no_tool: per reason)")
    classical.add_argument("--seed", type=int, default=13, help="seed of the --per-label draw (13)")
    classical.add_argument("--limit", type=int, help="N eval requests spread evenly over the data")
    classical.add_argument("--json", type=Path, help="write the full result here")
    classical.set_defaults(handler=_bench_classical)
