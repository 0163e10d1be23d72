"""Seconds per training step: TRL's stock step against each feature of the fast step, on the real base.

    .venv/bin/python bench/train_step_speed.py --out results/train-step-speed
        [--config examples/customer_support/train.toml] [--modes none,compact]
        [--variants stock,head,head+prefix,head+padding-free,full] [--steps 20] [--threads 2]

The `make demo` recipe (the config: LoRA settings, learning rate, batch x grad-accum = rows per
optimizer step) on its training data, each prompt mode in turn. Variants:

- `stock`: TRL 1.16's SFTTrainer as `toolroute train` built it before the fast step (`fast_steps = false`);
- `head`: the LM head and loss only at the completion tokens (`shared_prefix = false`);
- `head+prefix`: and the system turn every row shares run once per batch (the default);
- `head+padding-free`: the head, with TRL's padding-free batches (one packed row) instead of padding;
- `full`: full fine-tuning (no LoRA) with the default step, at `--full-learning-rate`.

Every variant starts from the same weights (and the same LoRA initialisation), sees the same rows
in the same order (the stock trainer's length-grouped sampler), and gets the same dropout seed at
each step, so their loss curves show whether they train the same model. The steps alternate: step
1 of every variant, then step 2 of every variant, with the order rotating, so that a change in
the load of a shared machine hits all of them alike. A step is what `Trainer` does per optimizer
step: `training_step` per micro-batch, gradient clipping, the optimizer and scheduler steps.
Reported: the median over steps `--first-timed-step`..`--steps` of wall and process-CPU seconds,
tokens (not padding) per second, the ratio to `stock` from the same run, and the load average.
Writes `train_step_speed.md`, `train_step_speed.json` and `train_step_speed.png` under `--out`.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolroute.grammars import Catalogue, load_catalogue
from toolroute.runtime.files import atomic_write_png, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "examples" / "customer_support" / "train.toml"


@dataclass(frozen=True)
class Variant:
    name: str
    fast_steps: bool
    shared_prefix: bool = False
    padding_free: bool = False
    full_finetune: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("stock", fast_steps=False),
        Variant("head", fast_steps=True),
        Variant("head+prefix", fast_steps=True, shared_prefix=True),
        Variant("head+padding-free", fast_steps=True, padding_free=True),
        Variant("full", fast_steps=True, shared_prefix=True, full_finetune=True),
    )
}


class StepRecord(BaseModel):
    step: int
    wall_s: float
    cpu_s: float
    loss: float
    tokens: int  # real tokens (not padding) in the step
    padded_tokens: int  # tensor positions, padding included
    load_1min: float
    waited_s: float = 0.0  # waiting for the machine's load to drop before this step's round


class VariantResult(BaseModel):
    name: str
    learning_rate: float
    trainable_parameters: int
    steps: list[StepRecord]
    median_wall_s: float
    median_cpu_s: float
    tokens_per_s: float
    padding_share: float
    speedup_vs_stock: float | None = None  # stock's median / this median
    step_speedup_vs_stock: float | None = None  # median over the timed steps of stock's time / this time
    max_loss_gap_vs_stock: float | None = None


class ModeResult(BaseModel):
    mode: str
    rows_per_step: int
    variants: list[VariantResult]


class BenchResult(BaseModel):
    config: str
    base: str
    threads: int
    steps: int
    first_timed_step: int
    cpu: str
    load_1min: dict[str, float]
    max_load: float | None
    versions: dict[str, str]
    modes: list[ModeResult]


@dataclass
class _Contender:
    variant: Variant
    trainer: Any
    batches: list[list[dict[str, Any]]]  # micro-batches of each optimizer step, collated by its trainer
    records: list[StepRecord]


def _rows(config: Any, mode: str, tokenizer: Any, template: Any) -> tuple[Any, Catalogue]:
    from datasets import Dataset

    from toolroute.train.formats import InvalidDataError, read_valid_examples
    from toolroute.train.sft import router_prompt, sft_rows

    catalogue = load_catalogue(config.tools) if config.tools else None
    try:
        result = read_valid_examples(config.data, catalogue)
    except InvalidDataError as exc:  # a script: the rows' file:line errors, not a traceback
        raise SystemExit(str(exc)) from None
    catalogue = result.catalogue
    assert catalogue is not None  # given, or taken from the rows, and there are rows
    rows = sft_rows(result.examples, catalogue, router_prompt(catalogue, template, mode))
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in rows])
    return dataset, catalogue


def _trainer(variant: Variant, config: Any, model: Any, tokenizer: Any, dataset: Any, output: Path) -> Any:
    from toolroute.train.fast_trainer import FastStepSFTTrainer
    from toolroute.train.run_dir import RunDir
    from toolroute.train.trainer import _sft_config, make_trainer

    args = _sft_config(config, RunDir(output / variant.name), cuda=False, evaluate=False)
    if variant.padding_free:
        # TRL refuses padding-free with a max_length it cannot enforce; these rows all fit.
        args = replace(args, padding_free=True, max_length=None)
    if variant.full_finetune:
        return FastStepSFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, share_prefix=True
        )
    update = {"fast_steps": variant.fast_steps, "shared_prefix": variant.shared_prefix}
    return make_trainer(config.model_copy(update=update), model, tokenizer, args, dataset)


def _order(trainer: Any, steps: int, rows_per_step: int, micro: int) -> list[list[list[int]]]:
    """Row indices per optimizer step and micro-batch, as the stock trainer's sampler deals them."""
    indices = list(iter(trainer._get_train_sampler()))
    if len(indices) < steps * rows_per_step:
        raise SystemExit(f"{steps} steps of {rows_per_step} rows need {steps * rows_per_step} rows")
    return [
        [
            indices[s * rows_per_step + m : s * rows_per_step + m + micro]
            for m in range(0, rows_per_step, micro)
        ]
        for s in range(steps)
    ]


