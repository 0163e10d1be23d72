"""The default recipe: chosen for the hardware, epochs sized to a time budget, given values win,
the plan printed and stored, and `--resume` continuing exactly the stored plan."""

from __future__ import annotations

import re

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.train.config import load_config
from toolroute.train.recipe import (
    RECIPES,
    ROW_COST,
    PlanError,
    apply_recipe,
    choose_recipe,
    format_plan,
    given_fields,
    plan_run,
    resumed_config,
    size_epochs,
    steps_per_epoch,
)

MEASURED_TOKENS = ROW_COST["cpu"].tokens  # rows as long as the measured ones cost ROW_COST["cpu"].seconds


def _plan(rows: int, tokens: float = MEASURED_TOKENS, cuda: bool = False, path=None, **flags):
    config = load_config(path, {"name": "x", "data": "d.jsonl", **flags})
    given = given_fields(config)
    recipe, reason = choose_recipe(config, cuda)
    return plan_run(apply_recipe(config, recipe, given), recipe, reason, given, rows, tokens, cuda)


def test_budget_arithmetic_whole_epochs_within_bounds_or_a_step_cap():
    # 480 rows at 0.19 s = 91.2 s an epoch, 30 steps of 16 rows.
    assert (
        steps_per_epoch(480, 8, 2) == 30 and steps_per_epoch(10, 8, 2) == 1 and steps_per_epoch(17, 8, 2) == 2
    )
    assert size_epochs(480, 0.19, 15 * 60, (2, 6), 30) == (6.0, None)  # 9.9 fit: the upper bound
    assert size_epochs(480, 0.19, 5 * 60, (2, 6), 30) == (3.0, None)  # 3.3 fit: whole epochs only
    assert size_epochs(480, 0.19, 2 * 60, (2, 6), 30) == (2.0, 39)  # 1.3 fit: 39 steps of 3.04 s
    assert size_epochs(480, 0.19, 3.2 * 60, (2, 6), 30) == (2.0, None)  # 2.1 fit: the lower bound
    assert size_epochs(10, 0.19, 60, (2, 6), 1) == (6.0, None)
    assert size_epochs(8608, 0.19, 0.01, (2, 6), 538) == (2.0, 1)  # never less than one step


def test_the_cpu_default_on_small_middling_and_large_data():
    config, plan = _plan(480)
    assert plan.recipe == "cpu" and config.recipe == "cpu" and config.time_budget == 15.0
    assert (config.epochs, config.max_steps, plan.steps, plan.estimated_minutes) == (6.0, None, 180, 13.1)
    assert config.mode.value == "none" and config.method == "full" and config.learning_rate == 4e-4
    assert config.lora.targets == "all-linear" and config.lora.top_layers == 16
    assert (config.batch_size, config.grad_accum, config.fast_steps) == (8, 2, True)
    assert plan.chosen["epochs"] == 6.0 and plan.given == {}
    _, small = _plan(10)
    assert (small.epochs, small.steps) == (6.0, 6)
    large, plan = _plan(8608)  # HWU64's training folds: 2,350 s an epoch, 538 steps of 4.37 s
    assert (large.epochs, large.max_steps, plan.steps) == (2.0, 206, 206)
    assert plan.epochs == round(206 / 538, 3) and plan.estimated_minutes == 15.0
    assert "a step cap: 2 epochs would take ~78.3 min, over the 15-min budget" in plan.sizing
    # The plan names the budget that buys the lower bound back, and a cap is never "over" it.
    assert plan.sizing.endswith("--time-budget 79 affords 2"), plan.sizing
    _, k70 = _plan(4388, 95.8, time_budget=30)  # HWU64 k = 70: 508 steps, estimated 30.1 min
    assert k70.steps == 508 and k70.sizing.endswith("(1.85 epochs); --time-budget 33 affords 2"), k70.sizing
    # Rows twice as long as the measured ones cost twice as much: 3 epochs fit, not 6.
    assert _plan(480, tokens=2 * MEASURED_TOKENS)[0].epochs == 3.0
    assert _plan(480, time_budget=5)[0].epochs == 2.0


