"""`toolroute train`: validated data -> a LoRA adapter in runs/NAME/ (needs the `train` extra).

The flags are `TrainConfig`'s fields (and `--lora-*` for `LoraSettings`'), with their help and
defaults read from the config classes: one place for both. A flag that is given overrides the
config file; one that is not leaves the file's value, else the recipe's (`train/recipe.py`: the
plan printed before training says which values were chosen and which given).
"""

from __future__ import annotations

import argparse
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from toolroute.cli import require_extra

# The one train-stage import made while the parser is built (every command builds it): the flags
# are these classes' fields. Both modules are pydantic and the standard library only (no torch,
# no tokenizer), which tests/test_cli_lazy.py holds them to; the trainer is imported by `_train`.
from toolroute.train.config import LoraSettings, TrainConfig
from toolroute.train.recipe import RECIPE_FIELDS

# Older, shorter spellings kept working.
_ALIASES = {"learning_rate": ["--lr"]}


def _targets(text: str) -> list[str] | str:
    if text == "all-linear":
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def _argument_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(argparse type, choices) for a field's annotation; Optional[X] reads as X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if any(typing.get_origin(a) is list for a in options):
            return _targets, None
        annotation = options[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(v) for v in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str, [str(m.value) for m in annotation]
    if annotation is Path:
        return str, None
    return annotation, None


def _help(field: FieldInfo, key: str) -> str:
    text = field.description or ""
    if key.replace("lora_", "lora.", 1) in RECIPE_FIELDS:
        return text + " (default: the recipe's)"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, list):
        default = ",".join(default)
    if default is not None and not field.is_required():
        text += f" (default {default})"
    return text


def _fields(model: type[BaseModel], prefix: str) -> list[tuple[str, str, FieldInfo]]:
    """(flag, override key, field) for each scalar field of a config class."""
    return [
        (f"--{prefix}{name.replace('_', '-')}", f"{prefix.replace('-', '_')}{name}", field)
        for name, field in model.model_fields.items()
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
    ]


SETTINGS = _fields(TrainConfig, "") + _fields(LoraSettings, "lora-")


def _train(args: argparse.Namespace) -> int:
    require_extra("train")
    from toolroute.train.config import load_config
    from toolroute.train.trainer import train

    overrides = {key: getattr(args, key) for _, key, _ in SETTINGS}
    manifest = train(load_config(args.config, overrides), resume=args.resume, level_types=_level_types)
    if manifest is not None:
        print(
            json.dumps({"run": str(manifest.name), **manifest.metrics, "wall_time_s": manifest.wall_time_s})
        )
    return 0


def _level_types(base: Path, level: str) -> dict[str, str]:
    """`--quant-aware`'s types: export knows each weight's type at a level, and training sits below
    export, so the command hands export's reader to the trainer (asked only when the run uses it)."""
    from toolroute.export.quantize import level_types

    return level_types(base, level)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="LoRA fine-tune a base model into a router (runs/NAME/)")
    parser.add_argument("--config", help="TOML file with a [train] table (flags override it)")
    for flag, key, field in SETTINGS:
        flags = [flag, *_ALIASES.get(key, [])]
        kind, choices = _argument_type(field.annotation)
        if kind is bool:  # --x / --no-x; absent leaves the file's value
            parser.add_argument(
                *flags, dest=key, action=argparse.BooleanOptionalAction, help=_help(field, key)
            )
        else:
            parser.add_argument(*flags, dest=key, type=kind, choices=choices, help=_help(field, key))
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.set_defaults(handler=_train)
