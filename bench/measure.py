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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.resources import peak_rss_mb

from .answer_metrics import AnswerReport
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
    # The answer step on the data's follow-ups (the `router` runner, a router trained with answers
    # and data that has them; else None): the same scores `toolroute eval` reports.
    answers: AnswerReport | None = None


class NaiveCompletion(NamedTuple):
    content: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int


class NaiveRunner:
    """llama-cpp-python's `create_chat_completion(messages, grammar=LlamaGrammar(...),
    temperature=0)` on a router file: the router's system prompt, the file's own chat template
    (through llama-cpp-python's chat handler, on the bounded sandbox) and greedy decoding under the
    catalogue's grammar. The one naive runner: `measure` and `bench.latency` both use it.

    The metadata comes from `read_router_file`, checked before llama.cpp opens the file (as
    `Router.load` does): the grammar handed to `LlamaGrammar` is the one the embedded catalogue
    makes, never the file's own text unchecked.
    """

    def __init__(self, path: str | Path, threads: int) -> None:
        from llama_cpp import Llama, LlamaGrammar

        from toolroute.grammars.output_bound import completion_token_budget
        from toolroute.runtime.router_file import read_router_file
        from toolroute.runtime.template_sandbox import BoundedChatFormatter

        started = time.perf_counter()
        router_file = read_router_file(path)
        self.metadata, self.catalogue = router_file.metadata, router_file.catalogue
        # The router's threads for prompts too (llama-cpp-python's default for prompts is every
        # CPU, which spin-waits badly on a shared machine).
        self.llama = Llama(str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        self.llama.chat_handler = BoundedChatFormatter(
            self.metadata.chat_template,
            eos_token=self._text_of(eos),
            bos_token=self._text_of(bos),
            stop_token_ids=[eos],
        ).to_chat_handler()
        self.grammar = LlamaGrammar.from_string(self.metadata.grammar, verbose=False)
        self.load_s = time.perf_counter() - started
        self.max_tokens = completion_token_budget(self.metadata.grammar)

    def _text_of(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def complete(self, request: str, history: Sequence[Any] = ()) -> NaiveCompletion:
        """One request (`history`: earlier turns with `role` and `content`), timed from the
        messages to the response."""
        messages = [{"role": "system", "content": self.metadata.system_prompt}]
        messages += [{"role": turn.role, "content": turn.content} for turn in history]
        messages.append({"role": "user", "content": request})
        begin = time.perf_counter()
        response = self.llama.create_chat_completion(
            messages, grammar=self.grammar, temperature=0.0, max_tokens=self.max_tokens
        )
        latency = (time.perf_counter() - begin) * 1000.0
        usage = response["usage"]
        content = response["choices"][0]["message"]["content"] or ""
        return NaiveCompletion(content, latency, usage["prompt_tokens"], usage["completion_tokens"])

    def close(self) -> None:
        self.llama.close()

    def __enter__(self) -> NaiveRunner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _naive_predictions(path: Path, examples: list[Any], threads: int) -> tuple[list[Prediction], float, Any]:
    from .evaluate import prediction_of_text

    with NaiveRunner(path, threads) as runner:
        for example in examples[:WARMUP]:
            runner.complete(example.request, example.history)
        predictions = []
        for example in _progress(examples, f"naive {path.name}"):
            done = runner.complete(example.request, example.history)
            prediction = prediction_of_text(
                done.content, runner.catalogue, done.latency_ms, done.prompt_tokens
            )
            predictions.append(prediction.model_copy(update={"completion_tokens": done.completion_tokens}))
        return predictions, runner.load_s, runner.catalogue


def _router_predictions(
    path: Path, examples: list[Any], threads: int, options: dict[str, Any], answers: bool
) -> tuple[list[Prediction], float, Any, AnswerReport | None]:
    from toolroute.runtime.router import Router

    from .answer_eval import answer_router
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
    # After routing, so that peak RSS and the route latencies are those of routing alone first.
    answer_report = answer_router(router, examples) if answers else None
    catalogue = router.catalogue
    router.close()
    return predictions, load_s, catalogue, answer_report


RUNNERS = {"router": {}, "router-no-prefix-cache": {"cache_prefix": False}, "naive": None}


def measure(path: Path, data: Path, runner: str, limit: int | None, threads: int | None) -> Measurement:
    from toolroute.runtime.router import _default_threads
    from toolroute.train.formats import read_valid_examples

    from .evaluate import gold_of, spread

    threads = threads or _default_threads(1)
    examples = spread(read_valid_examples(data, _embedded_catalogue(path)).examples, limit)
    options = RUNNERS[runner]
    answers = None
    if options is None:
        predictions, load_s, catalogue = _naive_predictions(path, examples, threads)
    else:
        # Answers once per file: the no-prefix-cache reference row routes the same file again.
        with_answers = runner == "router"
        predictions, load_s, catalogue, answers = _router_predictions(
            path, examples, threads, options, with_answers
        )
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
        answers=answers,
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
