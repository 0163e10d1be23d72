"""The classical reference (TF-IDF + logistic regression, CRF) on a slice of customer support."""

from __future__ import annotations

import json

import pytest

from support import ROOT

pytest.importorskip("sklearn_crfsuite")

from toolroute.bench.classical import ClassicalRouter, bio_tags, run_classical, tagged_spans, tokenize
from toolroute.cli import main
from toolroute.grammars import load_catalogue
from toolroute.train.formats import read_valid_examples
from toolroute.train.split import per_label

DATA = ROOT / "examples" / "customer_support"
TOOLS = str(DATA / "tools.py")


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cs-slice")
    for name, count in (("train", 160), ("eval", 40)):
        lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "train.jsonl", folder / "eval.jsonl"


@pytest.fixture(scope="module")
def result(slice_files):
    train, data = slice_files
    return run_classical(train, data, TOOLS)


def test_spans_are_tagged_on_token_boundaries_and_read_back_as_written():
    request = "My order #63482 came broken, ORD-77 too"
    tokens = tokenize(request)
    tags, missed = bio_tags(tokens, request, {"order_id": "#63482", "other": "ORD-77", "partial": "634"})
    assert missed == ["partial"]  # inside a token: not a span the CRF can learn
    assert [t for t in tags if t != "O"] == ["B-order_id", "I-order_id", "B-other", "I-other", "I-other"]
    assert tagged_spans(tokens, request, tags) == {"order_id": "#63482", "other": "ORD-77"}
    # An I- tag without its B- still starts a span; a second span of one name keeps the first.
    tags = ["O", "I-x", "I-x", "I-x", "O", "O", "O", "B-x", "O", "O", "O"]
    assert tagged_spans(tokens, request, tags) == {"x": "order #63482"}


def test_the_reference_is_measured_with_the_project_metrics(result, slice_files):
    m = result.measurement
    report = m.report
    assert result.train_rows == 160 and m.requests == 40 and m.runner == "classical"
    assert report.examples == 40 and report.valid_tool_call_rate == 1.0
    # Measured on a slice: far above chance (4 labels), with arguments extracted.
    assert report.tool_name_accuracy >= 0.7, report.confusion
    assert report.slot_f1 is not None and report.slot_f1 >= 0.5
    assert report.false_tool_call_rate is not None and report.latency_ms_p50 is not None
    assert m.size_bytes > 10_000 and result.train_seconds > 0
    # How each argument is handled, reported: order ids are spans; enums get a classifier.
    uses = result.arguments
    assert uses["track_order.order_id"].kind == "span"
    assert uses["track_order.order_id"].as_spans == uses["track_order.order_id"].training_values > 0
    assert uses["escalate.topic"].kind == "value" and uses["escalate.topic"].as_spans == 0


def test_an_unseen_order_id_is_copied_from_the_request(slice_files):
    train, _ = slice_files
    catalogue = load_catalogue(TOOLS)
    router = ClassicalRouter(catalogue)
    router.fit(read_valid_examples(train, catalogue).examples)
    prediction = router.predict("Where is my package? The order number is ORD-90817.")
    assert (prediction.kind, prediction.tool, prediction.arguments) == (
        "call",
        "track_order",
        {"order_id": "ORD-90817"},
    )
    # A required argument the schema rejects makes the call no_tool; a rejected optional one is dropped.
    assert router._validated("track_order", {}) is None
    assert router._validated("escalate", {"topic": "legal", "urgency": "whenever"}) == {"topic": "legal"}


def test_bench_classical_command(slice_files, tmp_path, capsys):
    train, data = slice_files
    out = tmp_path / "classical.json"
    args = ["bench-classical", "--train", str(train), "--data", str(data), "--tools", TOOLS]
    assert main([*args, "--per-label", "10", "--limit", "20", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 per label (seed 13)" in printed and "| classical |" in printed
    saved = json.loads(out.read_text())
    assert saved["per_label"] == 10 and saved["measurement"]["requests"] == 20
    examples = read_valid_examples(train, load_catalogue(TOOLS)).examples
    assert saved["train_rows"] == len(per_label(examples, 10, seed=13)) < len(examples)


def test_learning_curve_reads_a_router_and_the_classical_reference_on_the_same_rows(
    slice_files, tmp_path, tmp_path_factory, capsys
):
    import runtime_support

    from toolroute.bench.learning_curve import main as curve_main

    train, data = slice_files
    classical = tmp_path / "classical.json"
    args = ["bench-classical", "--train", str(train), "--data", str(data), "--tools", TOOLS]
    assert main([*args, "--per-label", "5", "--json", str(classical)]) == 0
    saved = json.loads(classical.read_text())
    assert saved["data"] == str(data) and len(saved["data_sha256"]) == 64
    router = runtime_support.tiny_router_file(tmp_path_factory)
    assert main(["eval", "--model", str(router), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--threads", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    router_eval = str(tmp_path / "r" / "eval.json")
    out = tmp_path / "curve"
    assert curve_main(["--point", "k=5", router_eval, str(classical), "--out", str(out)]) == 0
    table = (out / "CURVE.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| k=5 |"))
    assert f"| k=5 | {saved['train_rows']:,} | 40 |" in row
    classical_tool = saved["measurement"]["report"]["tool_name_accuracy"]
    assert f"{classical_tool:.3f}" in row
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "curve.json").read_text())[0]["label"] == "k=5"
    # Reports on different rows are refused, naming both files.
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(data.read_text().splitlines()[:20]) + "\n")
    fewer = ["bench-classical", "--train", str(train), "--data", str(other), "--tools", TOOLS]
    assert main([*fewer, "--json", str(classical)]) == 0
    with pytest.raises(ValueError, match="measured on different data"):
        curve_main(["--point", "k=5", router_eval, str(classical), "--out", str(out)])
