"""Route latency, load time and peak RSS of the runtime against llama-cpp-python's own chat completion.

    python -m toolroute.bench.latency [ROUTER.gguf] [--quant-files A.gguf B.gguf ...] [--limit N]
                                    [--threads T] [--contexts] [--prompt-mode compact]
    python -m toolroute.bench.latency breakdown ...   (see latency_breakdown.py)

`breakdown` splits each route into prompt evaluation, decode steps, grammar masks, forced bytes,
confidence and Python overhead, per catalogue (customer support, a mid-size HWU64 subset, full
HWU64); the rest of this docstring is the comparison of configurations.

Without a router file, the untuned customer-support router is built from the default base into a
temporary directory (`router_files.py`: the same prompt, grammar and code as a trained router,
but it fills optional strings up to the caps, so its outputs run longer). A file without router
metadata (a plain quantized GGUF, say) gets the customer-support metadata embedded the same way.

Configurations:

- `router`: `Router.route` (cached system-prompt prefix, forced bytes appended without decoding);
- `router, no prefix cache`: the whole prompt evaluated for every request;
- `router, no fast-forward`: every output token decoded by the model;
- `naive`: `Llama.create_chat_completion(messages, grammar=LlamaGrammar.from_string(gbnf),
  temperature=0)` on the same GGUF (which reuses the previous prompt's KV prefix by itself):
  `measure.NaiveRunner`, the one naive runner of the benchmarks.

The requests are the customer-support eval set (`examples/customer_support/eval.jsonl`, the user
message of each row). Latencies are measured in one process with every configuration loaded,
request by request with the order rotating, so that a change in the machine's load (a shared
box) hits all configurations alike; load time and peak RSS come from a process per
configuration. `--contexts` adds a concurrency table: 4 client threads against one context with
one thread, one context with all cores, and two contexts with half each. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toolroute.bench.metrics import percentile
from toolroute.bench.router_files import embed_catalogue, has_router_metadata, untuned_router
from toolroute.grammars import load_catalogue
from toolroute.runtime.resources import peak_rss_mb, physical_cores
from toolroute.train.formats import read_valid_examples

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"
TOOLS = ROOT / "examples" / "customer_support" / "tools.py"
CONFIGS = {
    "router": {"cache_prefix": True, "fast_forward": True},
    "router, no prefix cache": {"cache_prefix": False, "fast_forward": True},
    "router, no fast-forward": {"cache_prefix": True, "fast_forward": False},
    "naive create_chat_completion": None,
}


def requests(limit: int | None) -> list[str]:
    """The eval set's requests (the routed user turns), read as training reads data: a row that does
    not read stops the run naming its file and line (InvalidDataError)."""
    examples = read_valid_examples(EVAL, load_catalogue(TOOLS)).examples
    texts = [example.request for example in examples]
    return texts[:limit] if limit else texts


# -- workers (one process per configuration) ----------------------------------------------------


class RouterRunner:
    """`Router.route` with one configuration."""

    def __init__(self, path: str, threads: int, options: dict[str, Any]) -> None:
        from toolroute.runtime.router import Router

        self.router = Router.load(path, n_threads=threads, **options)

    def __call__(self, text: str) -> tuple[float, str, int, int, bool]:
        result = self.router.route(text)
        valid = result.kind in ("call", "no_tool", "low_confidence")
        evaluated = result.prompt_tokens - result.cached_tokens
        return result.latency_ms, result.raw, evaluated, result.completion_tokens, valid


class NaiveCall:
    """`measure.NaiveRunner` (create_chat_completion with the router's grammar), as a runner here."""

    def __init__(self, path: str, threads: int) -> None:
        from .measure import NaiveRunner as Runner

        self.runner = Runner(path, threads)

    def __call__(self, text: str) -> tuple[float, str, int, int, bool]:
        done = self.runner.complete(text)
        valid = self.runner.catalogue.parse(done.content) is not None
        return done.latency_ms, done.content, done.prompt_tokens, done.completion_tokens, valid


def make_runner(path: str, threads: int, name: str) -> Any:
    options = CONFIGS[name]
    return NaiveCall(path, threads) if options is None else RouterRunner(path, threads, options)


def run_footprint(path: str, texts: list[str], threads: int, name: str) -> dict[str, Any]:
    """Load time, and peak RSS after loading and routing a few requests, of one configuration."""
    start = time.perf_counter()
    runner = make_runner(path, threads, name)
    load_s = time.perf_counter() - start
    for text in texts[:5]:
        runner(text)
    return {"load_s": load_s, "peak_rss_mb": peak_rss_mb()}


def run_latency(path: str, texts: list[str], threads: int, names: list[str]) -> dict[str, Any]:
    """Every configuration on every request, interleaved (the order rotating from one request to
    the next), so that a change in the machine's load hits all configurations alike."""
    runners = {name: make_runner(path, threads, name) for name in names}
    for runner in runners.values():
        for text in texts[:2]:
            runner(text)  # warm-up: first-call allocations, page faults
    rows: dict[str, list[tuple[float, str, int, int, bool]]] = {name: [] for name in names}
    for index, text in enumerate(_progress(texts, "requests")):
        for offset in range(len(names)):
            name = names[(index + offset) % len(names)]
            rows[name].append(runners[name](text))
    return {name: _summary(rows[name]) for name in names}


def run_concurrent(path: str, texts: list[str], threads: int, contexts: int, clients: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from toolroute.runtime.router import Router

    per_context = max(1, threads // contexts)
    router = Router.load(path, n_threads=per_context, n_contexts=contexts)
    router.route_many(texts[:contexts])
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(router.route, texts))
    wall = time.perf_counter() - start
    router.close()
    latencies = sorted(r.latency_ms for r in results)
    return {
        "requests_per_s": len(texts) / wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "peak_rss_mb": peak_rss_mb(),
        "threads_per_context": per_context,
        "outputs": [r.raw for r in results],
    }


def _progress(texts: list[str], label: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return texts
    return tqdm(texts, desc=label, file=sys.stderr, leave=False)


def _summary(rows: list[tuple[float, str, int, int, bool]]) -> dict[str, Any]:
    latencies = [row[0] for row in rows]
    return {
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_ms": statistics.fmean(latencies),
        "prompt_tokens_evaluated": statistics.fmean(row[2] for row in rows),
        "completion_tokens": statistics.fmean(row[3] for row in rows),
        "valid": sum(row[4] for row in rows),
        "n": len(rows),
        "outputs": [row[1] for row in rows],
        "latencies": latencies,
    }


def worker(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    texts = requests(spec["limit"])
    if spec["kind"] == "footprint":
        result = run_footprint(spec["path"], texts, spec["threads"], spec["name"])
    elif spec["kind"] == "latency":
        result = run_latency(spec["path"], texts, spec["threads"], spec["names"])
    else:
        result = run_concurrent(spec["path"], texts, spec["threads"], spec["contexts"], spec["clients"])
    print(json.dumps(result))


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "toolroute.bench.latency", "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=False, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- driver ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["breakdown"]:
        from .latency_breakdown import main as breakdown

        return breakdown(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("router", nargs="?", help="a router GGUF (default: the untuned customer-support one)")
    parser.add_argument("--quant-files", nargs="*", default=[], help="more GGUF files to compare")
    parser.add_argument("--limit", type=int, help="only the first N eval requests")
    parser.add_argument("--threads", type=int, default=physical_cores(), help="(default: the physical cores)")
    parser.add_argument("--prompt-mode", default="compact", help="for files built here (default compact)")
    parser.add_argument("--contexts", action="store_true", help="also measure 1 vs 2 contexts, 4 clients")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="a subset of the configurations")
    parser.add_argument("--skip-latency", action="store_true", help="only the --contexts table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="toolroute-bench-") as scratch:
        files: list[Path] = []
        for index, given in enumerate([args.router, *args.quant_files]):
            if given is None:
                print("building the untuned customer-support router from the default base", file=sys.stderr)
                target = Path(scratch) / "customer-support-untuned.gguf"
                files.append(untuned_router(TOOLS, target, args.prompt_mode))
            elif has_router_metadata(Path(given)):
                files.append(Path(given))
            else:
                target = Path(scratch) / f"{index}-{Path(given).name}"
                files.append(embed_catalogue(Path(given), TOOLS, target, args.prompt_mode))

        n = len(requests(args.limit))
        print(f"\n{n} customer-support eval requests, {args.threads} thread(s), {os.cpu_count()} CPUs\n")
        if not args.skip_latency:
            latency_table(files, args, n)
        if args.contexts:
            contexts_table(files, args)
    return 0


def latency_table(files: list[Path], args: argparse.Namespace, n: int) -> None:
    header = (
        "| file | configuration | load s | p50 ms | p95 ms | mean ms | mean ms, same-output subset "
        "| peak RSS MB | prompt tok evaluated | completion tok | valid | same output as router |"
    )
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = [name for name in CONFIGS if not args.configs or name in args.configs]
    for path in files:
        spec = {"path": str(path), "limit": args.limit, "threads": args.threads}
        footprints = {name: spawn(spec | {"kind": "footprint", "name": name}) for name in names}
        latencies = spawn(spec | {"kind": "latency", "names": names})
        reference = latencies["router"]["outputs"] if "router" in latencies else None
        # Different configurations can write different outputs (of different lengths); the
        # requests where they all agree compare the same work.
        agreed = [i for i in range(n) if len({latencies[name]["outputs"][i] for name in names}) == 1]
        for name in names:
            result = latencies[name] | footprints[name]
            same = "-"
            if reference is not None:
                same = f"{sum(a == b for a, b in zip(reference, result['outputs'], strict=True))}/{n}"
            subset = statistics.fmean(result["latencies"][i] for i in agreed) if agreed else float("nan")
            print(
                f"| {path.name} | {name} | {result['load_s']:.2f} | {result['p50_ms']:.0f} "
                f"| {result['p95_ms']:.0f} | {result['mean_ms']:.0f} | {subset:.0f} ({len(agreed)} req) "
                f"| {result['peak_rss_mb']:.0f} "
                f"| {result['prompt_tokens_evaluated']:.0f} | {result['completion_tokens']:.1f} "
                f"| {result['valid']}/{result['n']} | {same} |",
                flush=True,
            )
    print(
        "\n(latencies interleaved in one process, request by request; load time and peak RSS (after"
        " loading and 5 requests) in a process per configuration. naive: the prompt size it reports;"
        " llama-cpp-python reuses the KV state of the longest prefix it shares with the previous prompt)"
    )


def contexts_table(files: list[Path], args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 2
    print(f"\nConcurrency: 4 client threads, {cores} CPUs\n")
    print("| file | contexts x threads | requests/s | p50 ms | p95 ms | peak RSS MB | same outputs |")
    print("|---|---|---:|---:|---:|---:|---|")
    for path in files:
        reference = None
        for contexts, threads in dict.fromkeys([(1, 1), (1, cores), (2, max(2, cores))]):
            spec = {"kind": "concurrent", "path": str(path), "limit": args.limit}
            result = spawn(spec | {"threads": threads, "contexts": contexts, "clients": 4})
            reference = reference or result["outputs"]
            print(
                f"| {path.name} | {contexts} x {result['threads_per_context']} "
                f"| {result['requests_per_s']:.2f} | {result['p50_ms']:.0f} | {result['p95_ms']:.0f} "
                f"| {result['peak_rss_mb']:.0f} | {result['outputs'] == reference} |",
                flush=True,
            )


if __name__ == "__main__":
    raise SystemExit(main())