def wait_for_quiet(max_load: float | None, max_wait_s: float, poll_s: float = 10.0) -> float:
    """Seconds spent waiting until the 1-minute load average is below `max_load` (or `max_wait_s`).

    A shared machine: other jobs' threads preempt the two torch threads, whose barriers then
    wait for a descheduled thread, and a step can take ten times as long. Waiting keeps the rounds
    to the quieter minutes; the load at each step is recorded either way.
    """
    started = time.perf_counter()
    while max_load is not None and os.getloadavg()[0] > max_load:
        if time.perf_counter() - started > max_wait_s:
            break
        time.sleep(poll_s)
    return time.perf_counter() - started


def _step(contender: _Contender, step: int, seed: int) -> StepRecord:
    import torch

    trainer = contender.trainer
    model = trainer.model
    micro_batches = contender.batches[step - 1]
    samples, num_items = trainer.get_batch_samples(
        iter(micro_batches), len(micro_batches), trainer.args.device
    )
    trainer.current_gradient_accumulation_steps = len(samples)
    torch.manual_seed(seed + step)  # the same dropout draws for every variant
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    loss = 0.0
    for inputs in samples:
        loss += float(trainer.training_step(model, dict(inputs), num_items))
    trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(
        int(b["attention_mask"].sum()) if "attention_mask" in b else b["position_ids"].numel()
        for b in samples
    )
    padded = sum(b["input_ids"].numel() for b in samples)
    return StepRecord(
        step=step, wall_s=wall, cpu_s=cpu, loss=loss, tokens=tokens, padded_tokens=padded, load_1min=load
    )


def _summary(contender: _Contender, first: int, learning_rate: float) -> VariantResult:
    timed = [r for r in contender.records if r.step >= first]
    wall = statistics.median(r.wall_s for r in timed)
    tokens = sum(r.tokens for r in timed)
    model = contender.trainer.model
    return VariantResult(
        name=contender.variant.name,
        learning_rate=learning_rate,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        steps=contender.records,
        median_wall_s=round(wall, 3),
        median_cpu_s=round(statistics.median(r.cpu_s for r in timed), 3),
        tokens_per_s=round(tokens / sum(r.wall_s for r in timed), 1),
        padding_share=round(1 - tokens / sum(r.padded_tokens for r in timed), 4),
    )


