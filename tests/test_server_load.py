"""`python -m toolroute.bench.load` end to end, small: a real `toolroute serve` process, clients at two
levels, a short soak with memory samples, a SIGTERM stop that exits 0 (BENCHMARKS.md's numbers come
from the same script with larger counts)."""

from __future__ import annotations

import json

import pytest
import runtime_support

pytest.importorskip("uvicorn")
from toolroute.bench.load import main


def test_load_script_reports_levels_and_a_soak(tmp_path_factory, tmp_path, capsys):
    router = runtime_support.tiny_router_file(tmp_path_factory)
    out = tmp_path / "load.json"
    arguments = ["--router", str(router), "--levels", "1,3", "--requests", "6", "--soak", "30"]
    assert main([*arguments, "--max-seconds", "60", "--threads", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["exit_code"] == 0  # the server drained and exited cleanly on SIGTERM
    for level, clients in zip(results["levels"], (1, 3), strict=True):
        assert level["clients"] == clients and level["requests"] == level["ok"] == 6 and not level["errors"]
        assert level["p50_ms"] <= level["p99_ms"] and level["throughput_rps"] > 0
    soak = results["soak"]
    assert soak["requests"] == soak["ok"] == 30 and not soak["errors"]
    assert 0 < soak["anon_end_mb"] <= soak["rss_peak_mb"] and soak["rss_series_mb"]
    printed = capsys.readouterr().out
    assert "| clients | requests |" in printed and "heap growth after warm-up" in printed
