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


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="LoRA fine-tune a base model into a router (runs/NAME/)")
    parser.add_argument("--config", help="TOML file with a [train] table (flags override it)")
    parser.add_argument("--name", help="run name: the output goes to RUNS_DIR/NAME")
    parser.add_argument("--data", help="training data JSONL (any supported format)")
    parser.add_argument("--eval", help="eval data JSONL: eval loss each epoch")
    parser.add_argument("--tools", help="the catalogue (.json, .py or module); else the rows' own tools")
    parser.add_argument("--base", help="default | gemma3-270m | FILE.gguf | HF model dir | hub id")
    parser.add_argument("--mode", choices=[m.value for m in PromptMode], help="prompt mode (default compact)")
    parser.add_argument("--lr", type=float, help="learning rate (2e-4)")
    parser.add_argument("--epochs", type=float, help="epochs (3)")
    parser.add_argument("--batch-size", type=int, help="per-device batch (8)")
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation steps (2)")
    parser.add_argument("--max-length", type=int, help="token limit; longer rows are dropped (1024)")
    parser.add_argument("--warmup-ratio", type=float, help="warmup share (0.03)")
    parser.add_argument("--scheduler", help="learning-rate schedule (cosine)")
    parser.add_argument("--seed", type=int, help="seed (13)")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps (smoke runs)")
    parser.add_argument("--lora-r", type=int, help="LoRA rank (16)")
    parser.add_argument("--lora-alpha", type=int, help="LoRA alpha (32)")
    parser.add_argument("--lora-dropout", type=float, help="LoRA dropout (0.05)")
    parser.add_argument("--lora-targets", help="comma list of modules (q_proj,v_proj) or all-linear")
    parser.add_argument("--lora-top-layers", type=int, help="adapt only the top N layers (faster on a CPU)")
    parser.add_argument("--runs-dir", help="where runs go (runs)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.set_defaults(handler=_train)
