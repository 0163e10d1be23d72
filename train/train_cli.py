"""`toolroute train`: validated data -> a LoRA adapter in runs/NAME/ (needs the `train` extra)."""

from __future__ import annotations

import argparse
import json

from toolroute.grammars import PromptMode

# Flags whose value (when given) overrides the config file; the rest have the same name in both.
_FLAG_TO_CONFIG = {
    **{name: name for name in ("name", "data", "eval", "tools", "base", "mode", "epochs", "batch_size")},
    **{name: name for name in ("grad_accum", "max_length", "seed", "warmup_ratio", "scheduler", "max_steps")},
    **{
        name: name
        for name in ("runs_dir", "device", "lora_r", "lora_alpha", "lora_dropout", "lora_top_layers")
    },
    "lr": "learning_rate",
}


def _train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ValueError("training needs the train extra: pip install 'toolroute[train]'") from None
    from .config import load_config
    from .trainer import train

    targets = args.lora_targets
    if targets and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    overrides = {key: getattr(args, attribute) for attribute, key in _FLAG_TO_CONFIG.items()}
    overrides["lora_targets"] = targets
    manifest = train(load_config(args.config, overrides), resume=args.resume)
    if manifest is not None:
        print(
            json.dumps({"run": str(manifest.name), **manifest.metrics, "wall_time_s": manifest.wall_time_s})
        )
    return 0


# (flag, type, help) of the settings that override the config file; defaults are TrainConfig's.
_SETTINGS: list[tuple[str, type, str]] = [
    ("--name", str, "run name: the output goes to RUNS_DIR/NAME"),
    ("--data", str, "training data JSONL (any supported format)"),
    ("--eval", str, "eval data JSONL: eval loss each epoch"),
    ("--tools", str, "the catalogue (.json, .py or module); else the rows' own tools"),
    ("--base", str, "default | gemma3-270m | FILE.gguf | HF model dir | hub id"),
    ("--lr", float, "learning rate (2e-4)"),
    ("--epochs", float, "epochs (3)"),
    ("--batch-size", int, "per-device batch (8)"),
    ("--grad-accum", int, "gradient accumulation steps (2)"),
    ("--max-length", int, "token limit; longer rows are dropped (1024)"),
    ("--warmup-ratio", float, "warmup share (0.03)"),
    ("--scheduler", str, "learning-rate schedule (cosine)"),
    ("--seed", int, "seed (13)"),
    ("--max-steps", int, "stop after N optimizer steps (smoke runs)"),
    ("--lora-r", int, "LoRA rank (16)"),
    ("--lora-alpha", int, "LoRA alpha (32)"),
    ("--lora-dropout", float, "LoRA dropout (0.05)"),
    ("--lora-targets", str, "comma list of modules (q_proj,v_proj) or all-linear"),
    ("--lora-top-layers", int, "adapt only the top N layers (faster on a CPU)"),
    ("--runs-dir", str, "where runs go (runs)"),
]


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="LoRA fine-tune a base model into a router (runs/NAME/)")
    parser.add_argument("--config", help="TOML file with a [train] table (flags override it)")
    for flag, kind, help_text in _SETTINGS:
        parser.add_argument(flag, type=kind, help=help_text)
    parser.add_argument("--mode", choices=[m.value for m in PromptMode], help="prompt mode (default compact)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.set_defaults(handler=_train)
