"""Route latency, load time and peak RSS of the runtime against llama-cpp-python's own chat completion.

    python bench/runtime_latency.py [ROUTER.gguf] [--quant-files A.gguf B.gguf ...] [--limit N]
                                    [--threads T] [--contexts] [--prompt-mode compact]

Without a router file, the untuned customer-support router is built from the default base into a
temporary directory (the latency of an untuned router is the latency of a trained one: the same
prompt and grammar, and outputs of the same shape). A file without router metadata (a plain
quantized GGUF, say) gets the customer-support metadata embedded the same way.

Configurations, each in its own process so that peak RSS is its own:

- `router`: `Router.route` (cached system-prompt prefix, forced bytes appended without decoding);
- `router, no prefix cache`: the whole prompt evaluated for every request;
- `router, no fast-forward`: every output token decoded by the model;
- `naive`: `Llama.create_chat_completion(messages, grammar=LlamaGrammar.from_string(gbnf),
  temperature=0)` on the same GGUF (which reuses the previous prompt's KV prefix by itself).

The requests are the customer-support eval set (`examples/customer_support/eval.jsonl`, the user
message of each row). `--contexts` adds a concurrency table: 4 client threads against one
context with all threads vs two contexts with half each. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"
TOOLS = ROOT / "examples" / "customer_support" / "tools.py"
CONFIGS = {
    "router": {"cache_prefix": True, "fast_forward": True},
    "router, no prefix cache": {"cache_prefix": False, "fast_forward": True},
    "router, no fast-forward": {"cache_prefix": True, "fast_forward": False},
    "naive create_chat_completion": None,
}


# -- router files ------------------------------------------------------------------------------


def has_router_metadata(path: Path) -> bool:
    from llama_cpp import Llama

    vocab = Llama(str(path), vocab_only=True, verbose=False)
    try:
        return any(key.startswith("toolroute.") for key in vocab.metadata)
    finally:
        vocab.close()


def embed_customer_support(source: Path, destination: Path, mode: str) -> Path:
    """`source` with the customer-support router metadata (default grammar options)."""
    from toolroute.export.embed import write_router_gguf
    from toolroute.grammars import GrammarOptions, catalogue_gbnf, load_catalogue, render_system_prompt
    from toolroute.runtime.chat import ChatTemplate
    from toolroute.runtime.router_file import RouterMetadata

    catalogue = load_catalogue(TOOLS)
    template = ChatTemplate.from_gguf(source)
    options = GrammarOptions()
    metadata = RouterMetadata(
        catalogue=catalogue.to_json(),
        catalogue_sha256=catalogue.sha256,
        prompt_mode=mode,
        system_prompt=render_system_prompt(catalogue, mode),
        grammar=catalogue_gbnf(catalogue, options),
        grammar_options=options.model_dump_json(),
        chat_template=template.template,
        completion_suffix=template.completion_suffix(),
        base=json.dumps({"spec": str(source)}),
        manifest_sha256="0" * 64,
    )
    return write_router_gguf(source, destination, metadata)


def requests(limit: int | None) -> list[str]:
    rows = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["messages"][1]["content"] for row in rows]
    return texts[:limit] if limit else texts


# -- workers (one process per configuration) ----------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_router(path: str, texts: list[str], threads: int, options: dict[str, Any]) -> dict[str, Any]:
    from toolroute.runtime.router import Router

    start = time.perf_counter()
    router = Router.load(path, n_threads=threads, **options)
    load_s = time.perf_counter() - start
    for text in texts[:2]:
        router.route(text)  # warm-up: first-call allocations, page faults
    latencies, outputs, prompt, completion, valid = [], [], [], [], 0
    for text in _progress(texts, "router"):
        result = router.route(text)
        latencies.append(result.latency_ms)
        outputs.append(result.raw)
        prompt.append(result.prompt_tokens - result.cached_tokens)
        completion.append(result.completion_tokens)
        valid += result.kind in ("call", "no_tool", "low_confidence")
    router.close()
    return _summary(load_s, latencies, outputs, prompt, completion, valid)


def run_naive(path: str, texts: list[str], threads: int) -> dict[str, Any]:
    from llama_cpp import Llama, LlamaGrammar

    from toolroute.runtime.limits import gbnf_max_bytes
    from toolroute.runtime.router_file import RouterMetadata

    start = time.perf_counter()
    llama = Llama(path, n_ctx=4096, n_threads=threads, verbose=False)
    metadata = RouterMetadata.from_kv(llama.metadata, where=path)
    catalogue = metadata.load_catalogue()
    grammar = LlamaGrammar.from_string(metadata.grammar, verbose=False)
    load_s = time.perf_counter() - start
    max_tokens = (gbnf_max_bytes(metadata.grammar) or 1024) + 1

    def complete(text: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": metadata.system_prompt}, {"role": "user", "content": text}]
        return llama.create_chat_completion(messages, grammar=grammar, temperature=0.0, max_tokens=max_tokens)

    for text in texts[:2]:
        complete(text)
    latencies, outputs, prompt, completion, valid = [], [], [], [], 0
    for text in _progress(texts, "naive"):
        begin = time.perf_counter()
        response = complete(text)
        latencies.append((time.perf_counter() - begin) * 1000.0)
        content = response["choices"][0]["message"]["content"] or ""
        outputs.append(content)
        prompt.append(response["usage"]["prompt_tokens"])
        completion.append(response["usage"]["completion_tokens"])
        valid += catalogue.parse(content) is not None
    llama.close()
    return _summary(load_s, latencies, outputs, prompt, completion, valid)


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
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
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


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * q / 100.0
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def _summary(load_s: float, latencies, outputs, prompt, completion, valid) -> dict[str, Any]:
    return {
        "load_s": load_s,
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "mean_ms": statistics.fmean(latencies),
        "peak_rss_mb": peak_rss_mb(),
        "prompt_tokens_evaluated": statistics.fmean(prompt),
        "completion_tokens": statistics.fmean(completion),
        "valid": valid,
        "n": len(outputs),
        "outputs": outputs,
    }


def worker(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    texts = requests(spec["limit"])
    if spec["kind"] == "naive":
        result = run_naive(spec["path"], texts, spec["threads"])
    elif spec["kind"] == "concurrent":
        result = run_concurrent(spec["path"], texts, spec["threads"], spec["contexts"], spec["clients"])
    else:
        result = run_router(spec["path"], texts, spec["threads"], spec["options"])
    print(json.dumps(result))


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=False, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- driver ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("router", nargs="?", help="a router GGUF (default: the untuned customer-support one)")
    parser.add_argument("--quant-files", nargs="*", default=[], help="more GGUF files to compare")
    parser.add_argument("--limit", type=int, help="only the first N eval requests")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
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
                from toolroute.runtime.base_models import packaged_gguf

                print("building the untuned customer-support router from the default base", file=sys.stderr)
                target = Path(scratch) / "customer-support-untuned.gguf"
                files.append(embed_customer_support(packaged_gguf(), target, args.prompt_mode))
            elif has_router_metadata(Path(given)):
                files.append(Path(given))
            else:
                target = Path(scratch) / f"{index}-{Path(given).name}"
                files.append(embed_customer_support(Path(given), target, args.prompt_mode))

        n = len(requests(args.limit))
        print(f"\n{n} customer-support eval requests, {args.threads} thread(s), {os.cpu_count()} CPUs\n")
        if not args.skip_latency:
            latency_table(files, args, n)
        if args.contexts:
            contexts_table(files, args)
    return 0


def latency_table(files: list[Path], args: argparse.Namespace, n: int) -> None:
    header = (
        "| file | configuration | load s | p50 ms | p95 ms | mean ms | peak RSS MB "
        "| prompt tok evaluated | completion tok | valid | same output as router |"
    )
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in files:
        reference = None
        for name, options in CONFIGS.items():
            if args.configs and name not in args.configs:
                continue
            spec = {"path": str(path), "limit": args.limit, "threads": args.threads}
            spec |= {"kind": "naive"} if options is None else {"kind": "router", "options": options}
            result = spawn(spec)
            if name == "router":
                reference = result["outputs"]
            same = "-"
            if reference is not None:
                same = f"{sum(a == b for a, b in zip(reference, result['outputs'], strict=True))}/{n}"
            print(
                f"| {path.name} | {name} | {result['load_s']:.2f} | {result['p50_ms']:.0f} "
                f"| {result['p95_ms']:.0f} | {result['mean_ms']:.0f} | {result['peak_rss_mb']:.0f} "
                f"| {result['prompt_tokens_evaluated']:.0f} | {result['completion_tokens']:.1f} "
                f"| {result['valid']}/{result['n']} | {same} |",
                flush=True,
            )
    print("\n(naive: the prompt size it reports; it may reuse part of the previous prompt's KV state)")


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
