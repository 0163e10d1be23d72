"""Training data: the three formats, errors with file and line, the check report, split, sample, SFT rows."""

from __future__ import annotations

import hashlib
import json

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.cli import main
from toolroute.grammars import NO_TOOL, load_catalogue
from toolroute.train.check import check_data
from toolroute.train.formats import read_examples
from toolroute.train.sft import router_prompt, sft_rows
from toolroute.train.split import label_of, per_label, stratified_split

MIXED = ROOT / "tests" / "fixtures" / "training_data_mixed.jsonl"
SUPPORT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)

# One bad line of each kind in the fixture: line number -> what the error must say.
EXPECTED_ERRORS = {
    6: "bad JSON: Expecting value",
    7: "missing role: no 'user' message",
    8: "missing role: no 'assistant' message",
    9: "messages[1].tool_calls[0].function: unknown tool 'cancel_order' (the catalogue has track_order,",
    10: "arguments fail the schema of 'request_refund': reason: Input should be 'damaged', 'wrong_item'",
    11: "messages[1].tool_calls[0].function.arguments is not valid JSON text: Expecting property name",
    12: "messages[2].tool_call_id 'call_2' does not match the call's id 'call_9'",
    13: "messages[0].content: empty user message",
    14: "messages[1].tool_calls: 2 calls in one assistant turn; toolroute routes one call per request",
    15: "the row's tools differ from the run's catalogue (only in the other: request_refund, escalate); "
    "pass --union-tools",
    16: "messages[0].role: 'customer' is not one of system, user, assistant, tool, function",
    17: "messages[1].content is not valid JSON",
    18: "messages[1]: a system message must come first",
    19: "messages[2].name 'track_order' does not match the called function 'escalate'",
    20: "messages[1].tool_calls[0].function.arguments: must be a string holding JSON, got dict",
    21: 'messages[1].content: a no_tool answer is exactly {"tool":"no_tool","reason":"..."}',
}


def test_every_bad_line_is_reported_with_file_line_and_cause():
    result = read_examples(MIXED, SUPPORT)
    got = {error.line: str(error) for error in result.errors}
    assert sorted(got) == sorted(EXPECTED_ERRORS)
    for line, expected in EXPECTED_ERRORS.items():
        assert got[line].startswith(f"{MIXED}:{line}: ")
        assert expected in got[line], got[line]


def test_all_three_formats_read_into_one_example_type():
    result = read_examples(MIXED, SUPPORT)
    assert result.formats == {"router": 2, "openai": 2, "legacy": 1}
    by_request = {e.request: e for e in result.examples}
    refund = by_request["refund ORD-2 please, it broke"]
    assert refund.target.arguments == {"order_id": "ORD-2", "reason": "damaged"}
    assert [m["role"] for m in refund.followup] == ["tool", "assistant"]  # tool-result example kept
    assert by_request["hi there"].target.tool == NO_TOOL
    assert by_request["hi there"].target.reason == "greeting"
    legacy = by_request["I want a human, my account was hacked"]
    assert legacy.target.canonical(SUPPORT) == (
        '{"tool":"escalate","arguments":{"topic":"account_security","urgency":"high"}}'
    )
    multi_turn = by_request["it's ORD-77"]
    assert [(t.role, t.content) for t in multi_turn.history] == [
        ("user", "my parcel is late"),
        ("assistant", '{"tool":"no_tool","reason":"missing order id"}'),
    ]


def test_row_catalogues_can_be_unioned_on_request():
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"track {i}"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "track_order", "arguments": f'{{"order_id":"{i}"}}'},
                        }
                    ],
                },
            ],
            "tools": SUPPORT.to_openai()[:1],
        }
        for i in range(3)
    ] + [
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "greeting"}],
            "tools": SUPPORT.to_openai(),
        }
    ]
    path = ROOT / "tests" / "fixtures" / "_union.jsonl"
    try:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        strict = read_examples(path)
        assert len(strict.errors) == 1 and "differ from the run's catalogue" in str(strict.errors[0])
        merged = read_examples(path, union_tools=True)
        assert not merged.errors
        assert merged.catalogue.names == ["track_order", "request_refund", "escalate"]
    finally:
        path.unlink()


def test_router_rows_need_a_catalogue():
    result = read_examples(MIXED)
    assert "no tool catalogue: this row carries no `tools`; give one with --tools FILE" in str(
        result.errors[0]
    )


def _write(tmp_path, name, requests_and_answers):
    path = tmp_path / name
    rows = [
        {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]}
        for request, answer in requests_and_answers
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _track(order: str) -> str:
    return json.dumps({"tool": "track_order", "arguments": {"order_id": order}}, separators=(",", ":"))


