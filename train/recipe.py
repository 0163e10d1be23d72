"""The recipe a run trains with where the user did not say: chosen for the hardware, sized to a time budget.

`toolroute train --name N --data FILE` picks a recipe (`auto`: `gpu` when CUDA is present, else
`cpu`), takes from it every value that was not given (a flag or a config-file key always wins),
then sizes the epochs to `time_budget` minutes from the cost of a row, timed on this host before the
run starts (`calibrate.py`; `measure_step = false`: the stored `ROW_COST`): as
many whole epochs as fit, within the recipe's bounds, or, when even the fewest do not fit (large
data), a step cap (`max_steps`) that does. The plan (rows, steps, epochs, estimated time, what was
chosen and why, what was given) is printed before training and kept in the manifest; the planned
config is the run's stored `config.toml`, so `--resume` continues exactly that plan
(`resumed_config`), on whatever machine.

This module imports no torch: the CLI reads `RECIPE_FIELDS` for its help text.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .config import METHOD_LEARNING_RATE, LoraSettings, TrainConfig, load_config

RecipeName = Literal["cpu", "gpu", "lesson"]


@dataclass(frozen=True)
class RowCost:
    """What one training row costs per epoch on a device kind, and where the number came from."""

    seconds: float  # per row and epoch, with the cpu recipe's LoRA placement
    tokens: float  # mean tokens (prompt + completion) of the rows it was measured on
    source: str
    measured: bool


# The stored estimates, used where a run does not time its own steps (`measure_step` off, given
# epochs, a resume, several processes); scaled by the rows' mean length over `tokens`
# (cost grows about linearly with tokens at these lengths; with `shared_prefix` a long shared
# system turn costs less than that, so long prompts are over- rather than under-estimated).
ROW_COST: dict[str, RowCost] = {
    # Measured on this project's 2-core development CPU (AMD EPYC, no AVX2), SmolLM2-135M, the
    # `make demo` recipe (mode `none`, all-linear LoRA r16 on the top 16 of 30 layers, fast steps,
    # batch 8 x grad-accum 2, 2 torch threads): 4.37 s per optimizer step of 16 rows of
    # examples/customer_support/train.jsonl, whose rows are 117.8 tokens on average in mode `none`;
    # 480 rows x 6 epochs = 180 steps in 786 s (run cs-none-top16-e6, the machine otherwise idle).
    # (The top 8 layers: 3.1 s a step; all 30: 6.0 s. Full fine-tuning of the same 16 layers, the
    # recipe's method since: 4.22 s a step, 180 steps in 760 s; the estimate keeps the larger figure.)
    "cpu": RowCost(0.273, 117.8, "measured: 4.37 s a step of 16 rows on a 2-core CPU, SmolLM2-135M", True),
    # No GPU was lent to this project when the recipe was written: an assumption, not a measurement
    # (a 135M model's step of 16 short rows is dominated by kernel launches, ~0.1-0.2 s on a current
    # data-centre GPU). The plan says so; replace it with a measurement when one is taken.
    "cuda": RowCost(0.01, 117.8, "assumed (not measured on a GPU yet): ~0.16 s a step of 16 rows", False),
}


class Recipe(BaseModel):
    name: RecipeName
    why: str
    values: dict[str, Any]  # TrainConfig fields; LoRA's as "lora.<field>"
    budget_minutes: float | None  # None: the epochs are fixed in `values`, not sized
    epochs: tuple[int, int] | None  # the bounds the budget sizes whole epochs within


# The recipe-governed fields: what `recipe` decides when they are not given.
RECIPE_FIELDS = (
    "method", "mode", "learning_rate", "epochs", "batch_size", "grad_accum", "fast_steps", "shared_prefix",
    "decision_loss", "eval_each_epoch", "lora.r", "lora.alpha", "lora.dropout", "lora.targets",
    "lora.top_layers",
)  # fmt: skip
# Given values outside the recipe that change what the run trains, so the plan lists them too
# or how it is sized (the customer-support example's file sets `quant_aware`).
SHOWN_GIVEN = ("max_steps", "time_budget", "quant_aware", "measure_step")


def _defaults(**changes: Any) -> dict[str, Any]:
    """TrainConfig's defaults of the recipe fields (the CPU recipe), with `changes` (`lora__r` for
    "lora.r"). The epochs are left out: the budget sizes them."""
    values = {}
    for key in RECIPE_FIELDS:
        owner, _, name = key.rpartition(".")
        if key != "epochs":
            default = (LoraSettings if owner else TrainConfig).model_fields[name].get_default()
            values[key] = getattr(default, "value", default)  # an enum as its value
    return {**values, **{key.replace("__", "."): value for key, value in changes.items()}}


RECIPES: dict[str, Recipe] = {
    # The CPU recipe is TrainConfig's defaults: the `make demo` recipe, ~0.27 s a row-epoch here.
    # Epoch bounds: at least 2, because one pass over ~500 rows is only ~30 optimizer steps at this
    # batch, and the demo's eval loss still fell from 0.25 to 0.14 in the second epoch (a third took
    # it to 0.08 and tool accuracy at Q4_K_M from 0.70 to 0.79, BENCHMARKS.md); at most 6, because
    # the budget is a ceiling, not a target: on small data (10-100 rows) a generous budget would
    # otherwise mean dozens of passes over the same rows, memorising them rather than generalising,
    # and no run here has shown gains past a few epochs. Below 2 epochs only as a step cap, when the
    # data is so large (e.g. HWU64's 8,608 rows) that the budget's steps are many already.
    "cpu": Recipe(
        name="cpu",
        why=(
            "no CUDA device: the CPU recipe (prompt mode none, the top 16 layers fully fine-tuned, "
            f"lr {METHOD_LEARNING_RATE['full']:g})"
        ),
        values=_defaults(),
        budget_minutes=15.0,
        epochs=(2, 6),
    ),
    # Stronger where steps are cheap: every layer adapted and the compact prompt (the argument
    # names in view), the lesson's lr for LoRA on all layers, and more passes. On a new user's
    # 7-tool catalogue this placement beat the CPU recipe on the CPU (tool accuracy 0.76 vs 0.70,
    # slot F1 0.37 vs 0.25; issue #14) at 7x the time, which a GPU affords.
    "gpu": Recipe(
        name="gpu",
        why="a CUDA device: the GPU recipe (compact prompt, LoRA on every layer, lr 2e-4, more epochs)",
        values=_defaults(
            method="lora", mode="compact", learning_rate=2e-4, lora__top_layers=None, eval_each_epoch=True
        ),
        budget_minutes=30.0,
        epochs=(3, 10),
    ),
    # The lesson's original defaults, fixed (no budget), to reproduce its runs.
    "lesson": Recipe(
        name="lesson",
        why="the lesson's recipe (q_proj+v_proj LoRA on every layer, compact prompt, lr 2e-4, 3 epochs)",
        values={
            **_defaults(
                method="lora", mode="compact", learning_rate=2e-4, lora__top_layers=None, eval_each_epoch=True
            ),
            "lora.targets": ["q_proj", "v_proj"],
            "epochs": 3.0,
        },
        budget_minutes=None,
        epochs=None,
    ),
}


class PlanError(ValueError):
    """A plan that cannot be made: a resume whose given values contradict the stored run."""


class TrainingPlan(BaseModel):
    """What a run will do and why, printed before training and kept in the manifest."""

    recipe: RecipeName
    recipe_reason: str
    rows: int
    mean_tokens: float
    rows_per_step: int
    steps_per_epoch: int
    steps: int
    epochs: float  # effective: fractional under a step cap
    budget_minutes: float | None
    estimated_minutes: float
    cost: str
    sizing: str
    chosen: dict[str, Any]
    given: dict[str, Any]
    resumed: bool = False
    # The epochs were sized to the budget from a step cost (not given): what a measured cost changes.
    sized_to_budget: bool = False


def _get(config: TrainConfig, key: str) -> Any:
    owner, _, name = key.rpartition(".")
    value = getattr(config.lora if owner else config, name)
    return getattr(value, "value", value)


def given_fields(config: TrainConfig) -> set[str]:
    """The fields a config file or flags gave (LoRA's as "lora.<field>")."""
    given = {name for name in config.model_fields_set if name != "lora"}
    return given | {f"lora.{name}" for name in config.lora.model_fields_set}


def _with(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    data = config.model_dump()
    for key, value in values.items():
        owner, _, name = key.rpartition(".")
        (data[owner] if owner else data)[name] = value
    return TrainConfig.model_validate(data)


def choose_recipe(config: TrainConfig, cuda: bool) -> tuple[Recipe, str]:
    """The recipe and why: the one named, else by the device."""
    if config.recipe != "auto":
        return RECIPES[config.recipe], f"--recipe {config.recipe}: {RECIPES[config.recipe].why}"
    recipe = RECIPES["gpu" if cuda else "cpu"]
    return recipe, f"auto: {recipe.why}"


def apply_recipe(config: TrainConfig, recipe: Recipe, given: set[str]) -> TrainConfig:
    """The recipe's values for every field that was not given (the epochs are sized later)."""
    values = {key: value for key, value in recipe.values.items() if key not in given}
    if "method" in given and "learning_rate" not in given and config.method != recipe.values["method"]:
        values["learning_rate"] = METHOD_LEARNING_RATE[config.method]
    return _with(config, {**values, "recipe": recipe.name})


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int, processes: int = 1) -> int:
    """Optimizer steps in one epoch, as the Trainer counts them (a last partial batch is a step)."""
    batches = math.ceil(rows / (batch_size * processes))
    return max(math.ceil(batches / grad_accum), 1)


def size_epochs(
    rows: int, seconds_per_row: float, budget_s: float, bounds: tuple[int, int], per_epoch_steps: int
) -> tuple[float, int | None]:
    """(epochs, max_steps) for a budget: the most whole epochs within `bounds` that fit, else the
    fewest epochs capped at the steps that fit (max_steps, at least one)."""
    low, high = bounds
    epoch_s = rows * seconds_per_row
    fit = budget_s / epoch_s
    if fit >= low:
        return float(min(math.floor(fit), high)), None
    steps = max(math.floor(budget_s / (epoch_s / per_epoch_steps)), 1)
    if steps >= low * per_epoch_steps:  # rounding: the fewest epochs fit after all
        return float(low), None
    return float(low), steps


def measured_row_cost(
    seconds_per_token: float, seconds_per_step: float, tokens: float, rows_per_step: int, cuda: bool
) -> RowCost:
    """The row cost `calibrate.measure_step_cost` timed here (at `tokens` a row, the run's mean), in
    the form the stored ones take, saying what the stored one would have been."""
    stored = ROW_COST["cuda" if cuda else "cpu"]
    return RowCost(
        seconds=seconds_per_token * tokens,
        tokens=tokens,
        source=(
            f"measured on this host: {seconds_per_step:.2f} s a step of {rows_per_step} rows; "
            f"the stored cost says {stored.seconds * tokens / stored.tokens * rows_per_step:.2f}"
        ),
        measured=True,
    )


def plan_run(
    config: TrainConfig,
    recipe: Recipe,
    reason: str,
    given: set[str],
    rows: int,
    mean_tokens: float,
    cuda: bool,
    resumed: bool = False,
    measured: RowCost | None = None,
) -> tuple[TrainConfig, TrainingPlan]:
    """Size the epochs of a config the recipe was applied to, and say what the run will do.

    `measured`: the row cost timed on this host (`calibrate.py`), which replaces the stored one."""
    cost = measured or ROW_COST["cuda" if cuda else "cpu"]
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by `accelerate launch`
    # Wall seconds a row costs: the processes share each epoch's rows.
    seconds_per_row = cost.seconds * mean_tokens / cost.tokens / processes
    per_epoch = steps_per_epoch(rows, config.batch_size, config.grad_accum, processes)
    rows_per_step = config.batch_size * config.grad_accum * processes
    budget = config.time_budget if "time_budget" in given else recipe.budget_minutes
    changes: dict[str, Any] = {}
    # Epochs fixed by what was given (or by a recipe without a budget), not sized to the budget.
    fixed_epochs = "epochs" in given or "max_steps" in given or recipe.epochs is None or budget is None
    if fixed_epochs:
        epochs, max_steps = config.epochs, config.max_steps
        said = ", ".join(f"{k}={_get(config, k)}" for k in ("epochs", "max_steps") if k in given)
        sizing = f"given ({said})" if said else f"the {recipe.name} recipe's fixed {epochs:g} epochs"
    else:
        epochs, max_steps = size_epochs(rows, seconds_per_row, budget * 60, recipe.epochs, per_epoch)
        changes = {"epochs": epochs, "max_steps": max_steps}
        low, high = recipe.epochs
        one = rows * seconds_per_row
        if max_steps is not None:
            sizing = (
                f"a step cap: {low} epochs would take {_duration(low * one)}, over the {budget:g}-min "
                f"budget, so {max_steps} steps ({max_steps / per_epoch:.2f} epochs); "
                f"--time-budget {math.ceil(low * one / 60)} affords {low}"
            )
        else:
            sizing = (
                f"{epochs:g}: one epoch takes {_duration(one)}; as many as fit in {budget:g} min, "
                f"within {low}-{high}"
            )
            if epochs < high:  # what the recipe's most would cost here (a slow host affords fewer)
                sizing += f"; --time-budget {math.ceil(high * one / 60)} affords {high}"
    if budget is not None and recipe.budget_minutes is not None:
        changes["time_budget"] = float(budget)
    planned = _with(config, changes) if changes else config
    steps = math.ceil(epochs * per_epoch)
    if max_steps is not None:
        steps = min(steps, max_steps)
    estimated = min(steps * rows_per_step, math.ceil(epochs * rows)) * seconds_per_row
    # Only given values can overrun the budget; a step cap's estimate may pass it by a rounding
    # (its steps are sized by the epoch's mean step, which a last partial batch makes smaller).
    if fixed_epochs and budget is not None and estimated > budget * 60:
        sizing += f"; over the {budget:g}-min budget"
    chosen = {key: _get(planned, key) for key in (*RECIPE_FIELDS, "max_steps") if key not in given}
    chosen = {key: value for key, value in chosen.items() if key != "max_steps" or value is not None}
    plan = TrainingPlan(
        recipe=recipe.name,
        recipe_reason=reason,
        rows=rows,
        mean_tokens=round(mean_tokens, 1),
        rows_per_step=rows_per_step,
        steps_per_epoch=per_epoch,
        steps=steps,
        epochs=round(steps / per_epoch, 3) if max_steps is not None else epochs,
        budget_minutes=budget,
        estimated_minutes=round(estimated / 60, 1),
        cost=f"{seconds_per_row:.3f} s a row-epoch at {mean_tokens:.0f} tokens a row ({cost.source})",
        sizing=sizing,
        chosen=chosen,
        given={k: _get(planned, k) for k in (*RECIPE_FIELDS, *SHOWN_GIVEN) if k in given},
        resumed=resumed,
        sized_to_budget=not fixed_epochs,
    )
    return planned, plan


def _duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.1f} min"


