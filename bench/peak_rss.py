"""A router process's resident memory with `release_memory` on and off: same file, same requests.

    python -m toolroute.bench.peak_rss [ROUTER.gguf] [--data FILE] [--requests 194] [--threads 1]
                                       [--contexts 1] [--rounds 1] [--out results/memory/NAME]

Each side runs in a fresh Python process of its own (a process's peak is its own: `VmHWM`), which
imports only the runtime, loads the router with `release_memory=True` (the default: the weights'
pages dropped before a context is made, the cleared KV cache's zero pages given back after it,
`runtime/memory.py`) or `False`, with `--contexts` contexts (each made, and released, in turn:
what `toolroute serve --contexts` holds), and routes the requests one after another. Each
reports its resident memory after the load and after the last route (`VmRSS`), its peak
(`VmHWM`), the load time, each route's wall-clock latency, what the release did (summed over the
contexts), and every result; the parent checks that the
two sides' results are the same in every field but latency. `--rounds N` runs the pair N times,
alternating which side goes first, and reports medians. Without a router the untuned
customer-support router is built from the default base (`router_files.untuned_router`), with its
eval set as the requests. Prints a Markdown table; `--out` writes `peak-rss.json`, `PEAK_RSS.md`
and `peak-rss.png` there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIDES = ("off", "on")  # release_memory False, True
CHILD_TIMEOUT_S = 3600.0


def child(router: Path, requests_file: Path, release: bool, threads: int, contexts: int) -> dict[str, Any]:
    """Run in the measured process: load, route every request, report (nothing heavier is imported)."""
    from toolroute.runtime.resources import peak_rss_mb, rss_mb
    from toolroute.runtime.router import Router

    requests = json.loads(requests_file.read_text())
    started = rss_mb()
    clock = time.perf_counter()
    router_ = Router.load(router, n_threads=threads, n_contexts=contexts, release_memory=release)
    load_s = time.perf_counter() - clock
    after_load = rss_mb()
    releases = [slot.context.release for slot in router_._all_slots]  # one per context
    results, latencies = [], []
    try:
        for request in requests:
            clock = time.perf_counter()
            result = router_.route(request)
            latencies.append((time.perf_counter() - clock) * 1000.0)
            results.append(result.model_dump(mode="json", exclude={"latency_ms"}))
        routed = rss_mb()  # the steady state a long-lived process keeps
    finally:
        router_.close()
    return {
        "release_memory": release,
        "rss_before_load_mb": started,
        "rss_after_load_mb": after_load,
        "rss_routed_mb": routed,
        "peak_rss_mb": peak_rss_mb(),
        "load_s": load_s,
        "weights_dropped": sum(done.weights_dropped for done in releases),
        "kv_released": sum(done.kv_released for done in releases),
        "skipped": "; ".join(sorted({done.skipped for done in releases if done.skipped})),
        "latency_ms": latencies,
        "results": results,
    }


def _run_side(router: Path, requests_file: Path, side: str, threads: int, contexts: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "toolroute.bench.peak_rss",
        "--child",
        side,
        str(router),
        "--requests-file",
        str(requests_file),
        "--threads",
        str(threads),
        "--contexts",
        str(contexts),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} process failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(
    router: Path, requests: list[str], threads: int, rounds: int, label: str, contexts: int = 1
) -> dict[str, Any]:
    """Both sides `rounds` times, alternating which goes first; medians and the output check."""
    from toolroute.bench.metrics import percentile

    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as scratch:
        requests_file = Path(scratch) / "requests.json"
        requests_file.write_text(json.dumps(requests))
        for round_ in range(rounds):
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                runs[side].append(_run_side(router, requests_file, side, threads, contexts))
    reference = runs["off"][0]["results"]
    differing = sorted(
        {
            index
            for run in runs["off"] + runs["on"]
            for index, row in enumerate(run["results"])
            if row != reference[index]
        }
    )

    def median(side: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[side])

    summary = {
        side: {
            "rss_after_load_mb": median(side, "rss_after_load_mb"),
            "peak_rss_mb": median(side, "peak_rss_mb"),
            "rss_routed_mb": median(side, "rss_routed_mb"),
            "load_s": median(side, "load_s"),
            "latency_ms_p50": percentile([ms for run in runs[side] for ms in run["latency_ms"]], 50),
            "weights_dropped": runs[side][0]["weights_dropped"],
            "kv_released": runs[side][0]["kv_released"],
            "skipped": runs[side][0]["skipped"],
        }
        for side in SIDES
    }
    return {
        "router": label,
        "requests": len(requests),
        "threads": threads,
        "contexts": contexts,
        "rounds": rounds,
        "same_results": len(requests) - len(differing),
        "differing_requests": [requests[index] for index in differing],
        "summary": summary,
        # Every run's results were compared above; one copy is kept (the same in all where
        # `same_results` says so), beside each run's numbers.
        "results": reference,
        "runs": {
            side: [{k: v for k, v in run.items() if k != "results"} for run in runs[side]] for side in SIDES
        },
    }


def markdown(found: dict[str, Any]) -> str:
    lines = [
        f"Router `{found['router']}`, {found['requests']} requests, {found['threads']} thread(s), "
        f"{found.get('contexts', 1)} context(s), "
        f"{found['rounds']} round(s) (medians); results the same in every field but latency on "
        f"{found['same_results']} of {found['requests']}.",
        "",
        "| release_memory | RSS after load MB | peak RSS MB | RSS after the routes MB | load s | p50 ms "
        "| weights' pages dropped MB | KV cache given back MB | skipped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for side in SIDES:
        row = found["summary"][side]
        lines.append(
            f"| {side} | {row['rss_after_load_mb']:.1f} | {row['peak_rss_mb']:.1f} "
            f"| {row['rss_routed_mb']:.1f} "
            f"| {row['load_s']:.2f} | {row['latency_ms_p50']:.1f} | {row['weights_dropped'] / 1e6:.1f} "
            f"| {row['kv_released'] / 1e6:.1f} | {row['skipped'] or '-'} |"
        )
    return "\n".join(lines) + "\n"


def plot(found: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolroute.runtime.files import atomic_write_png

    keys = (
        ("rss_after_load_mb", "after load"),
        ("peak_rss_mb", "peak"),
        ("rss_routed_mb", "after the routes"),
    )
    figure, axes = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for offset, side in ((-width / 2, "off"), (width / 2, "on")):
        values = [found["summary"][side][key] for key, _ in keys]
        bars = axes.bar([i + offset for i in range(len(keys))], values, width, label=f"release_memory {side}")
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks(range(len(keys)), [label for _, label in keys])
    axes.set_ylabel("resident memory, MB")
    axes.set_title(
        f"{Path(found['router']).name}: {found['requests']} requests, one process a side", fontsize=9
    )
    highest = max(found["summary"][side][key] for side in SIDES for key, _ in keys)
    axes.set_ylim(0, highest * 1.3)  # room for the legend above the bars
    axes.legend(fontsize=8, ncols=2, loc="upper center")
    figure.tight_layout()
    atomic_write_png(figure, path)
    plt.close(figure)


def _requests(data: Path, router: Path, count: int) -> list[str]:
    from toolroute.runtime.router_file import read_router_file
    from toolroute.train.formats import read_valid_examples

    from .narrowed_latency import spread

    catalogue = read_router_file(str(router)).catalogue  # the header alone
    return spread([example.request for example in read_valid_examples(data, catalogue).examples], count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toolroute.bench.peak_rss", description=__doc__)
    parser.add_argument(
        "router", type=Path, nargs="?", help="a router GGUF (default: the untuned customer-support one)"
    )
    parser.add_argument(
        "--data", type=Path, help="labelled data whose requests are routed (default: the CS eval set)"
    )
    parser.add_argument("--requests", type=int, default=194, help="rows, spread over the file (default 194)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="pairs of processes, alternating order (default 1)"
    )
    parser.add_argument("--contexts", type=int, default=1, help="contexts the router holds (default 1)")
    parser.add_argument("--out", type=Path, help="write peak-rss.json, PEAK_RSS.md and peak-rss.png here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--requests-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.requests, args.contexts) < 1:
        parser.error("--rounds, --requests and --contexts must be at least 1")
    if args.child is not None:
        print(
            json.dumps(
                child(args.router, args.requests_file, args.child == "on", args.threads, args.contexts)
            )
        )
        return
    from toolroute.runtime.files import atomic_write_text

    from .load import EVAL, TOOLS
    from .router_files import untuned_router

    with tempfile.TemporaryDirectory() as scratch:
        router = args.router or untuned_router(TOOLS, Path(scratch) / "untuned-cs.gguf", "compact")
        if not router.is_file():
            parser.error(f"{router}: no such router file")
        requests = _requests(args.data or EVAL, router, args.requests)
        label = str(args.router) if args.router else "untuned customer support (default base, Q4_1)"
        found = measure(router, requests, args.threads, args.rounds, label, args.contexts)
    table = markdown(found)
    print(table, end="")
    if args.out is not None:
        atomic_write_text(args.out / "peak-rss.json", json.dumps(found, indent=1) + "\n")
        atomic_write_text(args.out / "PEAK_RSS.md", table)
        plot(found, args.out / "peak-rss.png")
    if found["same_results"] != found["requests"]:
        sys.exit(f"{found['requests'] - found['same_results']} requests routed differently on and off")


if __name__ == "__main__":
    main()
