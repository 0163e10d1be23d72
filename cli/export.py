"""`toolroute export RUN --quant f16,q8_0,... --out dist/` (needs the `train` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from toolroute.cli import require_extra

DEFAULT_LEVELS = "f16,q8_0,q5_k_m,q4_k_m,q4_0"


def _export(args: argparse.Namespace) -> int:
    require_extra("train")
    from toolroute.export.pipeline import export_run, format_report
    from toolroute.export.quantize import parse_levels
    from toolroute.grammars import GrammarOptions

    options = GrammarOptions(
        max_string_length=args.max_string_length, max_reason_length=args.max_reason_length
    )
    levels = parse_levels(args.quant)
    report = export_run(Path(args.run), levels, Path(args.out), args.parity_prompts, options)
    print(format_report(report))
    return 0 if report.tokenizer_matches_base else 1


def register(commands: argparse._SubParsersAction) -> None:
    from toolroute.grammars import GrammarOptions

    defaults = GrammarOptions()
    parser = commands.add_parser("export", help="merge, convert and quantize a run into router GGUF files")
    parser.add_argument("run", help="a finished training run directory (runs/NAME)")
    parser.add_argument("--quant", default=DEFAULT_LEVELS, help=f"levels, comma-separated ({DEFAULT_LEVELS})")
    parser.add_argument("--out", default="dist", help="output directory (dist)")
    parser.add_argument("--parity-prompts", type=int, default=40, help="prompts to compare greedily")
    parser.add_argument("--max-string-length", type=int, default=defaults.max_string_length)
    parser.add_argument("--max-reason-length", type=int, default=defaults.max_reason_length)
    parser.set_defaults(handler=_export)
