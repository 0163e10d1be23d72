"""Full fine-tuning of the top layers (`method = "full"`) on the tiny random model: what trains, what
is saved, how export and the HF-side evaluation read it back (the default base: the slow test)."""

from __future__ import annotations

import pytest

from support import tiny_train_config

pytest.importorskip("torch")

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, TrainerCallback

from toolroute.train.config import TrainConfig
from toolroute.train.recipe import METHOD_LEARNING_RATE, RECIPES, apply_recipe, given_fields
from toolroute.train.run_dir import RunDir, read_loss_csv
from toolroute.train.trainer import train
from toolroute.train.weights import load_trained_model


def _config(tmp_path, tiny_base, small_data, **changes) -> TrainConfig:
    full = dict(name="tiny-full", method="full", learning_rate=3e-3, lora={"top_layers": 1})
    return tiny_train_config(tmp_path / "runs", tiny_base, small_data, **{**full, **changes})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_base, small_data):
    config = _config(tmp_path_factory.mktemp("full"), tiny_base, small_data)
    return config, train(config)


def test_only_the_top_layers_train_and_only_they_are_saved(full_run, tiny_base):
    config, manifest = full_run
    run = RunDir(config.run_dir)
    assert run.is_complete() and not run.adapter.exists()
    saved = load_file(str(run.trained_weights))
    # The tiny base has 2 layers: the top one trains, every one of its weights; nothing else does.
    assert saved and all(name.startswith("model.layers.1.") for name in saved)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    layer = {n: p for n, p in base.named_parameters() if n.startswith("model.layers.1.")}
    assert set(saved) == set(layer)
    assert any(not torch.equal(saved[n], layer[n]) for n in saved)  # it moved
    assert manifest.config["method"] == "full" and manifest.config["learning_rate"] == 3e-3
    losses = [float(r["loss"]) for r in read_loss_csv(run.loss_csv) if r["loss"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5


def test_the_trained_model_is_the_base_with_the_saved_layers(full_run, tiny_base):
    config, manifest = full_run
    run = RunDir(config.run_dir)
    model = load_trained_model(run, manifest, torch.float32)
    base = dict(AutoModelForCausalLM.from_pretrained(str(tiny_base)).named_parameters())
    saved = load_file(str(run.trained_weights))
    for name, parameter in model.named_parameters():
        expected = saved.get(name, base[name])
        assert torch.equal(parameter.detach(), expected), name
    # The tied head is still the (untouched) embedding.
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_a_trained_file_that_does_not_fit_the_base_is_refused(full_run, tmp_path):
    config, manifest = full_run
    run = RunDir(config.run_dir)
    saved = load_file(str(run.trained_weights))
    for label, tensors in (
        ("tensors the base does not have", {**saved, "model.layers.7.mlp.up_proj.weight": torch.zeros(2)}),
        ("is \\(3,\\), the base's", {**saved, "model.layers.1.input_layernorm.weight": torch.zeros(3)}),
    ):
        copy = RunDir(tmp_path / label[:8])
        copy.path.mkdir()
        save_file(tensors, str(copy.trained_weights))
        with pytest.raises(ValueError, match=label):
            load_trained_model(copy, manifest, torch.float32)


def test_export_writes_a_router_from_a_full_run(full_run, tmp_path):
    from llama_cpp import Llama

    from toolroute.export.pipeline import export_run

    config, _ = full_run
    report = export_run(config.run_dir, ["f16"], tmp_path / "dist", parity_prompts=2)
    path = report.files[0].path
    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    assert llm.n_vocab() > 1000
    llm.close()


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 9:
            raise KeyboardInterrupt


def test_an_interrupted_full_run_resumes(tmp_path, tiny_base, small_data):
    config = _config(tmp_path, tiny_base, small_data, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()])
    manifest = train(config, resume=True)
    assert manifest.metrics["steps"] == 18 and RunDir(config.run_dir).trained_weights.is_file()
    # The host's load is recorded beside the step time it may have inflated.
    assert manifest.metrics["load_1min_at_start"] >= 0 and manifest.metrics["load_15min_at_end"] >= 0


def test_a_method_given_without_a_rate_trains_at_its_own_rate(tmp_path):
    def planned(recipe="cpu", **values):
        config = TrainConfig(name="x", data=tmp_path / "d.jsonl", **values)
        planned = apply_recipe(config, RECIPES[recipe], given_fields(config))
        return planned.method, planned.learning_rate

    assert planned() == ("full", 4e-4) == ("full", METHOD_LEARNING_RATE["full"])  # the CPU recipe
    assert planned(method="lora") == ("lora", METHOD_LEARNING_RATE["lora"])
    assert planned(method="lora", learning_rate=5e-5) == ("lora", 5e-5)
    assert planned("gpu") == ("lora", 2e-4)  # the GPU recipe's LoRA rate
    assert planned("gpu", method="full") == ("full", METHOD_LEARNING_RATE["full"])
    assert planned("gpu", method="lora") == ("lora", 2e-4)  # its own method: its own rate
