"""Training configuration as data: defaults < the recipe < config file (TOML) < command-line flags.

The field defaults are the CPU recipe (`recipe.py`): prompt mode `none`, full fine-tuning of the
top 16 layers at lr 4e-4 (`method = "lora"`: all-linear LoRA r=16, alpha=32, dropout 0.05 on the
same layers, at lr 1e-3), cosine, 3% warmup, batch 8 x grad-accum 2, max length 1024, fast steps;
the epochs are sized to a time budget when not given. A value that
was given (file or flag) always wins over the recipe: `model_fields_set` says which were. The
effective (planned) config is saved in the run directory, and a resumed run takes it from there.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from toolroute.grammars import PromptMode

# The rate a method trains at: the default method's is the default rate, and a method given without
# a rate trains at its own (`recipe.apply_recipe`; a recipe's own rate belongs to its own method).
# Full fine-tuning moves every weight of the trained layers, not a rank-16 update, so it has its own
# rate (4e-4 picked from 5e-5, 1e-4, 2e-4 and 4e-4 on the customer-support validation rows,
# BENCHMARKS.md "The full fine-tune's learning rate"; higher was not tried); 1e-3 is the CPU
# recipe's LoRA rate from before.
METHOD_LEARNING_RATE: dict[str, float] = {"full": 4e-4, "lora": 1e-3}


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="modules to adapt: a comma list (q_proj,v_proj) or all-linear"
    )
    # 16 of SmolLM2-135M's 30 layers: picked on the customer-support validation rows against 8 and
    # all 30 (BENCHMARKS.md, "LoRA placement"): 8 left the enum arguments half learned; all 30 did
    # better still at six epochs but took 18 minutes, and at the four epochs the CPU recipe's 15
    # minutes allow it fell behind 16.
    top_layers: int | None = Field(
        16, ge=1, description="adapt only the top N transformer layers: a shorter backward pass on a CPU"
    )


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="run name: the output goes to RUNS_DIR/NAME")
    data: Path = Field(description="training data JSONL (any supported format)")
    eval: Path | None = Field(None, description="eval data JSONL: its loss at the end (or each epoch)")
    tools: str | None = Field(
        None, description="the catalogue (.json, .py or module); else the rows' own tools"
    )
    base: str = Field("default", description="default | gemma3-270m | FILE.gguf | HF model dir | hub id")
    recipe: Literal["auto", "cpu", "gpu", "lesson"] = Field(
        "auto", description="what the values not given default to; auto: gpu with CUDA, else cpu"
    )
    time_budget: float | None = Field(
        None, gt=0, description="minutes of training the recipe sizes the epochs to (cpu 15, gpu 30)"
    )
    mode: PromptMode = Field(PromptMode.none, description="prompt mode")
    # `full`: every weight of the layers `lora.top_layers` selects (the embedding, tied to the
    # output head, and the final norm stay the base's; `weights.py`). The CPU recipe's since it beat
    # LoRA on the same layers at the same step time (BENCHMARKS.md, "Full fine-tuning"). A method
    # given without a rate trains at that method's (`METHOD_LEARNING_RATE`).
    method: Literal["lora", "full"] = Field(
        "full", description="full: every weight of the top layers; lora: adapters on them"
    )
    lora: LoraSettings = LoraSettings()
    learning_rate: float = Field(METHOD_LEARNING_RATE["full"], gt=0, description="learning rate")
    epochs: float = Field(2.0, gt=0, description="epochs")
    scheduler: str = Field("cosine", description="learning-rate schedule")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="warmup share")
    batch_size: int = Field(8, ge=1, description="per-device batch")
    grad_accum: int = Field(2, ge=1, description="gradient accumulation steps")
    max_length: int = Field(1024, ge=16, description="token limit; longer rows are dropped")
    seed: int = Field(13, description="seed")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (the recipe caps large data with it)"
    )
    runs_dir: Path = Field(Path("runs"), description="where runs go")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    copy_share: float = Field(
        0.95, gt=0, le=1, description="a string argument is copied when this share of its values are spans"
    )
    copy_arguments: list[str] | None = Field(
        None, description="force copied arguments: tool.argument=on|off,... (over inference and marks)"
    )
    fast_steps: bool = Field(
        True, description="LM head and loss at the completion tokens only: the stock loss, less work"
    )
    # Off in the CPU recipe: each evaluation of the eval rows costs about 30 s per 240 rows on a
    # 2-core CPU (3 of `make demo`'s 15 minutes at six epochs); the final eval loss is kept.
    eval_each_epoch: bool = Field(
        False, description="eval loss after every epoch (a curve); off: once, after training"
    )
    # On by default: the stored step cost is one host's (train/calibrate.py); ~3 steps of time.
    measure_step: bool = Field(
        True,
        description="time a few steps on this host before sizing the epochs to the time budget "
        "(off: the stored cost of the development CPU)",
    )
    shared_prefix: bool = Field(
        True, description="with fast steps: the system turn all rows share, run once per batch"
    )
    augment: int = Field(
        0, ge=0, description="new rows per training row by swapping span values (toolroute data augment)"
    )
    no_tool_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="repeat no_tool rows until they are at least this share of the rows (0: as given)",
    )
    decision_loss: bool = Field(
        False,
        description="loss only on the completion tokens the model decides (not those the grammar forces)",
    )
    # Off by default: see train/quant_aware.py and BENCHMARKS.md "Quantization-aware fine-tuning".
    # The customer-support example turns it on, so `off` is how a flag turns a file's choice off.
    quant_aware: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]+$",
        description="full fine-tuning against the weights this export level will hold (q4_k_m, q8_0, ...; "
        "off: plain training, where a config file turns it on)",
    )

    @field_validator("quant_aware", mode="before")
    @classmethod
    def _quant_aware(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.lower() in ("off", "none") else value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return PromptMode(value) if isinstance(value, str) else value

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    def to_toml(self) -> str:
        """The effective config, in the same form `load_config` reads."""
        data = self.model_dump(mode="json", exclude_none=True)
        lora = data.pop("lora")
        lines = ["[train]"] + [f"{key} = {_toml_value(value)}" for key, value in data.items()]
        lines += ["", "[train.lora]"] + [f"{key} = {_toml_value(value)}" for key, value in lora.items()]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the `[train]` table of a TOML file, then the overrides (None = not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the config: {exc}") from None
        values = dict(document.get("train", {}))
    lora = dict(values.pop("lora", {}))
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("lora_"):
            lora[key.removeprefix("lora_")] = value
        else:
            values[key] = value
    try:
        return TrainConfig(**values, lora=LoraSettings(**lora))
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}invalid training config: {problems}") from None
