"""`python -m toolroute.bench.peak_rss`: each side in a process of its own, results compared."""

import json

import runtime_support

from toolroute.bench import peak_rss
from toolroute.runtime import memory


def test_both_sides_route_the_same_and_the_release_is_reported(tmp_path_factory, tmp_path):
    path = runtime_support.tiny_router_file(tmp_path_factory)
    requests = ["Where is my order ORD-1234?", "hello!"]
    found = peak_rss.measure(path, requests, threads=1, rounds=2, label="tiny")
    assert found["same_results"] == 2 and found["differing_requests"] == [] and len(found["results"]) == 2
    assert [run["release_memory"] for run in found["runs"]["on"]] == [True, True]
    off, on = found["summary"]["off"], found["summary"]["on"]
    assert off["kv_released"] == 0 and off["skipped"] == "release_memory=False"
    if memory.LIBC is not None:
        assert on["kv_released"] > 0 and on["skipped"] == ""
    for side in (off, on):
        assert side["peak_rss_mb"] >= side["rss_after_load_mb"] > 0 and side["latency_ms_p50"] > 0
    table = peak_rss.markdown(found)
    assert "| off |" in table and "| on |" in table and "2 of 2" in table
    peak_rss.plot(found, tmp_path / "peak-rss.png")
    assert (tmp_path / "peak-rss.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(found)  # the report is plain JSON
