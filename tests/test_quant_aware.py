"""Quantization-aware fine-tuning (`quant_aware`): the rounding is llama.cpp's reference rounding
where it is modelled exactly, frozen weights are rounded once, trained ones in each forward pass
with the gradient passed straight through, and the run saves the unrounded weights.

The tiny random model runs the training path; the real default base ran it for the numbers in
BENCHMARKS.md ("Quantization-aware fine-tuning"), and `level_types` is checked on it here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from support import tiny_train_config

pytest.importorskip("torch")

import gguf
import torch
from gguf import quants
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from toolroute.train.quant_aware import (
    apply_quant_aware,
    module_path,
    remove_quant_aware,
    round_q4_k,
    round_q5_0,
    round_q6_k,
    round_q8_0,
)
from toolroute.train.run_dir import RunDir
from toolroute.train.trainer import TrainingError, train


def _weights(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    weights[0, :32] = 0.0  # an all-zero block: scale 0
    weights[1, :32] = -np.abs(weights[1, :32])  # a block whose largest magnitude is negative
    weights[2, 5] = 0.9  # an outlier
    return weights


@pytest.mark.parametrize(("kind", "rounding"), [("Q8_0", round_q8_0), ("Q5_0", round_q5_0)])
def test_q8_0_and_q5_0_round_exactly_as_the_reference_quantizers(kind, rounding):
    weights = _weights((48, 576))
    qtype = gguf.GGMLQuantizationType[kind]
    expected = quants.dequantize(quants.quantize(weights, qtype), qtype)
    assert np.array_equal(rounding(torch.from_numpy(weights)).numpy(), expected)


def _q4_k_step(block: np.ndarray) -> float:
    return (block.max() - min(block.min(), 0.0)) / 15


def _q6_k_step(block: np.ndarray) -> float:
    return np.abs(block).max() / 32


@pytest.mark.parametrize(
    ("rounding", "block", "levels", "step_of"),
    [(round_q4_k, 32, 16, _q4_k_step), (round_q6_k, 16, 64, _q6_k_step)],
)
def test_the_k_quant_approximations_keep_their_levels_and_steps(rounding, block, levels, step_of):
    weights = _weights((16, 1536), seed=1)
    rounded = rounding(torch.from_numpy(weights)).numpy()
    for original, values in zip(weights.reshape(-1, block), rounded.reshape(-1, block), strict=True):
        assert len(np.unique(values)) <= levels
        error, step = np.abs(values - original), step_of(original)
        # Half a step, except a value at the far end from the block's largest one, which the
        # asymmetric range ([-32, 31], as llama.cpp's) clamps: within one step.
        assert np.median(error) <= step / 2 + 1e-6 and error.max() <= step + 1e-6
    assert not np.array_equal(rounded, weights)


def test_module_paths_follow_llama_cpp_names():
    assert module_path("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj"
    assert module_path("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj"
    assert module_path("token_embd.weight") == "model.embed_tokens"
    assert module_path("blk.0.attn_norm.weight") is None and module_path("output_norm.weight") is None


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("model.layers.1."))
    return model


def _types(layers: int = 2) -> dict[str, str]:
    types = {"token_embd.weight": "Q8_0"}
    for layer in range(layers):
        types |= {
            f"blk.{layer}.{part}.weight": "Q5_0" for part in ("attn_q", "attn_k", "attn_v", "attn_output")
        }
        types |= {f"blk.{layer}.ffn_gate.weight": "Q6_K", f"blk.{layer}.ffn_up.weight": "Q8_0"}
        types[f"blk.{layer}.ffn_down.weight"] = "Q4_K"
    return types


def test_frozen_weights_are_rounded_once_and_trained_ones_in_each_pass():
    model = _tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    report = apply_quant_aware(model, _types(), "q4_k_m")
    assert report.frozen == {"Q4_K": 1, "Q5_0": 4, "Q6_K": 1, "Q8_0": 2}  # layer 0 and the embedding
    assert report.trained == {"Q4_K": 1, "Q5_0": 4, "Q6_K": 1, "Q8_0": 1}
    frozen = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(frozen, round_q5_0(before["model.layers.0.self_attn.q_proj.weight"]))
    assert torch.equal(model.model.embed_tokens.weight, round_q8_0(before["model.embed_tokens.weight"]))
    trained = model.model.layers[1].mlp.down_proj
    original = trained.parametrizations.weight.original
    assert torch.equal(original, before["model.layers.1.mlp.down_proj.weight"])  # stored unrounded
    # used rounded (w + (round(w) - w): to within float32's last bit)
    assert torch.allclose(trained.weight, round_q4_k(original), rtol=0, atol=1e-7)

    # The gradient reaches the unrounded weight; an update to it is seen at the next pass.
    model(torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
    assert original.grad is not None and original.grad.abs().sum() > 0
    with torch.no_grad():
        original.add_(0.01 * torch.sign(original.grad))
    assert torch.allclose(trained.weight, round_q4_k(original), rtol=0, atol=1e-7)

    remove_quant_aware(model)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.1.mlp.down_proj.weight" in names and not any("parametrizations" in n for n in names)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, original)


def test_a_type_that_cannot_be_modelled_is_refused_with_the_tensor_before_any_change():
    model = _tiny_model()
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with pytest.raises(ValueError, match=r"blk\.1\.attn_k\.weight is IQ2_XS at q2_k"):
        apply_quant_aware(model, _types() | {"blk.1.attn_k.weight": "IQ2_XS"}, "q2_k")
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
    with pytest.raises(ValueError, match=r"blk\.7\.attn_q\.weight has no module model\.layers\.7"):
        apply_quant_aware(model, {"blk.7.attn_q.weight": "Q5_0"}, "q4_k_m")


def test_a_quant_aware_run_saves_the_unrounded_layer_and_records_the_level(tmp_path, tiny_base, small_data):
    asked: list[tuple[str, str]] = []

    def level_types(base, level):
        asked.append((str(base), level))
        return _types()

    config = tiny_train_config(
        tmp_path / "runs", tiny_base, small_data, name="tiny-qat", method="full", learning_rate=3e-3,
        epochs=1, quant_aware="q4_k_m", lora={"top_layers": 1},
    )  # fmt: skip
    manifest = train(config, level_types=level_types)
    assert asked == [(str(tiny_base), "q4_k_m")]
    assert manifest.config["quant_aware"] == "q4_k_m"
    saved = load_file(str(RunDir(config.run_dir).trained_weights))
    assert saved and all(
        name.startswith("model.layers.1.") and "parametrizations" not in name for name in saved
    )
    rounded = round_q5_0(saved["model.layers.1.self_attn.q_proj.weight"])
    assert not torch.equal(saved["model.layers.1.self_attn.q_proj.weight"], rounded)  # export rounds it


def test_quant_aware_needs_full_fine_tuning_and_the_types(tmp_path, tiny_base, small_data):
    lora = tiny_train_config(tmp_path / "runs", tiny_base, small_data, name="q-lora", quant_aware="q4_k_m")
    with pytest.raises(TrainingError, match="needs full fine-tuning"):
        train(lora, level_types=lambda base, level: _types())
    full = tiny_train_config(
        tmp_path / "runs", tiny_base, small_data, name="q-full", method="full", quant_aware="q4_k_m",
        lora={"top_layers": 1},
    )  # fmt: skip
    with pytest.raises(TrainingError, match="needs the level's tensor types"):
        train(full)
    with pytest.raises(TrainingError, match=r"blk\.0\.attn_q\.weight is IQ2_XS at q4_k_m"):
        train(full, level_types=lambda base, level: _types() | {"blk.0.attn_q.weight": "IQ2_XS"})
    # Refused before the run directory is made: nothing is left to resume or to move aside.
    assert not lora.run_dir.exists() and not full.run_dir.exists()


def test_the_command_refuses_an_unknown_level_and_a_base_that_is_no_gguf(tmp_path):
    from toolroute.cli.train import _level_types

    with pytest.raises(ValueError, match="'q9_9' is not an export level"):
        _level_types(tmp_path / "base.gguf", "q9_9")
    with pytest.raises(ValueError, match="needs a GGUF base"):
        _level_types(tmp_path, "q4_k_m")


def test_level_types_are_the_types_export_gives_the_default_base(capfd):
    from toolroute.export.quantize import level_types
    from toolroute.runtime.base_models import packaged_gguf

    types = level_types(packaged_gguf(), "q4_k_m")
    # llama.cpp's 180 per-tensor fallback lines are folded into its own one-line summary.
    written = capfd.readouterr().err
    assert "falling back to" not in written and "180 of 272 tensor(s) required fallback" in written
    counts: dict[str, int] = {}
    for kind in types.values():
        counts[kind] = counts.get(kind, 0) + 1
    # 576-wide rows fall back from Q4_K to Q5_0; the 1536-wide ffn_down keep Q4_K / Q6_K; the embedding Q8_0.
    assert counts == {"Q5_0": 166, "Q4_K": 16, "Q8_0": 15, "Q6_K": 14}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.3.ffn_down.weight"] == "Q4_K"
    assert all(module_path(name) is not None for name in types)


@pytest.mark.slow
def test_a_few_quant_aware_steps_on_the_default_base(tmp_path):
    """The real default base at q4_k_m: its weights' types from llama.cpp, a few steps, the
    unrounded top layers saved (the full run: BENCHMARKS.md "Quantization-aware fine-tuning")."""
    from support import ROOT
    from toolroute.cli.train import _level_types
    from toolroute.train.config import load_config

    example = ROOT / "examples" / "customer_support"
    overrides = {
        "data": example / "train.jsonl", "tools": str(example / "tools.py"), "runs_dir": tmp_path,
        "max_steps": 3, "quant_aware": "q4_k_m", "name": "qat-slow",
    }  # fmt: skip
    config = load_config(example / "train.toml", overrides).model_copy(update={"eval": None})
    manifest = train(config, level_types=_level_types)
    assert manifest.config["quant_aware"] == "q4_k_m" and manifest.config["method"] == "full"
    saved = load_file(str(RunDir(config.run_dir).trained_weights))
    assert len(saved) == 16 * 9 and not any(
        "parametrizations" in name for name in saved
    )  # 7 weights, 2 norms
    losses = manifest.metrics
    assert losses["first_train_loss"] is not None and math.isfinite(losses["final_train_loss"])


def test_export_leaves_the_importance_matrix_out_of_a_quant_aware_run_unless_asked():
    from types import SimpleNamespace

    from toolroute.export.pipeline import options_for_run
    from toolroute.export.quantize_options import QuantizeOptions

    aware, plain = SimpleNamespace(config={"quant_aware": "q4_k_m"}), SimpleNamespace(config={})
    assert options_for_run(QuantizeOptions(), aware).imatrix_rows == 0
    assert options_for_run(QuantizeOptions(), plain) == QuantizeOptions()  # the pick, as before
    insisted = QuantizeOptions(pick_imatrix=False)  # --always-imatrix
    assert options_for_run(insisted, aware) == insisted
