"""The customer-support follow-ups (train_answers.jsonl, eval_answers.jsonl): reproducible, the same
routing rows as train/eval.jsonl, and gold answers that are faithful and complete by the eval's own metric."""

from __future__ import annotations

import json

from test_customer_support_data import _load_generator

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.bench.answer_metrics import answer_report, score_answer
from toolroute.grammars import load_catalogue
from toolroute.train.formats import read_valid_examples

FOLDER = ROOT / "examples" / "customer_support"


def test_generator_reproduces_the_followup_files(tmp_path):
    assert _load_generator().main(["--out", str(tmp_path)]) == 0
    for name in ("train_answers.jsonl", "eval_answers.jsonl"):
        assert (tmp_path / name).read_bytes() == (FOLDER / name).read_bytes(), f"{name} is stale: regenerate"


def test_followups_extend_the_routing_rows_and_their_answers_state_the_tool_output():
    catalogue = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
    for split in ("train", "eval"):
        plain = (FOLDER / f"{split}.jsonl").read_text("utf-8").splitlines()
        answered = (FOLDER / f"{split}_answers.jsonl").read_text("utf-8").splitlines()
        assert len(plain) == len(answered)
        for before, after in zip(plain, answered, strict=True):
            assert json.loads(after)["messages"][:3] == json.loads(before)["messages"]
        examples = read_valid_examples(FOLDER / f"{split}_answers.jsonl", catalogue).examples
        calls = [e for e in examples if not e.target.is_no_tool]
        assert all(e.answer is not None for e in calls) and all(
            e.answer is None for e in examples if e not in calls
        )
        cases = [
            score_answer(
                e.answer.text, tool_output=e.answer.tool_output, request=e.request, gold=e.answer.text
            )
            for e in calls
        ]
        report = answer_report(cases)
        assert report.faithful_rate == 1.0 and report.coverage_mean == 1.0, report.unfaithful[:3]
        assert report.coverage_rows == len(calls)  # every gold answer states an id or a number
