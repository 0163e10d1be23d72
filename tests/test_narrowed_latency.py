"""`python -m toolroute.bench.narrowed_latency` on the tiny random router (the real numbers are in
BENCHMARKS.md, "Latency breakdown", from the trained HWU64 router)."""

from __future__ import annotations

import json

import pytest
import runtime_support

from support import ROOT
from toolroute.bench import narrowed_latency

EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"


def test_narrowed_and_whole_routes_are_timed_on_the_same_requests(tmp_path_factory, tmp_path, capsys):
    router = runtime_support.tiny_router_file(tmp_path_factory)
    out = tmp_path / "narrowed.json"
    code = narrowed_latency.main(
        [str(router), "--data", str(EVAL), "--tools", "escalate", "--requests", "4", "--out", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["tools"] == ["escalate"] and result["catalogue_tools"] == 3 and result["requests"] == 4
    assert len(result["ms"]["narrowed"]) == len(result["ms"]["all"]) == 4
    assert all(value > 0 for values in result["ms"].values() for value in values)
    assert 0.0 <= result["same_call"] <= 1.0
    assert "| all 3 |" in capsys.readouterr().out


def test_unknown_tools_are_refused(tmp_path_factory):
    router = runtime_support.tiny_router_file(tmp_path_factory)
    with pytest.raises(SystemExit):
        narrowed_latency.main([str(router), "--data", str(EVAL), "--tools", "no_such_tool"])


def test_spread_takes_evenly_from_the_whole_list():
    assert narrowed_latency.spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert narrowed_latency.spread([1, 2], 5) == [1, 2]
