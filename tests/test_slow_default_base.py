"""The real default base (SmolLM2-135M from its packaged GGUF) through the train stage. `make test-slow`."""

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
