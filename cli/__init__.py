"""The `toolroute` command: one parser at the top of the layers, one module per stage's commands.

argparse rather than Typer: the runtime install is llama-cpp-python + pydantic only, and an
edge app should not pull click and rich for a CLI it may never run.

Each `toolroute.cli.<stage>` module registers its commands with light imports only (argparse,
pydantic, the grammars, and the option classes some flags are made from: `train.config`,
`train.recipe`, `export.quantize_options`); its handlers import their stage when they run
(tests/test_cli_lazy.py holds every module to this). So the runtime install
runs `route`, `serve`, `inspect`, `grammar`, `prompt` and `schema`, and a command whose stage
needs an extra that is not installed says which one instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from importlib import import_module

from toolroute import __version__
from toolroute.grammars.errors import CatalogueError

# The command modules, in the order their commands are listed.
STAGES = ("grammar", "data", "train", "route", "export", "inspect", "eval", "bench")

# The extra that brings each top-level module a stage may import beyond the runtime install.
EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "gguf", "sentencepiece"), "train"
    ),
    **dict.fromkeys(("outlines", "matplotlib", "tqdm", "sklearn", "sklearn_crfsuite"), "train"),
    **dict.fromkeys(("starlette", "uvicorn", "h11", "anyio"), "serve"),
}
# What `require_extra` checks: the modules each extra exists for.
KEY_MODULES = ("torch", "transformers", "trl", "peft", "gguf", "starlette", "uvicorn")


def require_extra(extra: str) -> None:
    """Fail before any work when a module of `extra` is missing (`main` turns it into one line)."""
    for module in sorted(name for name, owner in EXTRA_OF_MODULE.items() if owner == extra):
        if module in KEY_MODULES and importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def add_copy_rule_flags(parser: argparse.ArgumentParser) -> None:
    """`--no-copy-rule`, `--min-span-mass`, `--min-required-span-mass` and `--min-key-probability`:
    how a loaded router holds arguments to the request (`route`, `serve` and `eval` take the same)."""
    parser.add_argument(
        "--no-copy-rule",
        action="store_true",
        help="decode with the grammar alone: copied arguments are not held to spans of the request",
    )
    parser.add_argument(
        "--min-span-mass",
        type=float,
        default=None,
        help="leave an optional copied argument out when, at some step of its value, the model gives "
        "what the copy rule allows less probability than this (default: the runtime's)",
    )
    parser.add_argument(
        "--min-required-span-mass",
        type=float,
        default=None,
        help="the same for a required copied argument: its tool leaves the choice and the request "
        "is decoded again (default: the runtime's)",
    )
    parser.add_argument(
        "--min-key-probability",
        type=float,
        default=None,
        help="leave out an optional argument the model wrote with less probability than this and "
        "decode again (the key rule; default 0: off)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolroute",
        description="Fine-tune a small language model into an offline, grammar-constrained tool router.",
    )
    parser.add_argument("--version", action="version", version=f"toolroute {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for stage in STAGES:
        import_module(f"{__name__}.{stage}").register(commands)
    return parser


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The message for a module that an uninstalled extra would bring, else None."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (
        f"this command needs the '{extra}' extra ({module} is not installed): "
        f"pip install 'toolroute[{extra}]'"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CatalogueError, FileNotFoundError, ValueError) as exc:
        print(f"toolroute {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (message := missing_extra(exc)) is None:
            raise
        print(f"toolroute {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
