"""A budget-sized run times its own steps on this host before sizing its epochs (train/calibrate.py):
the measurement leaves the run exactly as it would have been, and the plan is sized from it. The
real default base is timed by `make demo` (BENCHMARKS.md, "The step cost, measured on the host")."""

from __future__ import annotations

import random

import pytest

from support import tiny_train_config

torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from toolroute.grammars import load_catalogue  # noqa: E402
from toolroute.train.bases import Base  # noqa: E402
from toolroute.train.calibrate import TIMED_STEPS, _micro_batches, measure_step_cost  # noqa: E402
from toolroute.train.config import TrainConfig  # noqa: E402
from toolroute.train.formats import read_examples  # noqa: E402
from toolroute.train.recipe import RECIPES, apply_recipe, given_fields, measured_row_cost, plan_run  # noqa: E402
from toolroute.train.run_dir import RunDir, RunManifest, read_loss_csv  # noqa: E402
from toolroute.train.sft import router_prompt, sft_rows  # noqa: E402
from toolroute.train.trainer import _sft_config, make_trainer, train  # noqa: E402


def _trainer(config: TrainConfig):
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    catalogue = load_catalogue(config.tools)
    prompt = router_prompt(catalogue, Base.resolve(config.base).chat_template(tokenizer), config.mode)
    rows = sft_rows(read_examples(config.data, catalogue).examples, catalogue, prompt)
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.float32)
    args = _sft_config(config, RunDir(config.run_dir), cuda=False, evaluate=False)
    return make_trainer(config, model, tokenizer, args, dataset)


def test_the_measurement_moves_no_weight_and_puts_back_what_the_run_reads(tmp_path, tiny_base, small_data):
    config = tiny_train_config(
        tmp_path, tiny_base, small_data, method="full", lora={"top_layers": 1}, grad_accum=2
    )
    trainer = _trainer(config)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    torch.manual_seed(123)
    random.seed(5)
    expected_draws = (torch.rand(3), random.random())
    torch.manual_seed(123)
    random.seed(5)
    metrics = {mode: dict(values) for mode, values in trainer._metrics.items()}

    cost = measure_step_cost(trainer, seed=7)

    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter.detach(), before[name]), name  # bit for bit: rate 0 adds zero
        assert parameter.grad is None, name
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]
    assert {mode: dict(values) for mode, values in trainer._metrics.items()} == metrics
    # Two timed steps of batch x grad-accum rows, the warm-up one not counted.
    assert cost.rows == TIMED_STEPS * 8 * 2 and cost.tokens > cost.rows
    assert cost.seconds_per_step > 0 and cost.seconds_per_token == pytest.approx(
        cost.seconds_per_step * TIMED_STEPS / cost.tokens
    )


