"""`python -m toolroute.bench.quant_fidelity`: the KL/agreement arithmetic, and one end-to-end run
on the tiny base (the default base's numbers are in BENCHMARKS.md, "Quantization")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import ROOT
from toolroute.bench.quant_fidelity import VARIANTS, compare, main

pytest.importorskip("torch")
DATA = ROOT / "examples" / "customer_support"


def test_identical_logits_agree_fully_with_no_divergence():
    rows = [np.array([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]]), np.array([[0.0, 0.0, 4.0]])]
    agreement, kl = compare(rows, [r.copy() for r in rows])
    assert agreement == 1.0 and kl == pytest.approx(0.0, abs=1e-12)


def test_agreement_counts_positions_and_kl_is_the_mean_over_them():
    reference = [np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))]
    other = [np.log(np.array([[0.5, 0.5], [0.1, 0.9]]))]
    agreement, kl = compare(reference, other)
    # Position 1 argmax ties at index 0 for both; position 2 flips.
    assert agreement == 0.5
    expected = (0.0 + 0.9 * np.log(0.9 / 0.1) + 0.1 * np.log(0.1 / 0.9)) / 2
    assert kl == pytest.approx(expected)


def test_a_shift_of_all_logits_changes_nothing():
    reference = [np.array([[1.0, 2.0, 3.0]])]
    agreement, kl = compare(reference, [reference[0] + 7.5])
    assert agreement == 1.0 and kl == pytest.approx(0.0, abs=1e-12)


def test_the_tiny_base_is_scored_for_every_variant(tiny_base, tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    code = main([
        "--base", str(tiny_base), "--tools", str(DATA / "tools.py"),
        "--train", str(DATA / "train.jsonl"), "--data", str(DATA / "eval.jsonl"),
        "--quant", "q8_0", "--rows", "3", "--imatrix-rows", "4", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["rows"] == 3 and report["imatrix_rows"] == 4 and report["completion_tokens"] > 3 * 5
    assert [r["variant"] for r in report["results"]] == list(VARIANTS)
    for result in report["results"]:
        assert 0.0 <= result["top1_agreement"] <= 1.0 and result["kl"] >= 0.0 and result["size_mb"] > 0
    types = {r["variant"]: r["token_embedding"] for r in report["results"]}
    assert types["embedding f16"] == "F16" and types["embedding q8_0 + imatrix"] == "Q8_0"
    assert "| q8_0 | plain |" in capsys.readouterr().out
