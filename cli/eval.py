"""`toolroute eval --model (runs/NAME | FILE.gguf) --data eval.jsonl` (see `toolroute.bench.eval_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from toolroute.cli import add_copy_rule_flags


def _eval(args: argparse.Namespace) -> int:
    # The bench stage is imported here, not when the parser is built (every command builds it).
    from toolroute.bench.eval_run import run_eval
    from toolroute.bench.reporting import MAX_RISK

    if args.max_risk is None:
        args.max_risk = MAX_RISK
    return run_eval(args)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="score a router GGUF or a training run on labelled data")
    parser.add_argument(
        "--model", required=True, help="a router GGUF, or a training run directory (runs/NAME)"
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="labelled JSONL (any format `data check` reads)"
    )
    parser.add_argument(
        "--unconstrained", action="store_true", help="free greedy generation, parsed afterwards (no grammar)"
    )
    parser.add_argument(
        "--pick-threshold",
        action="store_true",
        help="pick on these (validation) rows the abstention rule and the call score and threshold that "
        "keep silent errors <= --max-risk, and write them into the GGUF",
    )
    add_copy_rule_flags(parser)
    parser.add_argument(
        "--no-name-focus",
        action="store_true",
        help="split every name's probability at the decision point (the full name scorer) instead of "
        "reading the chosen tool's and no_tool's along the decoding (the runtime's default)",
    )
    parser.add_argument(
        "--max-risk",
        type=float,
        default=None,  # bench.reporting.MAX_RISK, filled in by `_eval`
        help="silent-error rate the threshold keeps (default 0.01)",
    )
    parser.add_argument("--limit", type=int, help="N examples spread evenly over the file")
    parser.add_argument("--out", help="report directory (default: beside the model)")
    parser.add_argument("--threads", type=int, help="CPU threads for llama.cpp (default: the physical cores)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    parser.set_defaults(handler=_eval)