def test_micro_batches_are_drawn_at_random_cut_by_length_and_repeat_rows_only_when_too_few():
    lengths = [(i * 37) % 101 for i in range(100)]
    batches = _micro_batches(lengths, batch_size=4, count=6, seed=13)
    assert len(batches) == 6 and all(len(batch) == 4 for batch in batches)
    drawn = [i for batch in batches for i in batch]
    assert len(set(drawn)) == 24  # no row twice while the data has enough
    # Each micro-batch is a run of the drawn rows sorted by length (little padding): ordered by their
    # shortest rows, no batch's longest row is longer than the next one's shortest.
    spans = sorted((min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in batches)
    assert all(longest <= spans[k + 1][0] for k, (_, longest) in enumerate(spans[:-1]))
    assert _micro_batches(lengths, 4, 6, seed=13) == batches  # seeded
    few = _micro_batches([5, 9, 7], batch_size=4, count=3, seed=1)
    assert [len(batch) for batch in few] == [4, 4, 4] and set(i for b in few for i in b) == {0, 1, 2}


def _planned(measured=None, rows=480, **given_values):
    config = TrainConfig(name="x", data="d.jsonl", **given_values)
    given = given_fields(config)
    recipe = RECIPES["cpu"]
    config = apply_recipe(config, recipe, given)
    return plan_run(config, recipe, "test", given, rows, 117.8, cuda=False, measured=measured)


def test_a_measured_cost_sizes_the_epochs_and_the_plan_says_so():
    # The development CPU's stored cost: 4.37 s a step, six epochs of 480 rows in 15 minutes.
    stored_config, stored_plan = _planned()
    assert stored_config.epochs == 6 and "stored" not in stored_plan.cost and stored_plan.sized_to_budget
    assert not _planned(epochs=2)[1].sized_to_budget  # given epochs: nothing for a measurement to size
    # A host that takes 8.8 s a step (measured on a 2-core AVX2 EPYC) affords three.
    slow = measured_row_cost(8.8 / (16 * 117.8), 8.8, 117.8, 16, cuda=False)
    config, plan = _planned(measured=slow)
    assert config.epochs == 3 and plan.steps == 90 and plan.estimated_minutes == pytest.approx(13.2, abs=0.1)
    assert "measured on this host: 8.80 s a step of 16 rows; the stored cost says 4.37" in plan.cost
    # ... and the plan names the budget that buys the recipe's six epochs back.
    assert plan.sizing.endswith("as many as fit in 15 min, within 2-6; --time-budget 27 affords 6"), (
        plan.sizing
    )
    # A faster host gets the recipe's most, not more.
    fast = measured_row_cost(1.0 / (16 * 117.8), 1.0, 117.8, 16, cuda=False)
    assert _planned(measured=fast)[0].epochs == 6


def _budgeted(tmp_path, tiny_base, small_data, **changes) -> TrainConfig:
    """The tiny run with its epochs left to a 5-minute budget (the recipe sizes them)."""
    config = tiny_train_config(
        tmp_path, tiny_base, small_data, time_budget=5.0, lora={"top_layers": 1}, **changes
    )
    return TrainConfig(**{key: getattr(config, key) for key in config.model_fields_set if key != "epochs"})


def test_a_run_with_a_budget_times_its_steps_and_a_run_with_given_epochs_does_not(
    tmp_path, tiny_base, small_data, capsys
):
    budgeted = _budgeted(tmp_path, tiny_base, small_data, name="budgeted")
    assert "epochs" not in given_fields(budgeted)
    manifest = train(budgeted)
    out = capsys.readouterr().out
    assert f"timing {TIMED_STEPS} training steps on this host" in out
    assert "measured on this host" in manifest.plan.cost
    # The plan the run trained is the stored one, so --resume continues it.
    stored = (budgeted.run_dir / "config.toml").read_text()
    assert f"epochs = {manifest.plan.epochs}" in stored
    steps = [row for row in read_loss_csv(RunDir(budgeted.run_dir).loss_csv) if row["loss"]]
    assert len(steps) == manifest.plan.steps

    given = tiny_train_config(tmp_path, tiny_base, small_data, name="given", epochs=1, time_budget=5.0)
    manifest = train(given)
    assert "timing" not in capsys.readouterr().out and "measured on this host" not in manifest.plan.cost
    assert isinstance(manifest, RunManifest)


def test_measure_step_off_keeps_the_stored_cost(tmp_path, tiny_base, small_data, capsys):
    manifest = train(_budgeted(tmp_path, tiny_base, small_data, name="off", measure_step=False))
    assert "timing" not in capsys.readouterr().out
    assert "measured on this host" not in manifest.plan.cost
    assert manifest.plan.given["measure_step"] is False


def test_the_run_after_the_measurement_is_the_run_without_it(tmp_path, tiny_base, small_data):
    config = _budgeted(tmp_path, tiny_base, small_data, name="measured")
    measured = train(config)
    assert "measured on this host" in measured.plan.cost
    # The same plan given outright, nothing timed: every logged loss is the same, bit for bit.
    plain = _budgeted(tmp_path, tiny_base, small_data, name="plain", measure_step=False)
    plain = TrainConfig(
        **{**{key: getattr(plain, key) for key in plain.model_fields_set}, "epochs": measured.plan.epochs}
    )
    train(plain)
    losses = [
        [row["loss"] for row in read_loss_csv(RunDir(config.run_dir).loss_csv) if row["loss"]]
        for config in (config, plain)
    ]
    assert len(losses[0]) == measured.plan.steps and losses[0] == losses[1]


def test_a_run_stopped_while_timing_stores_no_plan_and_its_resume_times_again(
    tmp_path, tiny_base, small_data, monkeypatch
):
    from toolroute.train import trainer as trainer_module

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    config = _budgeted(tmp_path, tiny_base, small_data, name="stopped")
    monkeypatch.setattr(trainer_module, "measure_step_cost", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    run = RunDir(config.run_dir)
    # The stored-cost plan is not left behind for a resume to follow on this host.
    assert not run.is_complete() and not run.config_path.exists()
    monkeypatch.undo()
    manifest = train(config, resume=True)
    assert "measured on this host" in manifest.plan.cost
    assert f"epochs = {manifest.plan.epochs}" in run.config_path.read_text()
