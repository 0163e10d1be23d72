"""The fast training step (head at completion tokens, shared prefix once) against TRL's stock step.

Tiny random models (Llama like the default base; Gemma 3 with sliding-window layers like the second
packaged base) and real customer-support rows in `compact` mode, whose ~175-token system turn is
shared by every row. The real default base runs in tests/test_slow_fast_steps.py.
"""

from __future__ import annotations

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, ROOT

torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from toolroute.grammars import load_catalogue  # noqa: E402
from toolroute.train.bases import Base  # noqa: E402
from toolroute.train.config import TrainConfig  # noqa: E402
from toolroute.train.fast_trainer import FastStepSFTTrainer  # noqa: E402
from toolroute.train.formats import read_examples  # noqa: E402
from toolroute.train.run_dir import RunDir, read_loss_csv  # noqa: E402
from toolroute.train.sft import router_prompt, sft_rows  # noqa: E402
from toolroute.train.shared_prefix import shared_prefix_length  # noqa: E402
from toolroute.train.trainer import _sft_config, make_trainer, train  # noqa: E402

DATA = ROOT / "examples" / "customer_support" / "train.jsonl"


@pytest.fixture(scope="module")
def rows16(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast-data") / "train.jsonl"
    path.write_text("\n".join(DATA.read_text().splitlines()[:16]) + "\n")
    return path


def _config(tiny_base, data, tmp_path, **changes) -> TrainConfig:
    values = dict(
        name="fast", data=data, tools=str(CUSTOMER_SUPPORT_TOOLS), base=str(tiny_base), mode="compact",
        lora={"targets": "all-linear", "dropout": 0.0}, batch_size=8, grad_accum=1, runs_dir=tmp_path, seed=7,
        method="lora",
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def _trainer(config: TrainConfig, model) -> SFTTrainer:
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    catalogue = load_catalogue(config.tools)
    prompt = router_prompt(catalogue, Base.resolve(config.base).chat_template(tokenizer), config.mode)
    rows = sft_rows(read_examples(config.data, catalogue).examples, catalogue, prompt)
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in rows])
    args = _sft_config(config, RunDir(config.run_dir), cuda=False, evaluate=False)
    return make_trainer(config, model, tokenizer, args, dataset)


def _tiny_model(kind: str, tiny_base):
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    if kind == "llama":
        return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    # A 16-token window: the ~175-token shared prefix crosses it, so the cached window matters.
    config = Gemma3TextConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=16, initializer_range=0.2,
        layer_types=["sliding_attention", "full_attention"] * 2, attn_implementation="eager",
    )  # fmt: skip
    return Gemma3ForCausalLM(config)


def _loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("share_prefix", [False, True])
def test_fast_step_loss_gradients_and_metrics_equal_the_stock_step(
    tmp_path, tiny_base, rows16, kind, share_prefix
):
    trainer = _trainer(
        _config(tiny_base, rows16, tmp_path, shared_prefix=share_prefix), _tiny_model(kind, tiny_base)
    )
    assert isinstance(trainer, FastStepSFTTrainer) and trainer.share_prefix is share_prefix
    model = trainer.model
    model.train()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # LoRA starts B at zero, which would leave every A gradient zero
            torch.nn.init.normal_(parameter, std=0.1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: padding is exercised
    # Under gradient accumulation the loss is divided by the tokens of every micro-batch of the step.
    num_items = int((batch["labels"][:, 1:] != -100).sum()) + 37

    decoder_calls: list[tuple[int, ...]] = []
    decoder = model.get_base_model().base_model
    hook = decoder.register_forward_pre_hook(
        lambda _, args, kwargs: decoder_calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        stock_loss, stock_grads = _loss_and_grads(
            model, lambda: SFTTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=num_items)
        )
        stock_calls, decoder_calls[:] = list(decoder_calls), []
        fast_loss, fast_grads = _loss_and_grads(
            model, lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        )
    finally:
        hook.remove()

    assert abs(fast_loss.item() - stock_loss.item()) < 1e-5
    assert stock_grads.keys() == fast_grads.keys() and len(fast_grads) > 0
    for name in stock_grads:
        assert stock_grads[name].abs().max() > 0, name
        torch.testing.assert_close(fast_grads[name], stock_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    metrics = trainer._metrics["train"]
    assert metrics["entropy"][1] == pytest.approx(metrics["entropy"][0], rel=1e-5)
    assert metrics["mean_token_accuracy"][1] == pytest.approx(metrics["mean_token_accuracy"][0])

    rows, length = batch["input_ids"].shape
    assert stock_calls == [(rows, length)]
    if share_prefix:  # the system turn once at batch size 1, then only each row's own tokens
        prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
        assert prefix > 150
        assert decoder_calls == [(1, prefix), (rows, length - prefix)]
    else:
        assert decoder_calls == [(rows, length)]


def test_shared_prefix_stops_at_the_first_difference_padding_or_scored_position():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1, 2], [5, 6, 7, 8, 3, 4, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    unscored = torch.full_like(ids, -100)
    assert shared_prefix_length(ids, mask, unscored) == 4  # rows differ at column 4
    labels = unscored.clone()
    labels[0, 3] = 8  # the state at column 2 predicts it: the prefix must end before column 2
    assert shared_prefix_length(ids, mask, labels) == 2
    left_padded = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]])
    assert shared_prefix_length(ids, left_padded, unscored) == 0
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_length(same, torch.ones_like(same), torch.full_like(same, -100)) == 2  # a token each
    assert shared_prefix_length(ids[:1], mask[:1], unscored[:1]) == 0  # nothing to share with one row


def test_make_trainer_picks_the_step_code_from_the_config(tmp_path, tiny_base, rows16):
    from transformers import AutoModelForCausalLM

    def build(**changes):
        model = AutoModelForCausalLM.from_pretrained(tiny_base)
        return _trainer(_config(tiny_base, rows16, tmp_path, **changes), model)

    defaults = TrainConfig(name="x", data="d.jsonl")
    assert defaults.fast_steps and defaults.shared_prefix
    assert type(build(fast_steps=False)) is SFTTrainer
    no_prefix = build(shared_prefix=False)
    assert isinstance(no_prefix, FastStepSFTTrainer) and not no_prefix.share_prefix


def test_training_with_the_fast_step_follows_the_stock_loss_curve(tmp_path, tiny_base, rows16):
    curves = {}
    for fast in (False, True):
        config = _config(
            tiny_base, rows16, tmp_path, name=f"fast-{fast}", fast_steps=fast, learning_rate=1e-2,
            batch_size=2, grad_accum=2, max_steps=3,
        )  # fmt: skip
        manifest = train(config)
        assert manifest.config["fast_steps"] is fast
        rows = read_loss_csv(RunDir(config.run_dir).loss_csv)
        curves[fast] = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(curves[True]) == 3
    assert curves[True] == pytest.approx(curves[False], abs=1e-4)
    # The weights moved: the steps after the first compare trained models, not the initial one.
    assert curves[True][-1] != curves[True][0]
