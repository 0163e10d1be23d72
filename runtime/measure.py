"""One benchmark row: load a router GGUF, route a labelled set, report speed, footprint and accuracy.

    python -m toolroute.runtime.measure FILE.gguf --data eval.jsonl [--runner router|naive]
                                        [--limit N] [--threads T] --json OUT.json

Run once per file in a fresh process (the benchmark does), so that load time and peak RSS
belong to that file alone. Torch-free: anyone with the runtime installed can measure a router.

Runners:
- `router`: `Router.route` (cached prefix, grammar, confidence), exactly what an app runs;
- `naive`: llama-cpp-python's `create_chat_completion(messages, grammar=LlamaGrammar(...),
  temperature=0)` on the same file with the same system prompt: the speed reference, the way a
  hand-written llama.cpp script routes.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .files import atomic_write_text
from .metrics import EvalReport, Prediction, evaluate_predictions

WARMUP = 2


class Measurement(BaseModel):
    file: str
    runner: str
    size_bytes: int
    load_s: float
    peak_rss_mb: float
    threads: int
    requests: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    output_tokens_per_s: float | None  # output tokens over routing time, prompt included
    report: EvalReport


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own memory map; `ru_maxrss` on
    Linux keeps the parent's peak across fork and exec (a bench parent holding torch showed
    1.8 GB for every child), so it is only the fallback where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _naive_predictions(path: Path, examples: list[Any], threads: int) -> tuple[list[Prediction], float, Any]:
    from llama_cpp import Llama, LlamaGrammar

    from .evaluate import prediction_of_text
    from .limits import gbnf_max_bytes
    from .router_file import RouterMetadata

    started = time.perf_counter()
    # The router's threads for prompts too (llama-cpp-python's default for prompts is every CPU).
    llama = Llama(str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    metadata = RouterMetadata.from_kv(llama.metadata, where=str(path))
    catalogue = metadata.load_catalogue()
    grammar = LlamaGrammar.from_string(metadata.grammar, verbose=False)
    load_s = time.perf_counter() - started
    max_tokens = (gbnf_max_bytes(metadata.grammar) or 1024) + 1

    def complete(example: Any) -> tuple[str, float, int, int]:
        messages = [{"role": "system", "content": metadata.system_prompt}]
        messages += [{"role": t.role, "content": t.content} for t in example.history]
        messages.append({"role": "user", "content": example.request})
        begin = time.perf_counter()
        response = llama.create_chat_completion(
            messages, grammar=grammar, temperature=0.0, max_tokens=max_tokens
        )
        latency = (time.perf_counter() - begin) * 1000.0
        usage = response["usage"]
        content = response["choices"][0]["message"]["content"] or ""
        return content, latency, usage["prompt_tokens"], usage["completion_tokens"]

    for example in examples[:WARMUP]:
        complete(example)
    predictions = []
    for example in _progress(examples, f"naive {path.name}"):
        content, latency, prompt_tokens, completion_tokens = complete(example)
        prediction = prediction_of_text(content, catalogue, latency, prompt_tokens)
        predictions.append(prediction.model_copy(update={"completion_tokens": completion_tokens}))
    llama.close()
    return predictions, load_s, catalogue


def _router_predictions(
    path: Path, examples: list[Any], threads: int, options: dict[str, Any]
) -> tuple[list[Prediction], float, Any]:
    from .evaluate import prediction_of
    from .router import Router

    started = time.perf_counter()
    router = Router.load(path, n_threads=threads, min_confidence=0.0, **options)
    load_s = time.perf_counter() - started
    for example in examples[:WARMUP]:
        router.route(example.request, list(example.history) or None)
    predictions = [
        prediction_of(router.route(example.request, list(example.history) or None))
        for example in _progress(examples, f"router {path.name}")
    ]
    catalogue = router.catalogue
    router.close()
    return predictions, load_s, catalogue


RUNNERS = {"router": {}, "router-no-prefix-cache": {"cache_prefix": False}, "naive": None}


def measure(path: Path, data: Path, runner: str, limit: int | None, threads: int | None) -> Measurement:
    from toolroute.train.formats import read_examples

    from .evaluate import gold_of, spread
    from .router import _default_threads

    threads = threads or _default_threads(1)
    read = read_examples(data, _embedded_catalogue(path))
    if read.errors:
        raise ValueError(f"{data}: {len(read.errors)} invalid rows, first: {read.errors[0]}")
    examples = spread(read.examples, limit)
    options = RUNNERS[runner]
    if options is None:
        predictions, load_s, catalogue = _naive_predictions(path, examples, threads)
    else:
        predictions, load_s, catalogue = _router_predictions(path, examples, threads, options)
    report = evaluate_predictions([gold_of(e) for e in examples], predictions, catalogue)
    latencies = [p.latency_ms for p in predictions if p.latency_ms is not None]
    outputs = sum(p.completion_tokens or 0 for p in predictions)
    return Measurement(
        file=str(path),
        runner=runner,
        size_bytes=path.stat().st_size,
        load_s=round(load_s, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        threads=threads,
        requests=len(examples),
        latency_ms_p50=report.latency_ms_p50,
        latency_ms_p95=report.latency_ms_p95,
        output_tokens_per_s=round(outputs / (sum(latencies) / 1000.0), 1) if latencies and outputs else None,
        report=report,
    )


def _embedded_catalogue(path: Path) -> Any:
    from llama_cpp import Llama

    from .router_file import RouterMetadata

    vocab = Llama(str(path), vocab_only=True, verbose=False)
    try:
        return RouterMetadata.from_kv(vocab.metadata, where=str(path)).load_catalogue()
    finally:
        vocab.close()


def _progress(items: list[Any], description: str) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=description, leave=False, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.runtime.measure", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runner", choices=sorted(RUNNERS), default="router")
    parser.add_argument("--limit", type=int, help="N requests spread evenly over the file")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path, required=True, help="where the measurement goes")
    args = parser.parse_args(argv)
    result = measure(args.model, args.data, args.runner, args.limit, args.threads)
    atomic_write_text(args.json, result.model_dump_json(indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
