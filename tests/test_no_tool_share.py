"""`no_tool_share`: out-of-scope rows repeated until they are a set share of the training rows."""

from __future__ import annotations

import pytest

from support import ROOT
from toolroute.grammars import load_catalogue
from toolroute.train.balance import balance_no_tool, repeats_needed
from toolroute.train.config import TrainConfig
from toolroute.train.formats import read_examples

CUSTOMER_SUPPORT = ROOT / "examples" / "customer_support"


def test_repeats_reach_the_share_by_less_than_one_row():
    for rows, no_tool, share in [(480, 72, 0.25), (480, 72, 0.3), (100, 1, 0.5), (10, 3, 0.31)]:
        added = repeats_needed(rows, no_tool, share)
        assert (no_tool + added) / (rows + added) >= share
        assert added == 0 or (no_tool + added - 1) / (rows + added - 1) < share
    assert repeats_needed(480, 72, 0.1) == 0  # already above the share: nothing added
    assert repeats_needed(480, 0, 0.25) == 0  # no no_tool row to repeat
    assert repeats_needed(480, 72, 0.0) == 0
    with pytest.raises(ValueError, match="no_tool_share"):
        repeats_needed(480, 72, 1.0)


def test_customer_support_rows_balanced_to_a_quarter():
    catalogue = load_catalogue(CUSTOMER_SUPPORT / "tools.py")
    examples = read_examples(CUSTOMER_SUPPORT / "train.jsonl", catalogue).examples
    balanced, added = balance_no_tool(examples, 0.25)
    no_tool = [e for e in examples if e.target.is_no_tool]
    assert (len(examples), len(no_tool), added) == (480, 72, 64)  # the measured run's 544 rows
    assert balanced[: len(examples)] == list(examples)  # the rows as given come first, unchanged
    # Whole cycles over the no_tool rows in file order: each repeated at most once here.
    assert balanced[len(examples) :] == no_tool[:64]
    assert sum(e.target.is_no_tool for e in balanced) / len(balanced) == 0.25
    assert balance_no_tool(examples, 0.0) == (list(examples), 0)


def test_the_share_is_a_config_field_off_by_default():
    assert TrainConfig(name="x", data="d.jsonl").no_tool_share == 0.0
    assert TrainConfig(name="x", data="d.jsonl", no_tool_share=0.25).no_tool_share == 0.25
    with pytest.raises(ValueError, match="no_tool_share"):
        TrainConfig(name="x", data="d.jsonl", no_tool_share=1.0)


def test_train_repeats_no_tool_rows_in_memory_and_counts_them(tmp_path, tiny_base):
    pytest.importorskip("torch")
    from toolroute.train.trainer import train

    lines = (CUSTOMER_SUPPORT / "train.jsonl").read_text().splitlines()[:24]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        name="balanced", data=tmp_path / "train.jsonl", tools=str(CUSTOMER_SUPPORT / "tools.py"),
        base=str(tiny_base), runs_dir=tmp_path / "runs", no_tool_share=0.5, max_steps=1,
    )  # fmt: skip
    examples = read_examples(tmp_path / "train.jsonl", load_catalogue(CUSTOMER_SUPPORT / "tools.py")).examples
    no_tool = sum(e.target.is_no_tool for e in examples)
    manifest = train(config)
    added = repeats_needed(24, no_tool, 0.5)
    assert no_tool > 0 and added > 0 and manifest.no_tool_repeated == added
    assert manifest.plan is not None and manifest.plan.rows == 24 + added  # the plan counts them
    assert manifest.data["train"].examples == 24 + added  # trained from, as augmentation counts
    assert manifest.config["no_tool_share"] == 0.5
