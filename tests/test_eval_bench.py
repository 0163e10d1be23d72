"""`toolroute eval` and `toolroute bench` end to end with tiny models (seconds, not minutes).

The same commands run on the real default base in BENCHMARKS.md (customer support and HWU64).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import runtime_support
from test_metrics import GOLDS, PREDICTIONS

from support import ROOT
from toolroute.bench.metrics import evaluate_predictions
from toolroute.bench.reporting import error_cases, threshold_choice
from toolroute.cli import main
from toolroute.grammars import load_catalogue
from toolroute.runtime.router import Router
from toolroute.runtime.router_file import FORMAT_VERSION

EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"
CAT = load_catalogue(runtime_support.CUSTOMER_SUPPORT_TOOLS)
REPORT_KEYS = {
    "valid_tool_call_rate", "tool_name_accuracy", "argument_match_accuracy", "false_tool_call_rate",
    "missed_call_rate", "silent_error_rate", "exact_call_accuracy", "slot_precision", "slot_recall",
    "slot_f1", "confusion", "per_argument_accuracy", "latency_ms_p50", "latency_ms_p95",
    "prompt_tokens_mean", "risk_coverage", "threshold_for_1pct", "examples",
}  # fmt: skip


def test_errors_are_ranked_worst_first():
    cases = error_cases(GOLDS, PREDICTIONS, CAT)
    assert [c.kind for c in cases] == ["false call", "wrong arguments", "wrong arguments", "invalid"]
    assert [c.request for c in cases] == ["e", "c", "b", "f"]  # wrong arguments: 0.90 before 0.60
    assert cases[1].gold == 'request_refund({"order_id":"C3","reason":"damaged"})'


def test_threshold_choice_follows_the_allowed_risk():
    report = evaluate_predictions(GOLDS, PREDICTIONS, CAT)
    strict = threshold_choice(report, 0.0)
    assert strict.threshold == 0.95 and strict.coverage == pytest.approx(1 / 6)
    loose = threshold_choice(report, 1.0)
    assert loose.threshold == 0.0 and loose.coverage == pytest.approx(5 / 6)


@pytest.fixture()
def tiny_copy(tmp_path_factory, tmp_path):
    source = runtime_support.tiny_router_file(tmp_path_factory)
    target = tmp_path / "router.gguf"
    target.write_bytes(source.read_bytes())
    return target


def test_eval_cli_on_a_gguf_writes_reports_and_picks_a_threshold(tiny_copy, capsys):
    code = main(["eval", "--model", str(tiny_copy), "--data", str(EVAL), "--limit", "24",
                 "--pick-threshold", "--max-risk", "1.0", "--threads", "1"])  # fmt: skip
    assert code == 0
    out = tiny_copy.with_name("router.eval")
    document = json.loads((out / "eval.json").read_text())
    assert document["format"] == "toolroute-eval/1"
    assert set(document["report"]) >= REPORT_KEYS
    report = document["report"]
    assert document["data"]["examples"] == report["examples"] == 24
    assert report["valid_tool_call_rate"] == 1.0  # the grammar at work, even on a random model
    assert document["model"]["constrained"] and document["model"]["kind"] == "gguf"
    assert sum(sum(row.values()) for row in report["confusion"].values()) == 24
    errors = document["errors"]
    order = ["wrong tool", "false call", "wrong arguments", "invalid", "missed call"]
    assert errors == sorted(errors, key=lambda e: (order.index(e["kind"]), -(e["confidence"] or 0)))
    markdown = (out / "eval.md").read_text()
    for heading in ("the four numbers", "Confusion matrix", "Per-argument accuracy", "worst errors"):
        assert heading in markdown
    # The decoding cut-offs the outputs were made with: the runtime's defaults here.
    cut_offs = document["model"]["cut_offs"]
    assert cut_offs == {"min_span_mass": 0.1, "min_required_span_mass": 0.3, "min_key_probability": 0.0}
    assert "- cut-offs: min_span_mass 0.1, min_required_span_mass 0.3, min_key_probability 0" in markdown
    assert (out / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
    rule = document["call_threshold"]["rule"]
    assert rule is not None and document["written_to"] == str(tiny_copy)
    scores = {"name_probability", "call_logprob", "min_token_logprob"}
    assert set(document["risk_coverage_by_score"]) == scores
    with Router.load(tiny_copy, n_threads=1) as router:
        if rule["score"] == "name_probability":  # where format 1 kept it
            assert router.min_confidence == pytest.approx(rule["value"], abs=1e-6)
            assert router.call_threshold is None
        else:
            assert router.call_threshold.model_dump() == rule and router.min_confidence is None
        assert router.metadata.format_version == FORMAT_VERSION
    sidecar = tiny_copy.with_name("router.gguf.sha256").read_text().split()[0]
    assert sidecar == hashlib.sha256(tiny_copy.read_bytes()).hexdigest()
    assert "tool-name accuracy" in capsys.readouterr().out
    # Reported on other rows: the file's rules applied, beside the numbers without them.
    other = tiny_copy.with_name("other")
    assert main(["eval", "--model", str(tiny_copy), "--data", str(EVAL), "--limit", "9", "--out", str(other),
                 "--threads", "1"]) == 0  # fmt: skip
    reported = json.loads((other / "eval.json").read_text())
    with_rules, without = reported["with_stored_rules"], reported["without_rules"]
    assert reported["stored_rules"] and with_rules["coverage"] <= without["coverage"]
    assert "with the file's rules" in (other / "eval.md").read_text()


def test_eval_cli_unconstrained_gguf_parses_free_text(tiny_copy, tmp_path):
    out = tmp_path / "free"
    code = main(["eval", "--model", str(tiny_copy), "--data", str(EVAL), "--limit", "4", "--unconstrained",
                 "--out", str(out), "--threads", "1"])  # fmt: skip
    assert code == 0
    document = json.loads((out / "eval.json").read_text())
    assert not document["model"]["constrained"]
    # A random model's free text is (almost surely) no valid call: the rate now says something.
    assert document["report"]["valid_tool_call_rate"] < 1.0


def test_eval_cli_refuses_bad_data_with_file_and_line(tiny_copy, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(EVAL.read_text().splitlines()[0] + "\n{not json\n")
    assert main(["eval", "--model", str(tiny_copy), "--data", str(bad)]) == 2
    assert f"{bad}:2: bad JSON" in capsys.readouterr().err


def test_eval_cli_on_a_training_run_constrained_by_outlines(tiny_run, tmp_path):
    out = tmp_path / "hf"
    assert (
        main(["eval", "--model", str(tiny_run), "--data", str(EVAL), "--limit", "2", "--out", str(out)]) == 0
    )
    document = json.loads((out / "eval.json").read_text())
    assert document["model"]["kind"] == "run" and "outlines" in document["model"]["backend"]
    assert document["report"]["valid_tool_call_rate"] == 1.0  # the JSON Schema mask at work
    free = tmp_path / "hf-free"
    assert main(["eval", "--model", str(tiny_run), "--data", str(EVAL), "--limit", "1", "--unconstrained",
                 "--out", str(free)]) == 0  # fmt: skip
    assert not json.loads((free / "eval.json").read_text())["model"]["constrained"]


def test_bench_exports_measures_and_plots(tiny_run, tmp_path):
    from toolroute.bench.quant_bench import bench_run

    results = bench_run(
        tiny_run, EVAL, ["f16", "q8_0"], tmp_path / "dist", tmp_path / "bench", limit=2, threads=1
    )
    labels = [row.label for row in results.rows]
    assert labels[:2] == ["F16", "Q8_0"] and labels[2].startswith("untuned base")
    assert labels[3].startswith("router without prefix cache") and labels[4].startswith("naive")
    assert labels[5].startswith("classical") and results.rows[5].measurement.runner == "classical"
    assert results.recommended_level in ("f16", "q8_0")
    for row in results.rows:
        assert row.measurement is not None, row.error
        m = row.measurement
        assert m.requests == 2 and m.load_s > 0 and m.peak_rss_mb > 0 and m.latency_ms_p50 is not None
    assert results.rows[0].measurement.size_bytes > results.rows[1].measurement.size_bytes
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["format"] == "toolroute-bench/1" and len(saved["rows"]) == 6
    no_cache = results.rows[3].measurement.report.prompt_tokens_mean
    assert no_cache == results.rows[1].measurement.report.prompt_tokens_mean
    assert "| F16 |" in (tmp_path / "bench" / "RESULTS.md").read_text()
    assert (tmp_path / "bench" / "results.png").read_bytes()[:4] == b"\x89PNG"
    # A second bench reuses the exported files (same run): nothing is exported again.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dist").glob("*.gguf")}
    bench_run(tiny_run, EVAL, ["q8_0"], tmp_path / "dist", tmp_path / "bench2", limit=1, threads=1,
              references=False)  # fmt: skip
    assert (tmp_path / "dist" / "tiny-router.q8_0.gguf").stat().st_mtime_ns == before["tiny-router.q8_0.gguf"]
    assert results.quantization.imatrix_rows == 64
    # A quant-aware run's levels are exported without the importance matrix: the report says what
    # export made, not what was asked (it said "importance matrix from 64 training rows").
    aware = tmp_path / "aware-run"
    shutil.copytree(tiny_run, aware)
    manifest = json.loads((aware / "manifest.json").read_text())
    manifest["config"]["quant_aware"] = "q4_k_m"
    (aware / "manifest.json").write_text(json.dumps(manifest))
    aware_results = bench_run(aware, EVAL, ["q8_0"], tmp_path / "dist-aware", tmp_path / "bench3", limit=1,
                              threads=1, references=False)  # fmt: skip
    assert aware_results.quantization.imatrix_rows == 0
    report = (tmp_path / "bench3" / "RESULTS.md").read_text()
    assert "quantization: token embedding q8_0, no imatrix" in report


def test_bench_modes_trains_one_run_per_mode(tiny_base, tmp_path):
    from toolroute.bench.modes_bench import bench_modes

    data = ROOT / "examples" / "customer_support"
    for name, count in (("train", 16), ("eval", 8)):
        lines = (data / f"{name}.jsonl").read_text().splitlines()[:count]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "train.toml"
    config.write_text(
        f'[train]\nname = "modes"\ndata = "{tmp_path / "train.jsonl"}"\ntools = "{data / "tools.py"}"\n'
        f'base = "{tiny_base}"\nbatch_size = 8\ngrad_accum = 1\nruns_dir = "{tmp_path / "runs"}"\n'
    )
    results = bench_modes(
        config, ["none", "names"], tmp_path / "eval.jsonl", tmp_path / "dist", tmp_path / "out",
        overrides={"max_steps": 1}, limit=1, threads=1,
    )  # fmt: skip
    assert [row.mode for row in results.rows] == ["none", "names"]
    for row in results.rows:
        assert row.measurement is not None, row.error
        assert row.train_steps == 1
    tokens = [row.measurement.report.prompt_tokens_mean for row in results.rows]
    assert tokens[0] < tokens[1]  # names lists the tools; none does not
    assert "| none |" in (tmp_path / "out" / "MODES.md").read_text()


def test_a_request_the_router_refuses_counts_as_invalid(tiny_copy, tmp_path):
    from toolroute.bench.evaluate import evaluate_router
    from toolroute.train.formats import read_examples

    rows = tmp_path / "rows.jsonl"
    answer = {"role": "assistant", "content": '{"tool":"no_tool","reason":"x"}'}
    too_long = {"messages": [{"role": "user", "content": "order " * 400}, answer]}
    rows.write_text(EVAL.read_text().splitlines()[0] + "\n" + json.dumps(too_long) + "\n")
    with Router.load(tiny_copy, n_threads=1, n_ctx=512) as router:
        examples = read_examples(rows, router.catalogue).examples
        report, predictions = evaluate_router(router, examples)
    assert predictions[1].kind == "invalid" and predictions[1].raw.startswith("(refused: request too long")
    assert report.examples == 2
