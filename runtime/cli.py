"""The `toolroute` command.

argparse rather than Typer: the runtime install is llama-cpp-python + pydantic only, and an
edge app should not pull click and rich for a CLI it may never run. Each stage registers its
own subcommands; a subcommand is listed only once it works.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from toolroute import __version__
from toolroute.export.bench_cli import register as register_bench_commands
from toolroute.export.cli import register as register_export_command
from toolroute.grammars.cli import register as register_grammar_commands
from toolroute.grammars.errors import CatalogueError
from toolroute.runtime.eval_cli import register as register_eval_command
from toolroute.runtime.inspect_cli import register as register_inspect_command
from toolroute.runtime.route_cli import register as register_route_commands
from toolroute.train.cli import register as register_data_commands
from toolroute.train.train_cli import register as register_train_command


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolroute",
        description="Fine-tune a small language model into an offline, grammar-constrained tool router.",
    )
    parser.add_argument("--version", action="version", version=f"toolroute {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_grammar_commands(commands)
    register_data_commands(commands)
    register_train_command(commands)
    register_route_commands(commands)
    register_export_command(commands)
    register_inspect_command(commands)
    register_eval_command(commands)
    register_bench_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CliError, CatalogueError, FileNotFoundError, ValueError) as exc:
        print(f"toolroute {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