def test_check_report_counts_shares_duplicates_and_overlap(tmp_path):
    train = _write(
        tmp_path,
        "train.jsonl",
        [(f"where is order A{i}", _track(f"A{i}")) for i in range(9)]
        + [("Where is  order A1", _track("A1")), ("hello", '{"tool":"no_tool","reason":"greeting"}')],
    )
    evaluation = _write(
        tmp_path,
        "eval.jsonl",
        [
            ("where is order A3", _track("A3")),
            ("WHERE IS ORDER A4", _track("A4")),
            ("track B9", _track("B9")),
        ],
    )
    before = hashlib.sha256(train.read_bytes()).hexdigest()
    report = check_data(train, SUPPORT, evaluation)
    assert report.ok
    assert report.examples == 11
    assert report.per_tool == {"track_order": 10, "request_refund": 0, "escalate": 0, NO_TOOL: 1}
    assert report.no_tool_share == pytest.approx(1 / 11, abs=1e-4)
    assert report.duplicates == 1
    assert report.overlap.exact == 1 and report.overlap.normalized == 2
    joined = "\n".join(report.warnings)
    assert "no_tool is 9% of the examples" in joined
    assert "tools with no example: request_refund, escalate" in joined
    assert "2 eval requests also occur in the training data (1 verbatim)" in joined
    assert hashlib.sha256(train.read_bytes()).hexdigest() == before  # input untouched


def test_check_refuses_fewer_than_ten_examples(tmp_path):
    small = _write(tmp_path, "small.jsonl", [(f"where is {i}", _track(str(i))) for i in range(9)])
    report = check_data(small, SUPPORT)
    assert not report.ok
    assert f"{small}: 9 valid examples; at least 10 are needed" in report.errors


