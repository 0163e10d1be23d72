"""The answer metrics on hand-made answers: faithfulness, coverage, ROUGE-L and the report."""

from __future__ import annotations

import json

import pytest

from toolroute.bench.answer_metrics import answer_report, coverage, facts, invented, rouge_l, score_answer

OUTPUT = '{"order_id": "ORD-1234", "status": "in transit", "refund_id": "RF-0042", "amount": 18.50}'
REQUEST = "refund ORD-1234 please, it came broken"


def test_facts_are_ids_numbers_and_quoted_values():
    found = facts('Refund RF-0042 of $1,200.50 for ORD-1234 is "in transit"; ticket #4411, it\'s fine.')
    assert found.ids == ["RF-0042", "ORD-1234"]
    assert found.numbers == ["1,200.50", "4411"]  # the digits of ids belong to the ids
    assert found.quoted == ["in transit"]  # an apostrophe is not a quote


def test_faithful_answers_invent_nothing():
    assert invented("Refund RF-0042 of $18.5 for ORD-1234 has started.", [OUTPUT, REQUEST]) == []
    assert invented("Your order 1234 is 'in transit'.", [OUTPUT, REQUEST]) == []  # digits of an id, any case
    assert invented("It is on its way.", [OUTPUT, REQUEST]) == []  # no facts, nothing invented


def test_an_invented_fact_is_listed():
    answer = 'Refund RF-0043 of 19 dollars for ord-1234 is "delivered", ticket T-4411.'
    assert invented(answer, [OUTPUT, REQUEST]) == ["RF-0043", "T-4411", "19", "delivered"]
    assert invented("RF-004 started", [OUTPUT]) == ["RF-004"]  # a prefix of an id is not the id


def test_coverage_is_the_share_of_gold_ids_and_numbers_stated():
    gold = "Refund RF-0042 of 18.50 for ORD-1234 has started."
    assert coverage("RF-0042 started for ORD-1234, 18.5 back.", gold) == 1.0
    assert coverage("Refund RF-0042 has started.", gold) == pytest.approx(1 / 3)
    assert coverage("Done.", gold) == 0.0
    assert coverage("Anything.", "Your refund has started.") is None  # the gold states no id or number


def test_rouge_l_is_the_lcs_f1_of_words():
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("Order shipped", "order SHIPPED") == 1.0
    assert rouge_l("abc", "xyz") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0


def test_report_counts_lists_and_averages():
    gold = "Refund RF-0042 of 18.50 for ORD-1234 has started."
    cases = [
        score_answer(gold, tool_output=OUTPUT, request=REQUEST, gold=gold, latency_ms=10.0),
        score_answer(
            "Refund RF-9999 started.", tool_output=OUTPUT, request=REQUEST, gold=gold, latency_ms=30.0
        ),
        score_answer(
            "Your refund started",
            tool_output=OUTPUT,
            request=REQUEST,
            gold="Started.",
            finish_reason="length",
        ),
    ]
    report = answer_report(cases)
    assert (report.rows, report.faithful, report.faithful_rate) == (3, 2, pytest.approx(2 / 3))
    assert [case.invented for case in report.unfaithful] == [["RF-9999"]]
    assert report.coverage_rows == 2 and report.coverage_mean == pytest.approx((1.0 + 0.0) / 2)
    assert [c.answer for c in report.least_covered] == ["Refund RF-9999 started."]
    assert report.cut_at_cap == 1
    # Nearest rank, as every percentile of the benchmarks (`metrics.percentile`): of 10 and 30 ms,
    # the p50 is 10 (a floor index gave 30) and the p95 30.
    assert (report.latency_ms_p50, report.latency_ms_p95) == (10.0, 30.0)
    assert report.rouge_l_mean == pytest.approx(sum(c.rouge_l for c in cases) / 3)
    assert answer_report([]).faithful_rate is None


def _followup_data(path):
    """Customer-support eval rows, the calls among them followed by a tool result and a reply."""
    from support import ROOT

    rows = []
    for line in (ROOT / "examples" / "customer_support" / "eval.jsonl").read_text().splitlines()[:12]:
        row = json.loads(line)
        call = json.loads(row["messages"][-1]["content"])
        if call["tool"] != "no_tool":
            order = call["arguments"].get("order_id", "none")
            row["messages"] += [
                {"role": "tool", "content": json.dumps({"order_id": order, "ticket": "T-4411"})},
                {"role": "assistant", "content": f"Ticket T-4411 is open for {order}."},
            ]
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return sum(1 for row in rows if '"role": "tool"' in row)


def test_eval_reports_answers_when_data_and_router_have_them(tmp_path_factory, tmp_path, capsys):
    import runtime_support

    from toolroute.cli import main

    data = tmp_path / "eval.jsonl"
    followups = _followup_data(data)
    answering = runtime_support.tiny_router_file(tmp_path_factory, "tiny-answers.gguf", answer_rows="12")
    assert main(["eval", "--model", str(answering), "--data", str(data), "--out", str(tmp_path / "a"),
                 "--threads", "1"]) == 0  # fmt: skip
    document = json.loads((tmp_path / "a" / "eval.json").read_text())
    answers = document["answers"]
    assert answers["rows"] == followups > 0 and len(answers["unfaithful"]) == followups - answers["faithful"]
    assert set(answers) >= {"faithful_rate", "coverage_mean", "rouge_l_mean", "latency_ms_p50"}
    assert "## Answers" in (tmp_path / "a" / "eval.md").read_text()
    assert f"answers ({followups} follow-ups)" in capsys.readouterr().out
    plain = runtime_support.tiny_router_file(tmp_path_factory)
    assert main(["eval", "--model", str(plain), "--data", str(data), "--out", str(tmp_path / "p"),
                 "--threads", "1"]) == 0  # fmt: skip
    document = json.loads((tmp_path / "p" / "eval.json").read_text())
    assert document["answers"] is None and "trained without answers" in document["answers_note"]


def test_a_bench_row_scores_the_answers_of_a_level_trained_with_them(tmp_path_factory, tmp_path):
    import runtime_support

    from toolroute.bench.measure import measure
    from toolroute.bench.quant_bench import BenchRow, answers_table

    data = tmp_path / "eval.jsonl"
    followups = _followup_data(data)
    answering = runtime_support.tiny_router_file(tmp_path_factory, "tiny-answers.gguf", answer_rows="12")
    row = measure(answering, data, "router", limit=None, threads=1)
    assert row.answers is not None and row.answers.rows == followups > 0
    assert row.answers.latency_ms_p50 is not None and row.report.latency_ms_p50 is not None
    # The reference rows of the same file route again but answer no second time; a file trained
    # without answers has none to score.
    assert measure(answering, data, "router-no-prefix-cache", limit=2, threads=1).answers is None
    assert measure(answering, data, "naive", limit=2, threads=1).answers is None
    plain = measure(runtime_support.tiny_router_file(tmp_path_factory), data, "router", limit=2, threads=1)
    assert plain.answers is None
    table = answers_table([BenchRow(label="Q8_0", level="q8_0", measurement=row), BenchRow(label="F16")])
    assert len(table) == 6 and table[-1].startswith(f"| Q8_0 | {followups} | ")
    assert answers_table([BenchRow(label="Q8_0", level="q8_0", measurement=plain)]) == []