def format_plan(plan: TrainingPlan) -> str:
    def listing(values: dict[str, Any]) -> str:
        return ", ".join(f"{key}={value}" for key, value in values.items()) or "nothing"

    budget = f"; budget {plan.budget_minutes:g} min" if plan.budget_minutes is not None else ""
    lines = [
        f"plan: recipe {plan.recipe} ({plan.recipe_reason})"
        + (" (resumed: the interrupted run's stored config)" if plan.resumed else ""),
        f"  rows: {plan.rows} training rows, {plan.mean_tokens:g} tokens on average",
        f"  steps: {plan.steps} of {plan.rows_per_step} rows "
        f"({plan.epochs:g} epochs of {plan.steps_per_epoch})",
        f"  estimated training time: ~{plan.estimated_minutes:g} min, evaluation not included{budget}",
        f"  cost: {plan.cost}",
        f"  epochs: {plan.sizing}",
        f"  chosen by the recipe: {listing(plan.chosen)}",
        f"  given: {listing(plan.given)}",
    ]
    return "\n".join(lines)


def resumed_config(config_path: Path, config: TrainConfig) -> TrainConfig:
    """The interrupted run's stored (planned) config, for `--resume`: every value given now must
    equal the stored one, so the run continues with exactly the plan it started with."""
    if not config_path.is_file():
        return config
    stored = load_config(config_path, {})
    for key in sorted(given_fields(config)):
        now, then = _get(config, key), _get(stored, key)
        if key == "recipe" and now == "auto":
            continue  # `auto` resolved to the stored recipe when the run was planned
        if now != then:
            raise PlanError(
                f"{config_path}: --resume continues the interrupted run as it was planned, but {key} is "
                f"{now!r} now and {then!r} in its stored config; leave it out or train under another --name"
            )
    return stored
