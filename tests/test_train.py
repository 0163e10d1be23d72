"""LoRA SFT with TRL + PEFT on a tiny random model (the default base runs in the slow test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, tiny_train_config

pytest.importorskip("torch")

from transformers import TrainerCallback

from toolroute.train.config import TrainConfig, load_config
from toolroute.train.formats import InvalidDataError
from toolroute.train.run_dir import IncompleteRun, RunDir, read_loss_csv
from toolroute.train.trainer import TrainingError, train


def _config(tmp_path, tiny_base, small_data, **changes) -> TrainConfig:
    return tiny_train_config(tmp_path / "runs", tiny_base, small_data, **changes)


def test_tiny_model_trains_loss_falls_and_manifest_is_complete(tmp_path, tiny_base, small_data):
    # All linear layers: a random 2-layer model learns little through q/v alone in 12 steps.
    config = _config(tmp_path, tiny_base, small_data, lora={"targets": "all-linear"})
    manifest = train(config)
    run = RunDir(config.run_dir)
    assert run.is_complete() and not run.marker.exists()
    assert (run.adapter / "adapter_config.json").is_file()
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert (run.tokenizer / "tokenizer_config.json").is_file()
    assert run.loss_png.stat().st_size > 1000
    rows = read_loss_csv(run.loss_csv)
    train_losses = [float(r["loss"]) for r in rows if r["loss"]]
    eval_losses = [float(r["eval_loss"]) for r in rows if r["eval_loss"]]
    assert len(train_losses) == manifest.metrics["steps"] == 12
    assert len(eval_losses) == 1  # once, after training: the CPU recipe's `eval_each_epoch` is off
    assert sum(train_losses[-3:]) / 3 < sum(train_losses[:3]) / 3 - 0.5
    # Everything the export and the runtime need to rebuild the same prompt is recorded.
    assert manifest.base.kind == "hf" and manifest.base.architecture == "LlamaForCausalLM"
    assert len(manifest.base.sha256) == 64 and manifest.base.parameters > 0
    assert manifest.prompt_mode == "none" and manifest.system_prompt.startswith("You are a tool router.")
    assert manifest.completion_suffix == "<|im_end|>"
    assert [t["function"]["name"] for t in manifest.catalogue] == [
        "track_order",
        "request_refund",
        "escalate",
    ]
    assert manifest.data["train"].examples == 48 and manifest.data["eval"].used == 16
    assert manifest.config["lora"]["targets"] == "all-linear"
    assert manifest.metrics["final_eval_loss"] is not None and manifest.wall_time_s > 0
    assert set(manifest.versions) >= {"torch", "transformers", "peft", "trl"}
    # The stored config is the planned one: what was given, and the recipe's values for the rest.
    stored = load_config(config.run_dir / "config.toml", {})
    assert stored.model_dump(mode="json") == manifest.config and stored.recipe == "cpu"
    assert stored.model_dump(include=set(config.model_fields_set) - {"lora"}) == config.model_dump(
        include=set(config.model_fields_set) - {"lora"}
    )
    with pytest.raises(TrainingError, match="is a finished run"):
        train(config)


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 9:
            raise KeyboardInterrupt


def test_eval_each_epoch_logs_the_eval_loss_after_every_epoch(tmp_path, tiny_base, small_data):
    config = _config(tmp_path, tiny_base, small_data, eval_each_epoch=True)
    manifest = train(config)
    evals = [r for r in read_loss_csv(RunDir(config.run_dir).loss_csv) if r["eval_loss"]]
    assert [round(float(r["epoch"])) for r in evals] == [1, 2]  # not logged twice at the end
    assert manifest.metrics["final_eval_loss"] == pytest.approx(float(evals[-1]["eval_loss"]))


def test_interrupted_run_is_marked_incomplete_and_resumes(tmp_path, tiny_base, small_data):
    config = _config(tmp_path, tiny_base, small_data, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()])
    run = RunDir(config.run_dir)
    assert run.marker.exists() and not run.is_complete()
    with pytest.raises(IncompleteRun):
        run.load_manifest()
    assert [p.name for p in run.checkpoints.glob("checkpoint-*")] == ["checkpoint-6"]  # end of epoch 1
    with pytest.raises(TrainingError, match="pass --resume"):
        train(config)
    manifest = train(config, resume=True)
    assert manifest.metrics["steps"] == 18
    assert run.is_complete()
    assert not run.checkpoints.exists()  # a finished run is never resumed: its checkpoints go


def test_config_file_flags_and_validation(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(
        '[train]\nname = "x"\ndata = "d.jsonl"\nepochs = 1\n\n[train.lora]\nr = 8\ntargets = "all-linear"\n'
    )
    config = load_config(path, {"epochs": 2.0, "lora_alpha": 4, "seed": None})
    assert (config.epochs, config.lora.r, config.lora.alpha, config.lora.targets) == (2.0, 8, 4, "all-linear")
    assert load_config(None, {"name": "x", "data": "d.jsonl"}).to_toml().startswith('[train]\nname = "x"')
    reparsed = tmp_path / "again.toml"
    reparsed.write_text(config.to_toml())
    assert load_config(reparsed, {}) == config
    path.write_text('[train]\nname = "x"\ndata = "d.jsonl"\nepochs = -1\nbogus = 1\n')
    with pytest.raises(ValueError, match=r"invalid training config: epochs: Input should be greater than 0"):
        load_config(path, {})


def test_bad_data_is_refused_before_training(tmp_path, tiny_base):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    config = TrainConfig(name="bad", data=bad, tools=str(CUSTOMER_SUPPORT_TOOLS), base=str(tiny_base),
                         runs_dir=tmp_path / "runs")  # fmt: skip
    with pytest.raises(InvalidDataError, match=rf"{bad}: 1 invalid rows"):
        train(config)
    assert not config.run_dir.exists()


def test_hub_ids_fail_fast_offline(monkeypatch):
    from toolroute.runtime.base_models import BaseModelNotFound
    from toolroute.train.bases import Base

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelNotFound, match="hub cannot be reached"):
        Base.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_accelerate_launch_runs_the_cli(tmp_path, tiny_base, small_data):
    """`accelerate launch -m toolroute train ...` works unchanged (one CPU process here)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
        "-m", "toolroute", "train", "--name", "accel", "--data", str(small_data / "train.jsonl"),
        "--tools", str(CUSTOMER_SUPPORT_TOOLS), "--base", str(tiny_base), "--mode", "none",
        "--max-steps", "2", "--runs-dir", str(tmp_path / "runs"), "--batch-size", "4", "--grad-accum", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["run"] == "accel" and summary["steps"] == 2
    assert RunDir(tmp_path / "runs" / "accel").is_complete()
