"""Route latency with the catalogue narrowed by `tools=` against all of it (issue 15: flat in size).

    python -m toolroute.bench.narrowed_latency ROUTER.gguf --data data/hwu64/test.jsonl \
        [--tools a,b,c] [--requests 60] [--threads 1] [--out results/latency/narrowed.json]

Takes the rows whose gold tool is among `--tools` (default: the three tools most often gold in
the data), spread over the file, and routes each twice on one loaded router, interleaved so that
the machine's load falls on both alike: once with `tools=` those few (the grammar narrowed, the
prompt unchanged), once with the whole catalogue. The clock is the routing thread's CPU time (with
one llama.cpp thread the model runs on it: a busy machine inflates it far less than wall time).
Prints each side's p50 and p95, their ratio, and how often the two chose the same call.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path
from typing import Any

from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.router import Router
from toolroute.train.formats import read_valid_examples

from .metrics import percentile


def spread(items: list[Any], count: int) -> list[Any]:
    """`count` items spread evenly over the list (all of them when it is shorter)."""
    if len(items) <= count:
        return items
    return [items[index * len(items) // count] for index in range(count)]


def measure(router: Router, requests: list[str], narrowed: list[str]) -> dict[str, Any]:
    """CPU ms per route, narrowed and whole, interleaved; and the share of identical calls."""
    times: dict[str, list[float]] = {"narrowed": [], "all": []}
    same = 0
    router.route(requests[0])  # the prefix cache and the grammars are built outside the timing
    router.route(requests[0], tools=narrowed)
    for request in requests:
        results = {}
        for label, tools in (("narrowed", narrowed), ("all", None)):
            start = time.thread_time()
            results[label] = router.route(request, tools=tools)
            times[label].append((time.thread_time() - start) * 1000.0)
        same += results["narrowed"].call == results["all"].call
    p50 = {label: percentile(values, 50) or 0.0 for label, values in times.items()}
    return {
        "requests": len(requests),
        "tools": narrowed,
        "catalogue_tools": len(router.catalogue.names),
        "p50_ms": p50,
        "p95_ms": {label: percentile(values, 95) for label, values in times.items()},
        "ratio_all_over_narrowed": p50["all"] / p50["narrowed"] if p50["narrowed"] else None,
        "same_call": same / len(requests),
        "ms": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("router", type=Path, help="a router GGUF")
    parser.add_argument(
        "--data", type=Path, required=True, help="labelled rows (any format `data check` reads)"
    )
    parser.add_argument("--tools", help="the narrowed set, comma-separated (default: the 3 most frequent)")
    parser.add_argument("--requests", type=int, default=60, help="rows, spread over the file (default 60)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the measurement as JSON here")
    args = parser.parse_args(argv)
    with Router.load(args.router, n_threads=args.threads) as router:
        examples = read_valid_examples(args.data, router.catalogue).examples
        calls = [example for example in examples if not example.target.is_no_tool]
        if args.tools:
            narrowed = [name.strip() for name in args.tools.split(",") if name.strip()]
            unknown = sorted(set(narrowed) - set(router.catalogue.names))
            if unknown:
                parser.error(f"--tools: not in the router's catalogue: {', '.join(unknown)}")
        else:
            counts = collections.Counter(example.target.tool for example in calls)
            narrowed = [name for name, _ in counts.most_common(3)]
        chosen = spread([e.request for e in calls if e.target.tool in narrowed], args.requests)
        if not chosen:
            parser.error(f"{args.data}: no row's gold tool is among {', '.join(narrowed)}")
        result = measure(router, chosen, narrowed)
    result |= {"router": str(args.router), "data": str(args.data), "threads": args.threads, "clock": "cpu"}
    p50, p95 = result["p50_ms"], result["p95_ms"]
    print("| tools | p50 ms | p95 ms |\n|---|---:|---:|")
    print(f"| {len(narrowed)} ({', '.join(narrowed)}) | {p50['narrowed']:.0f} | {p95['narrowed']:.0f} |")
    print(f"| all {result['catalogue_tools']} | {p50['all']:.0f} | {p95['all']:.0f} |")
    print(
        f"\n{result['requests']} requests; p50 all / narrowed = {result['ratio_all_over_narrowed']:.2f}; "
        f"same call {result['same_call']:.0%}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
