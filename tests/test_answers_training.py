"""Training the answer step: rows with a tool result and a reply train it beside the call.

Checked on the tiny model: answer rows' loss covers the reply and the end-of-turn token only; data
without follow-ups gives exactly the rows it gave before; the fast step (head at the scored
positions, shared system prefix) equals TRL's stock step on a batch holding answer rows; the
manifest, the exported metadata and `data check` say how many answer rows there were.
"""

from __future__ import annotations

import itertools
import json

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, ROOT

torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from toolroute.cli import main  # noqa: E402
from toolroute.grammars import load_catalogue  # noqa: E402
from toolroute.runtime.router_file import FORMAT_VERSION  # noqa: E402
from toolroute.train.bases import Base  # noqa: E402
from toolroute.train.check import check_data  # noqa: E402
from toolroute.train.config import TrainConfig  # noqa: E402
from toolroute.train.fast_trainer import FastStepSFTTrainer  # noqa: E402
from toolroute.train.formats import read_examples  # noqa: E402
from toolroute.train.run_dir import RunDir  # noqa: E402
from toolroute.train.sft import router_prompt, sft_rows  # noqa: E402
from toolroute.train.shared_prefix import shared_prefix_length  # noqa: E402
from toolroute.train.trainer import _sft_config, make_trainer, train  # noqa: E402

DATA = ROOT / "examples" / "customer_support" / "train.jsonl"
CATALOGUE = load_catalogue(CUSTOMER_SUPPORT_TOOLS)


def _with_answer(line: str) -> str:
    """A router-format row with a tool result and a reply after its call (no_tool rows unchanged)."""
    row = json.loads(line)
    call = json.loads(row["messages"][-1]["content"])
    if call["tool"] == "no_tool":
        return line
    order = call["arguments"].get("order_id", "none")
    row["messages"] += [
        {
            "role": "tool",
            "content": json.dumps({"order_id": order, "status": "in transit", "ticket": "T-4411"}),
        },
        {"role": "assistant", "content": f"Order {order} is in transit; your ticket is T-4411."},
    ]
    return json.dumps(row)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answer-data")
    lines = DATA.read_text().splitlines()[:16]
    plain, answered = folder / "plain.jsonl", folder / "answers.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    answered.write_text("\n".join(_with_answer(line) for line in lines) + "\n")
    return plain, answered


def _config(tiny_base, data, tmp_path, **changes) -> TrainConfig:
    values = dict(
        name="answers", data=data, tools=str(CUSTOMER_SUPPORT_TOOLS), base=str(tiny_base), mode="compact",
        lora={"targets": "all-linear", "dropout": 0.0}, batch_size=8, grad_accum=1, runs_dir=tmp_path, seed=7,
        method="lora",
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def _rows(config: TrainConfig):
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    prompt = router_prompt(CATALOGUE, Base.resolve(config.base).chat_template(tokenizer), config.mode)
    return sft_rows(read_examples(config.data, CATALOGUE).examples, CATALOGUE, prompt), tokenizer


def test_data_without_followups_gives_the_same_rows(tiny_base, data, tmp_path):
    plain, answered = data
    plain_rows, _ = _rows(_config(tiny_base, plain, tmp_path))
    answer_rows, _ = _rows(_config(tiny_base, answered, tmp_path))
    assert {row.step for row in plain_rows} == {"route"} and len(plain_rows) == 16

    # Adding follow-ups adds answer rows and leaves every routing row, and their order, as it was.
    def texts(rows):
        return [(row.prompt, row.completion, row.tool) for row in rows]

    assert texts(row for row in answer_rows if row.step == "route") == texts(plain_rows)
    answers = [row for row in answer_rows if row.step == "answer"]
    assert (
        len(answers) == sum(1 for line in answered.read_text().splitlines() if '"role": "tool"' in line) > 0
    )
    for before, row in itertools.pairwise(answer_rows):
        if row.step == "answer":  # it continues its routing row's conversation past the call
            assert (
                row.prompt
                == before.prompt
                + before.completion
                + "\n<|im_start|>tool\n"
                + row.prompt.split("<|im_start|>tool\n")[1]
            )
            assert row.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and row.completion.endswith(
                "<|im_end|>"
            )


def test_loss_is_on_the_answer_tokens_only_and_the_fast_step_equals_the_stock_one(tiny_base, data, tmp_path):
    config = _config(tiny_base, data[1], tmp_path)
    rows, tokenizer = _rows(config)
    picked = [*[row for row in rows if row.step == "answer"][:2], rows[0], rows[2]]
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.completion} for r in picked])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    args = _sft_config(config, RunDir(config.run_dir), cuda=False, evaluate=False)
    trainer = make_trainer(config, model, tokenizer, args, dataset)
    assert isinstance(trainer, FastStepSFTTrainer) and trainer.share_prefix
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(picked))])
    for index, row in enumerate(picked):
        labels = batch["labels"][index]
        scored = tokenizer.decode(labels[labels != -100])
        assert scored == row.completion  # the reply (or the call) and <|im_end|>, nothing of the prompt
    # Answer rows open with the same system turn: the fast step still runs it once for the batch.
    assert shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"]) > 100
    model = trainer.model
    model.train()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    with torch.no_grad():
        stock = SFTTrainer.compute_loss(trainer, model, dict(batch))
        fast = trainer.compute_loss(model, dict(batch))
    assert abs(fast.item() - stock.item()) < 1e-5


def test_the_run_records_its_answer_rows_and_export_embeds_them(tiny_base, data, tmp_path):
    from toolroute.export.pipeline import router_metadata
    from toolroute.grammars import GrammarOptions

    plain, answered = data
    manifest = train(_config(tiny_base, answered, tmp_path, max_steps=1))
    expected = sum(1 for e in read_examples(answered, CATALOGUE).examples if e.answer is not None)
    assert manifest.answer_rows == expected == manifest.data["train"].answers
    assert manifest.data["train"].used == 16
    metadata = router_metadata(manifest, "0" * 64, GrammarOptions())
    assert metadata.trained_answers == expected and metadata.format_version == FORMAT_VERSION
    routing_only = train(_config(tiny_base, plain, tmp_path, name="plain", max_steps=1))
    assert routing_only.answer_rows == 0 and routing_only.data["train"].answers == 0
    assert router_metadata(routing_only, "0" * 64, GrammarOptions()).answer_rows is None


def test_data_check_counts_answer_rows(data, capsys):
    plain, answered = data
    report = check_data(answered, CATALOGUE)
    assert report.ok and report.answers > 0 and check_data(plain, CATALOGUE).answers == 0
    assert main(["data", "check", str(answered), "--tools", str(CUSTOMER_SUPPORT_TOOLS)]) == 0
    assert f"answers: {report.answers} rows" in capsys.readouterr().out
    assert main(["data", "check", str(answered), "--tools", str(CUSTOMER_SUPPORT_TOOLS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == report.answers


def test_followup_content_errors_name_the_line(tmp_path):
    line = json.loads(_with_answer(DATA.read_text().splitlines()[0]))
    line["messages"][-1]["content"] = {"not": "text"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    errors = [str(e) for e in read_examples(path, CATALOGUE).errors]
    assert errors and errors[0].startswith(f"{path}:1: messages[")
    assert "string or a list of text parts" in errors[0]
