"""One benchmark row: load a router GGUF, route a labelled set, report speed, footprint and accuracy.

    python -m toolroute.bench.measure FILE.gguf --data eval.jsonl [--runner router|naive]
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
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.resources import peak_rss_mb

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


def _naive_predictions(path: Path, examples: list[Any], threads: int) -> tuple[list[Prediction], float, Any]:
    from llama_cpp import Llama, LlamaGrammar

    from toolroute.grammars.output_bound import completion_token_budget
    from toolroute.runtime.router_file import read_router_file
    from toolroute.runtime.template_sandbox import BoundedChatFormatter

    from .evaluate import prediction_of_text

    started = time.perf_counter()
    # Checked before llama.cpp opens the file, as Router.load does: the grammar handed to
    # LlamaGrammar below is the one the catalogue makes, never the file's own text unchecked.
    router_file = read_router_file(path)
    metadata, catalogue = router_file.metadata, router_file.catalogue
    # The router's threads for prompts too (llama-cpp-python's default for prompts is every CPU).
    llama = Llama(str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    # llama-cpp-python's own chat handler for the file's template, on the bounded sandbox.
    eos, bos = llama.token_eos(), llama.token_bos()
    llama.chat_handler = BoundedChatFormatter(
        metadata.chat_template,
        eos_token=llama.detokenize([eos], special=True).decode("utf-8", "replace") if eos >= 0 else "",
        bos_token=llama.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else "",
        stop_token_ids=[eos],
    ).to_chat_handler()
    grammar = LlamaGrammar.from_string(metadata.grammar, verbose=False)
    load_s = time.perf_counter() - started
    max_tokens = completion_token_budget(metadata.grammar)

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
    from toolroute.runtime.router import Router

    from .evaluate import prediction_of

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
    from toolroute.runtime.router import _default_threads
    from toolroute.train.formats import read_valid_examples

    from .evaluate import gold_of, spread

    threads = threads or _default_threads(1)
    examples = spread(read_valid_examples(data, _embedded_catalogue(path)).examples, limit)
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
    from toolroute.runtime.router_file import read_router_file

    return read_router_file(path).catalogue


def _progress(items: list[Any], description: str) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=description, leave=False, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.measure", description=__doc__.split("\n")[0]
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
