"""SFT of a base model into a router: TRL's SFTTrainer + PEFT LoRA (or full fine-tuning of the top
layers, `weights.py`), completion-only loss.

Rows whose data carries a tool result and the assistant's reply to it train the answer step too,
in the same run and weights: a second prompt/completion row (`sft.py`), loss on the reply only.

The step is `FastStepSFTTrainer`'s (`fast_steps`, the default): the stock loss, with the LM head at
the completion tokens only and the shared system turn run once per batch; `fast_steps = false`
gives TRL's own step.

CUDA when present (bf16), else the CPU (fp32). Runs under `accelerate launch -m toolroute train`
unchanged: the Trainer does the distribution. Output: `runs/NAME/` (see `run_dir.py`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolroute.grammars import Catalogue, load_catalogue
from toolroute.runtime.base_models import packaged_gguf
from toolroute.runtime.chat_template import RouterPrompt
from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.resources import load_average, peak_rss_mb

from .augment import augment_examples, format_counts
from .balance import balance_no_tool
from .bases import Base, file_sha256
from .calibrate import TIMED_STEPS, measure_step_cost
from .checkpoints import last_complete_checkpoint
from .config import TrainConfig
from .copied import decide_copied, describe, parse_overrides
from .decisions import DecisionMarker, tokenized_rows
from .examples import Example
from .formats import read_valid_examples
from .quant_aware import apply_quant_aware, check_roundable, remove_quant_aware
from .recipe import (
    apply_recipe,
    choose_recipe,
    format_plan,
    given_fields,
    measured_row_cost,
    plan_run,
    resumed_config,
)
from .run_dir import DataIdentity, RunDir, RunManifest
from .sft import SftRow, router_prompt, sft_rows
from .weights import freeze_all_but_layers, save_trained, selected_layers


class TrainingError(ValueError):
    pass


def _read(path: Path, catalogue: Catalogue | None) -> tuple[list[Example], Catalogue]:
    result = read_valid_examples(path, catalogue)
    assert result.catalogue is not None  # set from the rows when not given, and there are rows
    return result.examples, result.catalogue


@dataclass
class _Split:
    """One data file, rendered into rows that fit in max_length."""

    name: str
    path: Path
    examples: list[Example]
    rows: list[SftRow]
    dropped: int
    tokens: list[int]  # each kept row's length, prompt + completion

    @classmethod
    def render(
        cls, name: str, path: Path, examples: list[Example], catalogue: Catalogue, prompt: RouterPrompt,
        tokenizer: Any, max_length: int,
    ) -> _Split:  # fmt: skip
        rows = sft_rows(examples, catalogue, prompt)
        lengths = [
            len(tokenizer(r.prompt + r.completion, add_special_tokens=False)["input_ids"]) for r in rows
        ]
        # Truncating would cut the call the loss is computed on: drop such rows, and say so.
        kept = [(row, length) for row, length in zip(rows, lengths, strict=True) if length <= max_length]
        if dropped := len(rows) - len(kept):
            print(f"warning: dropped {dropped} of {len(rows)} {name} rows longer than {max_length} tokens")
        return cls(name, path, examples, [row for row, _ in kept], dropped, [length for _, length in kept])

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens) / len(self.tokens) if self.tokens else 0.0

    def dataset(self, tokenizer: Any = None, marker: DecisionMarker | None = None, suffix: str = "") -> Any:
        """The rows for TRL: prompt/completion text (TRL tokenizes it), or, with a decision
        `marker`, tokenized here with a completion mask on the decided tokens only."""
        from datasets import Dataset

        if marker is None:
            return Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in self.rows])
        return Dataset.from_list(tokenized_rows(self.rows, tokenizer, marker, suffix))

    @property
    def answer_rows(self) -> int:
        return sum(1 for row in self.rows if row.step == "answer")

    def identity(self) -> DataIdentity:
        return DataIdentity(
            path=str(self.path),
            sha256=file_sha256(self.path),
            examples=len(self.examples),
            used=len(self.rows) - self.answer_rows,
            dropped_too_long=self.dropped,
            answers=self.answer_rows,
        )


LevelTypes = Callable[[Path, str], dict[str, str]]


def _level_types(config: TrainConfig, base: Base, level_types: LevelTypes | None) -> dict[str, str] | None:
    """What `quant_aware` rounds each weight to; None when the run does not use it. Asked before
    the run directory is made, so a refusal leaves nothing to resume."""
    if not config.quant_aware:
        return None
    if config.method != "full":
        raise TrainingError(
            "quant_aware needs full fine-tuning (--method full, or --quant-aware off): "
            "LoRA's weights are merged after training"
        )
    if level_types is None:
        raise TrainingError(
            "quant_aware needs the level's tensor types: train(..., level_types=export.quantize.level_types)"
        )
    try:
        types = level_types(Path(base.location), config.quant_aware)
        check_roundable(types, config.quant_aware)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    return types


def _check_resumable(run: RunDir, config: TrainConfig, resume: bool) -> None:
    if run.is_complete():
        raise TrainingError(f"{run.path} is a finished run; train under another --name")
    if run.path.exists() and any(run.path.iterdir()):
        if not resume:
            raise TrainingError(f"{run.path} holds an unfinished run: pass --resume to continue it")
        # No stored config: stopped before its plan was stored (while timing steps); nothing trained.
        if run.config_path.is_file() and run.config_path.read_text(encoding="utf-8") != config.to_toml():
            raise TrainingError(f"{run.path}: --resume needs the same config as the interrupted run")
    elif resume:
        raise TrainingError(f"{run.path}: nothing to resume")


def _lora_config(config: TrainConfig, model: Any) -> Any:
    import torch
    from peft import LoraConfig

    layers = model.config.num_hidden_layers
    top = config.lora.top_layers
    targets = config.lora.targets
    if top and targets == "all-linear":  # PEFT takes a layer subset only with named modules
        targets = sorted(
            {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and "lm_head" not in name}
        )  # fmt: skip
    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=targets,
        layers_to_transform=list(selected_layers(layers, top)) if top else None,
        task_type="CAUSAL_LM",
    )


def _sft_config(config: TrainConfig, run: RunDir, cuda: bool, evaluate: bool) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(run.checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
        logging_steps=1,
        eval_strategy="epoch" if evaluate and config.eval_each_epoch else "no",
        save_strategy="epoch",
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        bf16=cuda,
        use_cpu=not cuda,
        max_length=config.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",  # batches of similar length: little padding
        report_to=[],
        dataloader_num_workers=0,
        # TRL turns checkpointing on by default; a 135M-270M model fits easily, and recomputing
        # the forward pass costs a third more time on a CPU.
        gradient_checkpointing=False,
    )


def make_trainer(
    config: TrainConfig, model: Any, tokenizer: Any, args: Any, train_dataset: Any,
    eval_dataset: Any = None, callbacks: Sequence[Any] = (),
) -> Any:  # fmt: skip
    """The SFT trainer of a config: the fast step (same loss, less work) unless `fast_steps` is off."""
    from trl import SFTTrainer

    from .fast_trainer import FastStepSFTTrainer

    common = dict(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(config, model) if config.method == "lora" else None,
        callbacks=list(callbacks),
    )
    if config.fast_steps:
        return FastStepSFTTrainer(**common, share_prefix=config.shared_prefix)
    return SFTTrainer(**common)


def _loss_logger(losses: list[dict[str, Any]]) -> Any:
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if logs and ("loss" in logs or "eval_loss" in logs):
                losses.append({"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs})

    return LossLog()


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "peft", "trl", "accelerate", "llama-cpp-python")
    return {name: importlib.metadata.version(name) for name in names}


def train(
    config: TrainConfig,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    level_types: LevelTypes | None = None,
) -> RunManifest | None:
    """Train a run; returns its manifest (None on the non-main processes of a distributed run).

    `level_types` (base GGUF, level) -> each weight's llama.cpp type: what `quant_aware` rounds to.
    Export knows the types (`export.quantize.level_types`), and training sits below export, so the
    caller hands the reader in (the CLI does)."""
    import torch
    from transformers import set_seed

    started = time.perf_counter()
    run = RunDir(config.run_dir)
    if resume and not run.is_complete():  # the interrupted run's planned config: the same plan again
        config = resumed_config(run.config_path, config)
    given = given_fields(config)  # what the recipe leaves alone
    _check_resumable(run, config, resume)
    train_examples, catalogue = _read(config.data, load_catalogue(config.tools) if config.tools else None)
    eval_examples = _read(config.eval, catalogue)[0] if config.eval else []
    # On the rows as given, before any augmentation; a bad --copy-arguments fails before the run starts.
    copy_decisions = decide_copied(
        train_examples, catalogue, config.copy_share, parse_overrides(config.copy_arguments, catalogue)
    )
    print("\n".join(["copied arguments:", *describe(copy_decisions)]))
    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not cuda:
        raise TrainingError("--device cuda, but torch sees no CUDA device")
    augmentation = None
    if config.augment:  # after the copy decisions, which are made on the rows as given
        augmentation = augment_examples(
            train_examples, catalogue, config.augment, seed=config.seed, eval_examples=eval_examples
        )
        print(format_counts(augmentation.counts))
        train_examples = [*train_examples, *augmentation.added]
    no_tool_repeated = 0
    if config.no_tool_share:  # after augmentation, which adds call rows only
        train_examples, no_tool_repeated = balance_no_tool(train_examples, config.no_tool_share)
        no_tool_rows = sum(example.target.is_no_tool for example in train_examples)
        print(
            f"no_tool rows: {no_tool_repeated} repeated, {no_tool_rows} of {len(train_examples)} "
            f"({no_tool_rows / len(train_examples):.1%}; asked for {config.no_tool_share:.0%})"
        )
    recipe, reason = choose_recipe(config, cuda)
    config = apply_recipe(config, recipe, given)  # the prompt mode and max length render the rows

    set_seed(config.seed)
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # Every core by default; OMP_NUM_THREADS wins, e.g. 1 on a machine shared with other work,
        # where threads that wait for each other at every op's barrier lose far more than they add.
        torch.set_num_threads(os.cpu_count() or 1)
    base = Base.resolve(config.base)
    tokenizer = base.load_tokenizer()
    template = base.chat_template(tokenizer)
    prompt = router_prompt(catalogue, template, config.mode)
    render = dict(catalogue=catalogue, prompt=prompt, tokenizer=tokenizer, max_length=config.max_length)
    splits = [_Split.render("train", config.data, train_examples, **render)]
    if config.eval:
        splits.append(_Split.render("eval", config.eval, eval_examples, **render))
    if not splits[0].rows:
        raise TrainingError(f"no training row fits in max_length {config.max_length}")
    unsized = config
    sizing = (recipe, reason, given, len(splits[0].rows), splits[0].mean_tokens, cuda)
    config, plan = plan_run(config, *sizing, resumed=resume)
    # A run sized to a budget times its own steps on this host before it starts (calibrate.py):
    # the stored cost is one host's, and hosts differ by 3x. Not when resuming a planned run (its
    # stored config gives the epochs) nor across processes (each would time its own and could plan
    # differently). A run stopped while timing has no stored plan yet, so its resume times again.
    measure = config.measure_step and int(os.environ.get("WORLD_SIZE", "1")) == 1 and plan.sized_to_budget
    if not measure:
        print(format_plan(plan))
    types = _level_types(config, base, level_types)
    run.start()
    if not measure:  # a measured plan is stored once measured
        atomic_write_text(run.config_path, config.to_toml())  # the plan, for --resume
    if answers := splits[0].answer_rows:
        print(f"answer step: {answers} rows (a tool result and the reply to it), trained with the calls")
    evaluate = len(splits) > 1 and bool(splits[1].rows)

    marker = DecisionMarker(catalogue, packaged_gguf()) if config.decision_loss else None
    suffix = template.completion_suffix()
    datasets = [split.dataset(tokenizer, marker, suffix) for split in splits[: 2 if evaluate else 1]]
    if marker is not None:
        marker.close()
        kept = sum(sum(row["completion_mask"]) for row in datasets[0])
        print(f"decision loss: {kept} of {sum(splits[0].tokens)} training tokens take the loss")
    model = base.load_model(torch.bfloat16 if cuda else torch.float32)
    if config.method == "full":
        trained = freeze_all_but_layers(model, config.lora.top_layers)
        layers = config.lora.top_layers or "all"
        print(f"full fine-tuning: {trained:,} parameters train (the top {layers} layers)")
    if types is not None:
        try:
            report = apply_quant_aware(model, types, str(config.quant_aware))
        except ValueError as exc:  # a type it cannot round, or a weight the model lacks
            raise TrainingError(str(exc)) from None
        print(report.summary())
    losses: list[dict[str, Any]] = []
    trainer = make_trainer(
        config,
        model,
        tokenizer,
        _sft_config(config, run, cuda, evaluate),
        datasets[0],
        datasets[1] if evaluate else None,
        callbacks=[_loss_logger(losses), *callbacks],
    )
    if measure:
        print(f"timing {TIMED_STEPS} training steps on this host to size the epochs to the budget ...")
        cost = measure_step_cost(trainer, config.seed)
        measured = measured_row_cost(
            cost.seconds_per_token, cost.seconds_per_step, splits[0].mean_tokens, plan.rows_per_step, cuda
        )
        config, plan = plan_run(unsized, *sizing, measured=measured)
        trainer.args.num_train_epochs = config.epochs
        trainer.args.max_steps = config.max_steps or -1
        atomic_write_text(run.config_path, config.to_toml())  # the plan as measured, for --resume
        print(format_plan(plan))
    # The newest checkpoint written in full: one torn by a kill mid-write is skipped.
    checkpoint = last_complete_checkpoint(run.checkpoints) if resume else None
    load_start = load_average()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    load_end = load_average()
    eval_loss = None
    if evaluate:
        # With `eval_each_epoch` the epoch-end evaluation usually ran at the last step already
        # (minutes on a CPU for a large eval set); evaluate here when it did not (off, or training
        # stopped between epochs).
        step = trainer.state.global_step
        last = next((row for row in reversed(losses) if row.get("eval_loss") is not None), None)
        if last is not None and last.get("step") == step:
            eval_loss = float(last["eval_loss"])
        else:  # the loss logger records it (`evaluate` logs through `on_log`)
            eval_loss = trainer.evaluate()["eval_loss"]
    if not trainer.is_world_process_zero():
        return None

    if types is not None:
        remove_quant_aware(trainer.model)  # the unrounded weights are the run's: export rounds them
    save_trained(trainer.model, run, config.method)
    tokenizer.save_pretrained(str(run.tokenizer))
    run.write_losses(losses)
    train_losses = [row["loss"] for row in losses if "loss" in row]
    steps = trainer.state.global_step
    runtime = result.metrics.get("train_runtime", 0.0)
    manifest = RunManifest(
        name=config.name,
        base=base.identity(model, template),
        catalogue=catalogue.to_openai(),
        catalogue_sha256=catalogue.sha256,
        prompt_mode=config.mode.value,
        system_prompt=prompt.system_prompt,
        chat_template=template.template,
        completion_suffix=template.completion_suffix(),
        copied_arguments=copy_decisions,
        plan=plan,
        augmentation=augmentation.counts if augmentation else None,
        no_tool_repeated=no_tool_repeated,
        answer_rows=splits[0].answer_rows,
        data={split.name: split.identity() for split in splits},
        config=config.model_dump(mode="json"),
        metrics={
            "steps": steps,
            "train_runtime_s": round(runtime, 2),
            "seconds_per_step": round(runtime / max(steps, 1), 3),
            "first_train_loss": train_losses[0] if train_losses else None,
            "final_train_loss": train_losses[-1] if train_losses else None,
            "mean_train_loss": round(result.training_loss, 5),
            "final_eval_loss": eval_loss,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            # The host's load (runnable threads) before the first step (1-minute mean) and over the
            # last 15 minutes of training: a seconds_per_step measured with other work running (load
            # well above the torch threads) is not the recipe's cost on that host.
            "load_1min_at_start": load_start[0] if load_start else None,
            "load_15min_at_end": load_end[2] if load_end else None,
        },
        wall_time_s=round(time.perf_counter() - started, 2),
        device=torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} threads)",
        versions=_versions(),
    )
    run.finish(manifest)
    # A finished run is never resumed, and its checkpoints (weights and optimizer state; about 1 GB
    # an epoch for a full fine-tune of SmolLM2's top 16 layers) would only fill the disk. Removed
    # after the manifest, so that a crash before it still leaves a resumable run.
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    return manifest
