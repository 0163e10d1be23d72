"""Score a router GGUF on labelled data with the runtime itself (torch-free).

Constrained (the default): each request is routed exactly as an app would route it (grammar,
cached prefix, confidence; no threshold, so the risk-coverage sweep sees every call), then scored
by `metrics.py`. Unconstrained: the same prompt tokens, greedy free generation with
llama-cpp-python's own `create_completion` and no grammar, parsed afterwards; this is where the
valid-tool-call rate says something about the model rather than the grammar.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from llama_cpp import Llama
from tqdm import tqdm

from toolroute.grammars import NO_TOOL, Catalogue, NoTool, ToolCall
from toolroute.runtime.results import RouteInputError, RouteResult
from toolroute.runtime.router import Router
from toolroute.train.examples import Example

from .metrics import EvalReport, Gold, Prediction, evaluate_predictions


def prediction_of(result: RouteResult) -> Prediction:
    call = result.call if result.kind in ("call", "low_confidence") else None
    kind = "call" if call else "no_tool" if result.kind == "no_tool" else "invalid"
    return Prediction(
        kind=kind,
        tool=call.tool if call else None,
        arguments=call.arguments if call else None,
        raw=result.raw,
        confidence=result.confidence,
        call_logprob=result.call_logprob,
        min_token_logprob=result.min_token_logprob,
        no_tool_probability=result.probabilities.get(NO_TOOL),
        latency_ms=result.latency_ms,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )


def prediction_of_text(
    raw: str, catalogue: Catalogue, latency_ms: float | None, prompt_tokens: int | None
) -> Prediction:
    """A free-generation output, parsed: anything but one valid call or no_tool is invalid."""
    parsed = catalogue.parse(raw.strip())
    common = {"raw": raw, "latency_ms": latency_ms, "prompt_tokens": prompt_tokens}
    if isinstance(parsed, ToolCall):
        return Prediction(kind="call", tool=parsed.tool, arguments=parsed.arguments, **common)
    if isinstance(parsed, NoTool):
        return Prediction(kind="no_tool", **common)
    return Prediction(kind="invalid", **common)


def spread(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """`limit` examples spread evenly over the file, first one included (all of them without a
    limit): a file sorted by tool, as many datasets are, still gives every tool its share."""
    if not limit or limit >= len(examples):
        return list(examples)
    return [examples[index * len(examples) // limit] for index in range(limit)]


def gold_of(example: Example) -> Gold:
    target = example.target
    return Gold(
        request=example.request,
        tool=target.tool,
        arguments=None if target.tool == NO_TOOL else target.arguments,
    )


def _free_generation(router: Router, examples: Sequence[Example], description: str) -> list[Prediction]:
    llama = Llama(
        router.path, n_ctx=router.n_ctx, n_threads=router.n_threads, verbose=False, logits_all=False
    )
    suffix = router.metadata.completion_suffix
    predictions = []
    try:
        for example in tqdm(examples, desc=description, leave=False):
            tokens, cached, grammar = router.prepare(example.request, list(example.history) or None)
            start = time.perf_counter()
            output = llama.create_completion(
                tokens,
                max_tokens=router.completion_budget(len(tokens), cached, grammar),
                temperature=0.0,
                stop=[suffix] if suffix else None,
            )
            latency = (time.perf_counter() - start) * 1000.0
            raw = output["choices"][0]["text"]
            predictions.append(prediction_of_text(raw, router.catalogue, latency, len(tokens)))
    finally:
        llama.close()
    return predictions


def _routed(router: Router, example: Example) -> Prediction:
    """The example routed; one the router refuses (too long for the context) counts as invalid."""
    try:
        return prediction_of(router.route(example.request, list(example.history) or None))
    except RouteInputError as exc:
        return Prediction(kind="invalid", raw=f"(refused: {exc})")


def evaluate_router(
    router: Router, examples: Sequence[Example], *, unconstrained: bool = False
) -> tuple[EvalReport, list[Prediction]]:
    description = f"eval {router.path}" + (" (free)" if unconstrained else "")
    if unconstrained:
        predictions = _free_generation(router, examples, description)
    else:
        predictions = [_routed(router, example) for example in tqdm(examples, desc=description, leave=False)]
    golds = [gold_of(e) for e in examples]
    return evaluate_predictions(golds, predictions, router.catalogue), predictions