def test_check_cli_exit_codes_and_json(capsys):
    assert main(["data", "check", str(MIXED), "--tools", str(CUSTOMER_SUPPORT_TOOLS)]) == 1
    out = capsys.readouterr().out
    assert f"error: {MIXED}:12: messages[2].tool_call_id 'call_2'" in out
    assert out.rstrip().endswith("FAILED: 17 errors")  # 16 bad lines + fewer than 10 examples
    assert main(["data", "check", str(MIXED), "--tools", str(CUSTOMER_SUPPORT_TOOLS), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["formats"] == {"router": 2, "openai": 2, "legacy": 1}


def test_split_is_stratified_reproducible_and_leak_free(tmp_path, capsys):
    rows = [(f"where is order X{i}", _track(f"X{i}")) for i in range(40)]
    rows += [(f"Where is order X{i}", _track(f"X{i}")) for i in range(5)]  # case-variants: same side
    rows += [(f"hello number {i}", '{"tool":"no_tool","reason":"greeting"}') for i in range(10)]
    data = _write(tmp_path, "all.jsonl", rows)
    examples = read_examples(data, SUPPORT).examples
    first = stratified_split(examples, 0.2, seed=3)
    assert first == stratified_split(examples, 0.2, seed=3)
    assert first != stratified_split(examples, 0.2, seed=4)
    tools_eval = [e.target.tool for e in examples if e.source in set(first.eval)]
    assert tools_eval.count(NO_TOOL) == 2 and tools_eval.count("track_order") == 8
    eval_requests = {e.request.lower() for e in examples if e.source in set(first.eval)}
    train_requests = {e.request.lower() for e in examples if e.source in set(first.train)}
    assert not eval_requests & train_requests
    train_out, eval_out = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    args = [
        "data",
        "split",
        str(data),
        "--tools",
        str(CUSTOMER_SUPPORT_TOOLS),
        "--eval-fraction",
        "0.2",
        "--seed",
        "3",
        "--train-out",
        str(train_out),
        "--eval-out",
        str(eval_out),
    ]
    assert main(args) == 0
    lines = data.read_text().splitlines()
    assert sorted(train_out.read_text().splitlines() + eval_out.read_text().splitlines()) == sorted(lines)


def test_per_label_draws_k_rows_of_each_label_reproducibly():
    examples = read_examples(ROOT / "examples" / "customer_support" / "train.jsonl", SUPPORT).examples
    drawn = per_label(examples, 3, seed=13)
    counts: dict[str, int] = {}
    for example in drawn:
        counts[label_of(example)] = counts.get(label_of(example), 0) + 1
    available: dict[str, int] = {}
    for example in examples:
        available[label_of(example)] = available.get(label_of(example), 0) + 1
    assert counts == {label: min(3, n) for label, n in available.items()}
    assert any(n < 3 for n in available.values()) or len(drawn) == 3 * len(available)
    assert per_label(examples, 3, seed=13) == drawn
    assert per_label(examples, 3, seed=14) != drawn
    with pytest.raises(ValueError, match="k must be at least 1"):
        per_label(examples, 0, seed=13)


def test_data_sample_writes_the_drawn_rows_as_written(tmp_path, capsys):
    data = ROOT / "examples" / "customer_support" / "train.jsonl"
    out = tmp_path / "k3.jsonl"
    assert main(["data", "sample", str(data), "--tools", str(CUSTOMER_SUPPORT_TOOLS), "--per-label", "3",
                 "--out", str(out)]) == 0  # fmt: skip
    lines = data.read_text().splitlines()
    drawn = per_label(read_examples(data, SUPPORT).examples, 3, seed=13)
    assert out.read_text().splitlines() == [lines[int(e.source.rsplit(":", 1)[1]) - 1] for e in drawn]
    assert f"{len(drawn)} rows (" in capsys.readouterr().out
    assert main(["data", "sample", str(out), "--per-label", "1", "--out", str(out)]) != 0
    assert "--out must differ from the input file" in capsys.readouterr().err


GOLDEN_PROMPT = (
    "<|im_start|>system\n"
    "You are a tool router. Reply with one JSON object and nothing else: "
    '{"tool":"<name>","arguments":{...}} to call a tool, or {"tool":"no_tool","reason":"..."} when no tool '
    "fits or a required argument is missing.\n"
    "Tools:\n"
    "- track_order(order_id: string)\n"
    '- request_refund(order_id: string, reason?: "damaged"|"wrong_item"|"not_delivered"|'
    '"changed_mind"|"other")\n'
    '- escalate(topic: "complaint"|"human_requested"|"legal"|"account_security"|"other", '
    'urgency?: "low"|"normal"|"high" = "normal", order_id?: string)<|im_end|>\n'
    "<|im_start|>user\nmy parcel is late<|im_end|>\n"
    '<|im_start|>assistant\n{"tool":"no_tool","reason":"missing order id"}<|im_end|>\n'
    "<|im_start|>user\nit's ORD-77<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_sft_rows_match_the_golden_string_for_the_default_base():
    from toolroute.runtime.base_models import packaged_gguf
    from toolroute.runtime.chat_template import ChatTemplate

    template = ChatTemplate.from_gguf(packaged_gguf())
    result = read_examples(MIXED, SUPPORT)
    prompt = router_prompt(SUPPORT, template, "compact")
    rows = {row.source.rsplit(":", 1)[1]: row for row in sft_rows(result.examples, SUPPORT, prompt)}
    multi_turn = rows["5"]
    assert multi_turn.prompt == GOLDEN_PROMPT
    assert multi_turn.completion == '{"tool":"track_order","arguments":{"order_id":"ORD-77"}}<|im_end|>'
    # The runtime renders through the same RouterPrompt: training prompt == inference prompt.
    example = result.examples[4]
    assert prompt.render(example.request, example.history) == multi_turn.prompt


def test_sft_cli_writes_prompt_completion_jsonl(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(line + "\n" for line in MIXED.read_text().splitlines()[:5]))
    out = tmp_path / "sft.jsonl"
    assert (
        main(
            [
                "data",
                "sft",
                str(good),
                "--tools",
                str(CUSTOMER_SUPPORT_TOOLS),
                "--mode",
                "none",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # The refund row (line 2) has a tool result and an answer: its answer row follows its call row.
    assert [row.get("step", "route") for row in rows] == [
        "route",
        "route",
        "answer",
        "route",
        "route",
        "route",
    ]
    assert "step" not in rows[0]  # a routing row is written as before
    assert rows[2]["completion"] == "Your refund has started.<|im_end|>"
    assert rows[3]["completion"] == '{"tool":"no_tool","reason":"greeting"}<|im_end|>'
    assert "Tools:" not in rows[0]["prompt"]


def test_customer_support_example_set_passes_data_check():
    folder = ROOT / "examples" / "customer_support"
    report = check_data(folder / "train.jsonl", SUPPORT, folder / "eval.jsonl")
    assert report.ok, report.errors
    assert report.warnings == []
    assert report.examples >= 400 and report.overlap.eval_examples >= 150
    assert report.overlap.normalized == 0
    assert 0.10 <= report.no_tool_share <= 0.20


def test_hwu64_conversion_passes_data_check(tmp_path):
    from toolroute.train.hwu64 import import_hwu64

    import_hwu64(ROOT / "tests" / "fixtures" / "hwu64_sample.jsonl", tmp_path)
    catalogue = load_catalogue(tmp_path / "tools.json")
    for split in ("train", "valid", "test"):
        result = read_examples(tmp_path / f"{split}.jsonl", catalogue)
        assert not result.errors and result.examples, split
        assert result.formats.keys() == {"openai"}