def test_a_gpu_gets_the_stronger_recipe_with_its_own_budget():
    config, plan = _plan(480, cuda=True)
    assert plan.recipe == "gpu" and "CUDA" in plan.recipe_reason and config.time_budget == 30.0
    assert config.mode.value == "compact" and config.lora.top_layers is None and config.learning_rate == 2e-4
    assert config.epochs == RECIPES["gpu"].epochs[1] and config.max_steps is None
    assert "assumed (not measured" in plan.cost
    cpu_anyway, _ = _plan(480, cuda=True, recipe="cpu")
    assert cpu_anyway.lora.top_layers == 16 and cpu_anyway.recipe == "cpu"
    lesson, plan = _plan(480, recipe="lesson")
    assert lesson.lora.targets == ["q_proj", "v_proj"] and lesson.epochs == 3.0 and lesson.time_budget is None
    assert "fixed 3 epochs" in plan.sizing


def test_given_values_win_and_the_plan_says_which_were_given(tmp_path):
    config, plan = _plan(480, epochs=3.0, lora_top_layers=4, mode="compact", learning_rate=5e-4)
    assert (config.epochs, config.lora.top_layers, config.mode.value, config.learning_rate) == (
        3.0,
        4,
        "compact",
        5e-4,
    )
    assert plan.given == {"mode": "compact", "learning_rate": 5e-4, "epochs": 3.0, "lora.top_layers": 4}
    assert set(plan.chosen).isdisjoint(plan.given) and plan.chosen["lora.r"] == 16
    assert plan.sizing == "given (epochs=3.0)" and plan.steps == 90
    assert _plan(8608, epochs=1.0)[1].sizing == "given (epochs=1.0); over the 15-min budget"
    capped, plan = _plan(8608, max_steps=20)
    assert capped.max_steps == 20 and plan.steps == 20 and "epochs" not in plan.given
    # A config file's keys are given too; the slim customer-support file leaves the recipe alone.
    path = tmp_path / "train.toml"
    path.write_text('[train]\nname = "x"\ndata = "d.jsonl"\nepochs = 5\n\n[train.lora]\nr = 8\n')
    config, plan = _plan(480, path=path)
    assert config.epochs == 5.0 and config.lora.r == 8 and plan.given == {"epochs": 5.0, "lora.r": 8}
    # The customer-support file names its data and one choice of its own: quantization-aware
    # training for the level `make demo` ships (picked on its validation rows; not HWU64's).
    example = load_config(ROOT / "examples" / "customer_support" / "train.toml", {})
    assert given_fields(example) == {"name", "data", "eval", "tools", "quant_aware"}
    assert example.quant_aware == "q4_k_m"
    turned_off = load_config(ROOT / "examples" / "customer_support" / "train.toml", {"quant_aware": "off"})
    assert turned_off.quant_aware is None  # `--quant-aware off`
    # The plan lists it with the given values (it changes what the run trains).
    _, example_plan = _plan(480, path=ROOT / "examples" / "customer_support" / "train.toml")
    assert example_plan.given == {"quant_aware": "q4_k_m"}
    assert "given: quant_aware=q4_k_m" in format_plan(example_plan)
    # `make demo-answers`: its own data, six epochs (the answer step needs them), the measured top 8 layers.
    answers = load_config(ROOT / "examples" / "customer_support" / "train_answers.toml", {})
    assert given_fields(answers) == {"name", "data", "eval", "tools", "epochs", "lora.top_layers"}
    assert answers.epochs == 6.0 and answers.lora.top_layers == 8
    # `make bench-hwu64`: the recipe as chosen, with three epochs of folds 1-8 given outright (picked on
    # fold 9; a budget would be sized from each host's measured step and give different runs).
    hwu64 = load_config(ROOT / "examples" / "hwu64" / "train.toml", {})
    assert given_fields(hwu64) == {"name", "data", "eval", "tools", "base", "epochs"}
    hwu64_config, hwu64_plan = _plan(8608, 95.8, path=ROOT / "examples" / "hwu64" / "train.toml")
    assert hwu64_config.epochs == 3.0 and hwu64_plan.steps == 1614 and hwu64_config.method == "full"
    assert not hwu64_plan.sized_to_budget  # so the trainer does not time steps before it starts
    text = format_plan(plan)
    for line in ("plan: recipe cpu (auto: no CUDA device", "steps: 150 of 16 rows", "estimated training time",
                 "chosen by the recipe: method=full, mode=none", "given: epochs=5.0, lora.r=8"):  # fmt: skip
        assert line in text, text


