"""The fast training step on the real default base (SmolLM2-135M from a Q4_1 GGUF). `make test-slow`."""

from __future__ import annotations

import math

import pytest

from support import ROOT

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from toolroute.grammars import load_catalogue  # noqa: E402
from toolroute.train.bases import Base  # noqa: E402
from toolroute.train.config import load_config  # noqa: E402
from toolroute.train.fast_trainer import FastStepSFTTrainer  # noqa: E402
from toolroute.train.formats import read_examples  # noqa: E402
from toolroute.train.run_dir import RunDir, read_loss_csv  # noqa: E402
from toolroute.train.sft import router_prompt, sft_rows  # noqa: E402
from toolroute.train.trainer import _sft_config, make_trainer, train  # noqa: E402

EXAMPLE = ROOT / "examples" / "customer_support"


def _config(tmp_path, **changes):
    overrides = {
        "data": EXAMPLE / "train.jsonl",
        "tools": str(EXAMPLE / "tools.py"),
        "runs_dir": tmp_path,
        "mode": "compact",  # the long shared system turn
        "max_steps": 6,
        "quant_aware": "off",  # the example's choice needs full fine-tuning; this is the LoRA step
        **changes,
    }
    return load_config(EXAMPLE / "train.toml", overrides).model_copy(update={"eval": None})


def test_fast_step_equals_the_stock_step_on_the_default_base(tmp_path):
    config = _config(tmp_path, lora_dropout=0.0)
    base = Base.resolve(config.base)
    tokenizer = base.load_tokenizer()
    result = read_examples(config.data, load_catalogue(config.tools))
    catalogue = result.catalogue
    prompt = router_prompt(catalogue, base.chat_template(tokenizer), config.mode)
    rows = sft_rows(result.examples[:8], catalogue, prompt)
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in rows])
    args = _sft_config(config, RunDir(config.run_dir), cuda=False, evaluate=False)
    trainer = make_trainer(config, base.load_model(torch.float32), tokenizer, args, dataset)
    assert isinstance(trainer, FastStepSFTTrainer) and trainer.share_prefix
    model = trainer.model
    model.train()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.01)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])

    def loss_and_grads(compute):
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    stock_loss, stock_grads = loss_and_grads(lambda: SFTTrainer.compute_loss(trainer, model, dict(batch)))
    fast_loss, fast_grads = loss_and_grads(lambda: trainer.compute_loss(model, dict(batch)))
    assert abs(fast_loss - stock_loss) < 1e-5
    for name, grad in stock_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_default_base_trains_with_the_fast_step(tmp_path):
    config = _config(tmp_path)
    assert config.fast_steps and config.shared_prefix
    manifest = train(config)
    assert manifest.config["fast_steps"] and manifest.config["shared_prefix"]
    losses = [float(r["loss"]) for r in read_loss_csv(RunDir(config.run_dir).loss_csv) if r["loss"]]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # learning, not just running
