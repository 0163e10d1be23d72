"""`toolroute export RUN --quant f16,q8_0,... --out dist/` (needs the `train` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from toolroute.cli import require_extra

if TYPE_CHECKING:
    from toolroute.export.quantize_options import QuantizeOptions

DEFAULT_LEVELS = "f16,q8_0,q5_k_m,q4_k_m,q4_0"


def quantize_options(args: argparse.Namespace) -> QuantizeOptions:
    """The quantization flags (shared with `toolroute bench`) as options."""
    from toolroute.export.quantize_options import QuantizeOptions

    if args.plain_quant:
        return QuantizeOptions.plain()
    if args.imatrix_rows < 0:
        raise ValueError(f"--imatrix-rows must be 0 or more, got {args.imatrix_rows}")
    return QuantizeOptions(
        token_embedding=args.token_embedding,
        imatrix_rows=args.imatrix_rows,
        replace_fallbacks=not args.llama_fallbacks,
        pick_imatrix=not args.always_imatrix,
    )


def add_quantize_flags(parser: argparse.ArgumentParser) -> None:
    from toolroute.export.quantize_options import (
        DEFAULT_EMBEDDING_TYPE,
        DEFAULT_IMATRIX_ROWS,
        EMBEDDING_TYPE_NAMES,
    )

    parser.add_argument(
        "--token-embedding", choices=EMBEDDING_TYPE_NAMES, default=DEFAULT_EMBEDDING_TYPE,
        help=f"type of the token embedding (= the tied output head) in every quantized level; "
        f"'level' leaves it to llama.cpp ({DEFAULT_EMBEDDING_TYPE})",
    )  # fmt: skip
    parser.add_argument(
        "--imatrix-rows", type=int, default=DEFAULT_IMATRIX_ROWS,
        help=f"training rows for the importance matrix; 0 quantizes without one ({DEFAULT_IMATRIX_ROWS})",
    )  # fmt: skip
    parser.add_argument(
        "--always-imatrix", action="store_true",
        help="keep the importance matrix in every quantized level (default: each level is made with "
        "and without it, and the file closer to F16 on the parity prompts is kept)",
    )  # fmt: skip
    parser.add_argument(
        "--llama-fallbacks", action="store_true",
        help="keep llama.cpp's Q5_1 for K-quant weights whose rows are not a multiple of 256 "
        "(default: Q5_0, which keeps Q5_K_M's accuracy on the 576-wide default base)",
    )  # fmt: skip
    parser.add_argument(
        "--plain-quant", action="store_true",
        help="llama.cpp's defaults: no importance matrix, the embedding type left to the level, "
        "its Q5_1 fallbacks",
    )  # fmt: skip


def _export(args: argparse.Namespace) -> int:
    require_extra("train")
    from toolroute.export.pipeline import export_run, format_report
    from toolroute.export.quantize import parse_levels
    from toolroute.grammars import GrammarOptions

    options = GrammarOptions(
        max_string_length=args.max_string_length, max_reason_length=args.max_reason_length
    )
    levels = parse_levels(args.quant)
    report = export_run(
        Path(args.run), levels, Path(args.out), args.parity_prompts, options, quantize_options(args)
    )
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
    add_quantize_flags(parser)
    parser.set_defaults(handler=_export)