def run_mode(
    mode: str,
    config: Any,
    variants: Sequence[Variant],
    steps: int,
    first: int,
    full_learning_rate: float,
    max_load: float | None = None,
    max_wait_s: float = 900.0,
) -> ModeResult:
    import torch
    from transformers import set_seed

    from toolroute.train.bases import Base

    config = config.model_copy(update={"mode": mode, "max_steps": steps, "eval": None})
    base = Base.resolve(config.base)
    tokenizer = base.load_tokenizer()
    dataset, _ = _rows(config, mode, tokenizer, base.chat_template(tokenizer))
    loaded = base.load_model(torch.float32)
    rows_per_step, micro = config.batch_size * config.grad_accum, config.batch_size
    contenders: list[_Contender] = []
    with tempfile.TemporaryDirectory(prefix="train-step-speed-") as output:
        for variant in variants:
            learning_rate = full_learning_rate if variant.full_finetune else config.learning_rate
            set_seed(config.seed)  # the same LoRA initialisation for every variant
            trainer = _trainer(
                variant,
                config.model_copy(update={"learning_rate": learning_rate}),
                copy.deepcopy(loaded),
                tokenizer,
                dataset,
                Path(output),
            )
            if not contenders:
                set_seed(config.seed)
                order = _order(trainer, steps, rows_per_step, micro)
            trainer.create_optimizer_and_scheduler(num_training_steps=steps)
            trainer.model.train()
            rows = trainer.train_dataset
            batches = [[trainer.data_collator([rows[i] for i in idx]) for idx in step] for step in order]
            contenders.append(_Contender(variant, trainer, batches, []))
        del loaded
        for step in range(1, steps + 1):
            rotation = (step - 1) % len(contenders)
            waited = wait_for_quiet(max_load, max_wait_s)
            for contender in contenders[rotation:] + contenders[:rotation]:
                contender.records.append(
                    _step(contender, step, config.seed).model_copy(update={"waited_s": waited})
                )
            print(
                f"{mode} step {step}: "
                + ", ".join(f"{c.variant.name} {c.records[-1].wall_s:.2f}s" for c in contenders),
                flush=True,
            )
    results = [
        _summary(c, first, full_learning_rate if c.variant.full_finetune else config.learning_rate)
        for c in contenders
    ]
    stock = next((r for r in results if r.name == "stock"), None)
    for result in results:
        if stock is not None:
            result.speedup_vs_stock = round(stock.median_wall_s / result.median_wall_s, 3)
            # Step by step: the two ran within seconds of each other, under the same load.
            result.step_speedup_vs_stock = round(
                statistics.median(
                    a.wall_s / b.wall_s
                    for a, b in zip(stock.steps, result.steps, strict=True)
                    if b.step >= first
                ),
                3,
            )
            gaps = [abs(a.loss - b.loss) for a, b in zip(result.steps, stock.steps, strict=True)]
            result.max_loss_gap_vs_stock = round(max(gaps), 5)
    return ModeResult(mode=mode, rows_per_step=rows_per_step, variants=results)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(result: BenchResult) -> str:
    lines = [
        "# Training step speed",
        "",
        f"`{result.config}` on base `{result.base}`, {result.threads} torch threads, {result.cpu}; "
        f"median of steps {result.first_timed_step}-{result.steps}; 1-minute load average during the run "
        f"{result.load_1min['min']:.2f} / {result.load_1min['median']:.2f} / {result.load_1min['max']:.2f} "
        "(min / median / max)"
        + (f"; each round waited for a load below {result.max_load}." if result.max_load else "."),
        "",
        "| mode | variant | s/step (wall) | vs stock | vs stock, step by step | CPU s/step | tokens/s "
        "| padding | trainable params | loss at last step | max loss gap vs stock |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in result.modes:
        for v in mode.variants:
            speedup = f"{v.speedup_vs_stock:.2f}x" if v.speedup_vs_stock is not None else "-"
            by_step = f"{v.step_speedup_vs_stock:.2f}x" if v.step_speedup_vs_stock is not None else "-"
            gap = f"{v.max_loss_gap_vs_stock:.4f}" if v.max_loss_gap_vs_stock is not None else "-"
            lines.append(
                f"| {mode.mode} | {v.name} | {v.median_wall_s:.2f} | {speedup} | {by_step} "
                f"| {v.median_cpu_s:.2f} | {v.tokens_per_s:.0f} | {v.padding_share:.1%} "
                f"| {v.trainable_parameters:,} | {v.steps[-1].loss:.4f} | {gap} |"
            )
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in result.versions.items()), ""]
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(result.modes), figsize=(6 * len(result.modes), 8), squeeze=False)
    for column, mode in enumerate(result.modes):
        for v in mode.variants:
            steps = [r.step for r in v.steps]
            style = {"linestyle": "--"} if v.name == "stock" else {}
            axes[0][column].plot(steps, [r.loss for r in v.steps], marker=".", label=v.name, **style)
            axes[1][column].plot(steps, [r.wall_s for r in v.steps], marker=".", label=v.name, **style)
        axes[0][column].set(title=f"mode {mode.mode}: training loss", xlabel="optimizer step", ylabel="loss")
        axes[1][column].set(title=f"mode {mode.mode}: seconds per step", xlabel="optimizer step", ylabel="s")
        for axis in axes[:, column]:
            axis.grid(alpha=0.3)
            axis.legend()
    figure.tight_layout()
    atomic_write_png(figure, path)
    plt.close(figure)


