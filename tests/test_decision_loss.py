"""Decision loss: the loss only on the completion tokens the runtime asks the model for (the
grammar forces the rest), found with the runtime's own grammar engine."""

from __future__ import annotations

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.grammars import load_catalogue
from toolroute.runtime.base_models import packaged_gguf
from toolroute.train.decisions import DecisionMarker, decided_chars, token_mask, tokenized_rows
from toolroute.train.sft import SftRow

CATALOGUE = load_catalogue(str(CUSTOMER_SUPPORT_TOOLS))


@pytest.fixture(scope="module")
def marker():
    with DecisionMarker(CATALOGUE, packaged_gguf()) as made:
        yield made


def _shown(output: str, marker: DecisionMarker) -> str:
    flags = decided_chars(output, marker.decided_bytes(output))
    return "".join(char if flag else "." for char, flag in zip(output, flags, strict=True))


def test_the_grammar_forced_bytes_take_no_loss_and_every_choice_does(marker):
    refund = '{"tool":"request_refund","arguments":{"order_id":"ORD-1","reason":"damaged"}}'
    # The name's first letter settles it; the required key follows by force; the value and its
    # closing quote are chosen, then "more arguments or not"; an enum's first letter settles it.
    assert _shown(refund, marker) == "." * 9 + "r" + "." * 40 + 'ORD-1",' + "." * 10 + "d" + "." * 9
    escalate = '{"tool":"escalate","arguments":{"topic":"legal","urgency":"high"}}'
    shown = _shown(escalate, marker)
    assert shown.startswith("." * 9 + "e.") and shown.endswith("h....}.")
    no_tool = '{"tool":"no_tool","reason":"greeting"}'
    assert _shown(no_tool, marker) == "." * 9 + "n" + "." * 18 + 'greeting".'


def test_non_ascii_values_are_decided_whole(marker):
    output = '{"tool":"track_order","arguments":{"order_id":"#55 é😀"}}'
    shown = _shown(output, marker)
    assert shown.endswith('#55 é😀"..') and shown.count(".") == len(output) - len('t#55 é😀"')


def test_an_output_outside_the_grammar_is_refused(marker):
    with pytest.raises(ValueError, match="not an output of the catalogue's grammar"):
        marker.decided_bytes('{"tool":"refund_everything","arguments":{}}')


def test_a_token_takes_the_loss_when_it_covers_a_decided_character():
    chars = [False, True, False, False]
    assert token_mask([(10, 11), (11, 13), (13, 14), (0, 0)], 10, chars) == [0, 1, 0, 0]


def test_rows_are_tokenized_as_trl_would_with_masks_on_decisions_only(marker):
    from transformers import AutoTokenizer

    gguf = packaged_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    call = '{"tool":"track_order","arguments":{"order_id":"ORD-77"}}'
    rows = [
        SftRow(prompt="<|im_start|>user\nwhere is ORD-77<|im_end|>\n<|im_start|>assistant\n",
               completion=call + "<|im_end|>", tool="track_order", source="t:1"),
        SftRow(prompt="<|im_start|>tool\nshipped<|im_end|>\n<|im_start|>assistant\n",
               completion="It has shipped.<|im_end|>", tool="track_order", source="t:1", step="answer"),
    ]  # fmt: skip
    route, answer = tokenized_rows(rows, tokenizer, marker, "<|im_end|>")
    prompt_length = len(tokenizer(rows[0].prompt, add_special_tokens=False)["input_ids"])
    assert (
        route["input_ids"]
        == tokenizer(rows[0].prompt + rows[0].completion, add_special_tokens=False)["input_ids"]
    )
    assert route["completion_mask"][:prompt_length] == [0] * prompt_length
    kept = [t for t, m in zip(route["input_ids"], route["completion_mask"], strict=True) if m]
    text = tokenizer.decode(kept)
    # The name's deciding token and the copied value take the loss; `{"tool":"` and the end of
    # turn (the runtime stops when the grammar completes) do not.
    assert "track" in text and "ORD" in text and "77" in text
    assert "<|im_end|>" not in text and "tool" not in text and "arguments" not in text
    assert route["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert route["completion_mask"][-1] == 0
    # The answer step keeps the loss on every completion token, its end of turn included.
    answer_prompt = len(tokenizer(rows[1].prompt, add_special_tokens=False)["input_ids"])
    assert answer["completion_mask"] == [0] * answer_prompt + [1] * (len(answer["input_ids"]) - answer_prompt)
    # Without a marker every completion token takes the loss (the stock completion-only loss).
    (plain, _) = tokenized_rows(rows, tokenizer, None, "<|im_end|>")
    assert plain["completion_mask"] == [0] * prompt_length + [1] * (len(plain["input_ids"]) - prompt_length)


def test_a_run_with_decision_loss_trains_on_fewer_tokens(tmp_path, tiny_base, capsys):
    pytest.importorskip("torch")
    from toolroute.train.config import TrainConfig
    from toolroute.train.trainer import train

    data = ROOT / "examples" / "customer_support"
    lines = (data / "train.jsonl").read_text().splitlines()[:32]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        name="decided", data=tmp_path / "train.jsonl", tools=str(CUSTOMER_SUPPORT_TOOLS), base=str(tiny_base),
        mode="none", learning_rate=2e-2, epochs=1, batch_size=8, grad_accum=1, runs_dir=tmp_path / "runs",
        method="lora", decision_loss=True, lora={"targets": "all-linear"},
    )  # fmt: skip
    manifest = train(config)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("decision loss:"))
    kept, total = (int(word) for word in line.split() if word.isdigit())
    assert 0 < kept < total / 4
    assert manifest.config["decision_loss"] is True and manifest.metrics["steps"] == 4