def test_resume_takes_the_stored_plan_and_refuses_a_contradiction(tmp_path):
    planned, _ = _plan(480)
    stored = tmp_path / "config.toml"
    stored.write_text(planned.to_toml())
    again = load_config(None, {"name": "x", "data": "d.jsonl", "recipe": "auto"})
    assert (
        resumed_config(stored, again) == planned
        and resumed_config(stored, again).to_toml() == planned.to_toml()
    )
    # Replanning the stored config chooses nothing: every value is given.
    config, plan = plan_run(planned, RECIPES["cpu"], "stored", given_fields(planned), 9999, 500.0, cuda=True)
    assert config.to_toml() == planned.to_toml() and plan.chosen == {}
    with pytest.raises(PlanError, match=r"epochs is 3\.0 now and 6\.0 in its stored config"):
        resumed_config(stored, load_config(None, {"name": "x", "data": "d.jsonl", "epochs": 3}))
    assert resumed_config(tmp_path / "none.toml", again) is again  # nothing stored: nothing to take


@pytest.fixture(scope="module")
def rows48(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe-data")
    lines = (ROOT / "examples" / "customer_support" / "train.jsonl").read_text().splitlines()[:48]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def test_train_with_nothing_but_data_prints_the_plan_and_stores_it(tmp_path, tiny_base, rows48, capsys):
    pytest.importorskip("torch")
    from toolroute.cli import main as cli_main
    from toolroute.train.run_dir import RunDir

    # 48 rows of ~118 tokens: ~13 s an epoch at the stored cost; a 0.3-minute budget fits 1.4
    # epochs, under the 2 the CPU recipe wants, so a step cap of 4 steps (epochs of 3). The stored
    # cost, not the tiny model's measured one (tests/test_calibrate.py), so the plan is known here.
    command = ["train", "--name", "planned", "--data", str(rows48), "--tools", str(CUSTOMER_SUPPORT_TOOLS),
               "--base", str(tiny_base), "--runs-dir", str(tmp_path), "--time-budget", "0.3",
               "--no-measure-step"]  # fmt: skip
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    assert "plan: recipe cpu (auto: no CUDA device" in out and "steps: 4 of 16 rows" in out
    assert re.search(r"a step cap: 2 epochs would take ~2\d s, over the 0.3-min budget, so 4 steps", out)
    assert "given: time_budget=0.3, measure_step=False" in out
    assert out.index("plan: recipe") < out.index('"run": "planned"')  # before training, not after
    run = RunDir(tmp_path / "planned")
    manifest = run.load_manifest()
    assert manifest.metrics["steps"] == 4 and manifest.plan is not None and manifest.plan.steps == 4
    stored = run.config_path.read_text()
    assert 'recipe = "cpu"' in stored and "max_steps = 4" in stored and "time_budget = 0.3" in stored
    assert manifest.config["lora"]["top_layers"] == 16 and manifest.augmentation is None


def test_resume_reproduces_the_plan_even_where_a_new_plan_would_differ(
    tmp_path, tiny_base, rows48, monkeypatch
):
    pytest.importorskip("torch")
    from transformers import TrainerCallback

    from toolroute.train import recipe
    from toolroute.train.run_dir import RunDir
    from toolroute.train.trainer import train

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    overrides = {"name": "resumed", "data": rows48, "tools": str(CUSTOMER_SUPPORT_TOOLS),
                 "base": str(tiny_base), "runs_dir": tmp_path, "time_budget": 0.7, "seed": 3,
                 "measure_step": False}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, overrides), callbacks=[Interrupt()])
    run = RunDir(tmp_path / "resumed")
    planned = run.config_path.read_text()
    assert "epochs = 3.0" in planned  # 42 s fit 3 epochs of ~13 s: 9 steps
    # Rows now cost 7x as much: a fresh plan would cap the steps; the resumed run keeps its plan.
    monkeypatch.setitem(recipe.ROW_COST, "cpu", recipe.RowCost(1.9, MEASURED_TOKENS, "slower", True))
    manifest = train(load_config(None, overrides), resume=True)
    assert manifest.metrics["steps"] == 9 and run.config_path.read_text() == planned
    assert manifest.plan is not None and manifest.plan.resumed and manifest.plan.chosen == {}
    assert manifest.config["epochs"] == 3.0 and manifest.config["max_steps"] is None
