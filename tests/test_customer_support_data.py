"""The committed customer-support train/eval data: reproducible, balanced, clean and a fair test."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.grammars import NoTool, ToolCall, load_catalogue, parse_tool_call, render_system_prompt

FOLDER = ROOT / "examples" / "customer_support"
SPLITS = ("train", "eval")
MIN_ROWS = {"train": 400, "eval": 150}
TOOLS = ("track_order", "request_refund", "escalate")
NO_TOOL_REASONS = {"greeting", "information request", "missing order id", "out of scope"}


def _load_generator() -> ModuleType:
    name = "customer_support_generate"
    spec = importlib.util.spec_from_file_location(name, FOLDER / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict[str, Any]]]:
    return {
        split: [json.loads(line) for line in (FOLDER / f"{split}.jsonl").read_text("utf-8").splitlines()]
        for split in SPLITS
    }


def _user(row: dict[str, Any]) -> str:
    return row["messages"][1]["content"]


def _target(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["messages"][2]["content"])


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def test_generator_reproduces_committed_files(generator: ModuleType, tmp_path: Path) -> None:
    assert generator.main(["--out", str(tmp_path)]) == 0
    for split in SPLITS:
        name = f"{split}.jsonl"
        assert (tmp_path / name).read_bytes() == (FOLDER / name).read_bytes(), f"{name} is stale: regenerate"


def test_row_shape_and_system_prompt(rows: dict[str, list[dict[str, Any]]]) -> None:
    system = render_system_prompt(load_catalogue(CUSTOMER_SUPPORT_TOOLS), "full")
    for split in SPLITS:
        for row in rows[split]:
            assert set(row) == {"messages"}
            assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
            assert row["messages"][0]["content"] == system
            assert _user(row).strip() == _user(row) != ""


def test_counts_balance_and_coverage(rows: dict[str, list[dict[str, Any]]]) -> None:
    for split in SPLITS:
        targets = [_target(row) for row in rows[split]]
        assert len(targets) >= MIN_ROWS[split]
        tools = Counter(t["tool"] for t in targets)
        assert 0.10 <= tools["no_tool"] / len(targets) <= 0.20, split
        assert {t["reason"] for t in targets if t["tool"] == "no_tool"} == NO_TOOL_REASONS
        calls = len(targets) - tools["no_tool"]
        for tool in TOOLS:
            assert 0.2 <= tools[tool] / calls <= 0.45, (split, tool, tools[tool])
        seen = {
            (t["tool"], k, v) for t in targets for k, v in t.get("arguments", {}).items() if k != "order_id"
        }
        for topic in ("complaint", "human_requested", "legal", "account_security", "other"):
            assert ("escalate", "topic", topic) in seen
        for reason in ("damaged", "wrong_item", "not_delivered", "changed_mind", "other"):
            assert ("request_refund", "reason", reason) in seen
        for urgency in ("low", "high"):
            assert ("escalate", "urgency", urgency) in seen
        # The default is implied by omission; spelling it out would give one call two texts.
        assert ("escalate", "urgency", "normal") not in seen


def test_targets_round_trip_canonically(rows: dict[str, list[dict[str, Any]]]) -> None:
    catalogue = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
    for split in SPLITS:
        for row in rows[split]:
            content = row["messages"][2]["content"]
            parsed = parse_tool_call(content, catalogue)
            assert isinstance(parsed, ToolCall | NoTool), content
            assert parsed.canonical == content


def test_order_ids_are_spans_of_the_request(rows: dict[str, list[dict[str, Any]]]) -> None:
    for split in SPLITS:
        for row in rows[split]:
            order_id = _target(row).get("arguments", {}).get("order_id")
            if order_id is not None:
                # A whole token as written: nothing of the id left outside the span, nothing extra in it.
                token = rf"(?<![\w#-]){re.escape(order_id)}(?![\w-])"
                assert re.search(token, _user(row)), (order_id, _user(row))


def test_no_duplicates_and_no_train_eval_overlap(rows: dict[str, list[dict[str, Any]]]) -> None:
    exact = {split: [_user(row) for row in rows[split]] for split in SPLITS}
    normal = {split: [_normalise(text) for text in exact[split]] for split in SPLITS}
    for split in SPLITS:
        assert len(set(normal[split])) == len(normal[split]), f"duplicate request in {split}"
    assert not set(exact["train"]) & set(exact["eval"])
    assert not set(normal["train"]) & set(normal["eval"])

    def ids(split: str) -> set[str]:
        targets = (_target(row) for row in rows[split])
        return {t["arguments"]["order_id"] for t in targets if "order_id" in t.get("arguments", {})}

    assert not ids("train") & ids("eval"), "eval must use order ids train never saw"


def test_eval_holds_out_phrasings(generator: ModuleType) -> None:
    _, train, evaluation = generator.build(
        generator.DEFAULT_SEED, generator.DEFAULT_TRAIN, generator.DEFAULT_EVAL
    )
    train_templates = {example.template for example in train}
    held = [example for example in evaluation if example.held_out]
    assert not any(example.held_out for example in train)
    assert 0.2 <= len(held) / len(evaluation) <= 0.3
    assert not {example.template for example in held} & train_templates
