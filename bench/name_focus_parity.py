"""Name focus on and off on a real router and real requests: same answers, same rule inputs.

    python -m toolroute.bench.name_focus_parity ROUTER.gguf --data data/hwu64/test.jsonl \
        [--requests 300] [--threads 2] [--out results/latency/name-focus-parity.json]

Loads the router twice (`name_focus=True`, the default, and `False`), routes each request (spread
over the file) with both, interleaved, and compares: the kind, tool and arguments must be the
same; the chosen tool's and no_tool's probabilities (what `min_confidence` and the abstention
rules read) are compared, each apart, to `NAME_TOLERANCE` (and the tool's to `FOCUS_TOLERANCE`,
what llama.cpp's batch shapes may move it by); every other name's focused value must be a lower
bound, short by at most the result's `unresolved_mass` (to the same tolerance). Prints the counts
and the largest differences, and each route's CPU time on both sides (the routing thread's clock).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from toolroute.grammars import NO_TOOL
from toolroute.runtime.confidence import FOCUS_TOLERANCE, NAME_TOLERANCE
from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.results import RouteResult
from toolroute.runtime.router import Router
from toolroute.runtime.router_file import read_router_file
from toolroute.train.formats import read_valid_examples

from .metrics import percentile
from .narrowed_latency import spread


def _answer(result: RouteResult) -> tuple[Any, ...]:
    call = result.call
    return (result.kind, result.tool, call.arguments if call else None)


def compare(focused: RouteResult, full: RouteResult) -> dict[str, Any]:
    """How one request's two results differ (answers, rule inputs, lower bounds)."""

    def gap(name: str | None) -> float:
        if name is None or name not in full.probabilities:
            return 0.0
        return abs(focused.probabilities[name] - full.probabilities[name])

    read = {focused.tool, NO_TOOL}
    others = [n for n in full.probabilities if n not in read]
    over = max((focused.probabilities[n] - full.probabilities[n] for n in others), default=0.0)
    short = max((full.probabilities[n] - focused.probabilities[n] for n in others), default=0.0)
    return {
        "same_answer": _answer(focused) == _answer(full),
        "tool_gap": gap(focused.tool) if focused.tool != NO_TOOL else 0.0,
        "no_tool_gap": gap(NO_TOOL),
        "bound_ok": over <= FOCUS_TOLERANCE and short <= focused.unresolved_mass + FOCUS_TOLERANCE,
        "unresolved_mass": focused.unresolved_mass,
        "runner_up_named": focused.runner_up is not None,
    }


def measure(path: Path, requests: list[str], threads: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    ms: dict[str, list[float]] = {"focus": [], "full": []}
    with (
        Router.load(path, n_threads=threads) as focused,
        Router.load(path, n_threads=threads, name_focus=False) as full,
    ):
        focused.route(requests[0]), full.route(requests[0])  # prefix caches and grammars built untimed
        for request in requests:
            results = {}
            for label, router in (("focus", focused), ("full", full)):
                start = time.thread_time()
                results[label] = router.route(request)
                ms[label].append((time.thread_time() - start) * 1000.0)
            rows.append({"request": request, **compare(results["focus"], results["full"])})
    p50 = {label: percentile(values, 50) or 0.0 for label, values in ms.items()}
    return {
        "router": str(path),
        "requests": len(requests),
        "threads": threads,
        "same_answers": sum(row["same_answer"] for row in rows),
        "tolerance": NAME_TOLERANCE,
        "focus_tolerance": FOCUS_TOLERANCE,
        "max_tool_gap": max(row["tool_gap"] for row in rows),
        "tool_within_tolerance": sum(row["tool_gap"] <= NAME_TOLERANCE for row in rows),
        "tool_within_focus_tolerance": sum(row["tool_gap"] <= FOCUS_TOLERANCE for row in rows),
        "max_no_tool_gap": max(row["no_tool_gap"] for row in rows),
        "no_tool_within_tolerance": sum(row["no_tool_gap"] <= NAME_TOLERANCE for row in rows),
        "lower_bounds_ok": sum(row["bound_ok"] for row in rows),
        "median_unresolved_mass": percentile([row["unresolved_mass"] for row in rows], 50),
        "runner_up_named": sum(row["runner_up_named"] for row in rows),
        "cpu_ms_p50": p50,
        "speedup_p50": p50["full"] / p50["focus"] if p50["focus"] else None,
        "rows": rows,
        "ms": ms,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toolroute.bench.name_focus_parity", description=__doc__)
    parser.add_argument("router", type=Path, help="a router GGUF")
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL: the requests")
    parser.add_argument("--requests", type=int, default=300, help="rows, spread over the file (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--out", type=Path, help="write the measurement as JSON here")
    args = parser.parse_args(argv)
    catalogue = read_router_file(args.router).catalogue  # the header alone: no third load of the weights
    requests = spread([e.request for e in read_valid_examples(args.data, catalogue).examples], args.requests)
    found = measure(args.router, requests, args.threads)
    tolerance, focus = f"{NAME_TOLERANCE:g}", f"{FOCUS_TOLERANCE:g}"
    print(
        f"{found['requests']} requests: same answer {found['same_answers']}; no_tool's probability "
        f"within {tolerance} on {found['no_tool_within_tolerance']} (largest gap "
        f"{found['max_no_tool_gap']:.2e}); the tool's within {tolerance} on "
        f"{found['tool_within_tolerance']}, within {focus} on {found['tool_within_focus_tolerance']} "
        f"(largest gap {found['max_tool_gap']:.2e}); lower bounds hold on {found['lower_bounds_ok']}; "
        f"median unresolved mass {found['median_unresolved_mass']:.2e}; runner-up named on "
        f"{found['runner_up_named']}; CPU p50 {found['cpu_ms_p50']['focus']:.0f} ms focused, "
        f"{found['cpu_ms_p50']['full']:.0f} ms full ({found['speedup_p50']:.2f}x)"
    )
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
