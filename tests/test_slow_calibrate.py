"""The step measurement on the real default base with `make demo`'s recipe, quant-aware rounding
included (`make test-slow`). The tiny-model tests are in tests/test_calibrate.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import ROOT

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402

from toolroute.export.quantize import level_types  # noqa: E402
from toolroute.grammars import load_catalogue  # noqa: E402
from toolroute.train.bases import Base  # noqa: E402
from toolroute.train.calibrate import TIMED_STEPS, measure_step_cost  # noqa: E402
from toolroute.train.config import load_config  # noqa: E402
from toolroute.train.formats import read_examples  # noqa: E402
from toolroute.train.quant_aware import apply_quant_aware  # noqa: E402
from toolroute.train.recipe import RECIPES, apply_recipe, given_fields  # noqa: E402
from toolroute.train.run_dir import RunDir  # noqa: E402
from toolroute.train.sft import router_prompt, sft_rows  # noqa: E402
from toolroute.train.trainer import _sft_config, make_trainer  # noqa: E402
from toolroute.train.weights import freeze_all_but_layers  # noqa: E402

EXAMPLE = ROOT / "examples" / "customer_support"


def test_measuring_the_demo_step_on_the_default_base_changes_nothing_the_run_reads(tmp_path):
    config = load_config(EXAMPLE / "train.toml", {"runs_dir": tmp_path})
    config = apply_recipe(config, RECIPES["cpu"], given_fields(config)).model_copy(update={"eval": None})
    assert config.method == "full" and config.quant_aware == "q4_k_m"
    base = Base.resolve(config.base)
    tokenizer = base.load_tokenizer()
    result = read_examples(config.data, load_catalogue(config.tools))
    prompt = router_prompt(result.catalogue, base.chat_template(tokenizer), config.mode)
    rows = sft_rows(result.examples[:48], result.catalogue, prompt)
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in rows])
    model = base.load_model(torch.float32)
    freeze_all_but_layers(model, config.lora.top_layers)
    apply_quant_aware(model, level_types(Path(base.location), "q4_k_m"), "q4_k_m")
    args = _sft_config(config, RunDir(config.run_dir), cuda=False, evaluate=False)
    trainer = make_trainer(config, model, tokenizer, args, dataset)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))

    def loss() -> torch.Tensor:
        with torch.no_grad():
            return trainer.compute_loss(model, dict(batch))

    before_loss = loss()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cost = measure_step_cost(trainer, seed=config.seed)

    for name, parameter in model.named_parameters():
        assert torch.equal(parameter.detach(), before[name]), name
    # The rounded weights the quant-aware forward reads are the same too: the loss is bit for bit.
    assert torch.equal(loss(), before_loss)
    assert cost.rows == TIMED_STEPS * config.batch_size * config.grad_accum
    assert cost.seconds_per_step > 0 and cost.tokens > cost.rows  # its size is BENCHMARKS.md's business