def _versions() -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft", "trl")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .md, .json and .png")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (make demo's)")
    parser.add_argument("--base", help="base model (default: the config's)")
    parser.add_argument("--modes", default="none,compact", help="prompt modes, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per variant")
    parser.add_argument("--first-timed-step", type=int, default=5, help="the median starts at this step")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--full-learning-rate", type=float, default=5e-5, help="learning rate of `full`")
    parser.add_argument(
        "--max-load", type=float, help="before each round, wait until the 1-minute load average is below this"
    )
    parser.add_argument("--max-wait-s", type=float, default=900.0, help="longest wait for --max-load")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if not 1 <= args.first_timed_step <= args.steps:
        parser.error("--first-timed-step must be between 1 and --steps")

    import torch

    from toolroute.train.config import load_config
    from toolroute.train.recipe import METHOD_LEARNING_RATE

    torch.set_num_threads(args.threads)
    config = load_config(args.config, {"base": args.base})
    # The variants other than `full` are LoRA steps (the bar is set on the LoRA settings),
    # at LoRA's rate unless the config gives one.
    given = "learning_rate" in config.model_fields_set
    rate = config.learning_rate if given else METHOD_LEARNING_RATE["lora"]
    config = config.model_copy(update={"method": "lora", "learning_rate": rate})
    variants = [VARIANTS[v] for v in args.variants.split(",")]
    modes = [
        run_mode(
            mode,
            config,
            variants,
            args.steps,
            args.first_timed_step,
            args.full_learning_rate,
            args.max_load,
            args.max_wait_s,
        )
        for mode in args.modes.split(",")
    ]
    loads = [r.load_1min for m in modes for v in m.variants for r in v.steps]
    result = BenchResult(
        config=str(args.config),
        base=config.base,
        threads=args.threads,
        steps=args.steps,
        first_timed_step=args.first_timed_step,
        cpu=f"{_cpu_name()} ({os.cpu_count()} cores)",
        load_1min={"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        max_load=args.max_load,
        versions=_versions(),
        modes=modes,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "train_step_speed.json", result.model_dump_json(indent=2) + "\n")
    atomic_write_text(args.out / "train_step_speed.md", markdown(result))
    plot(result, args.out / "train_step_speed.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
