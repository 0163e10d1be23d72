"""Score a router GGUF on labelled data with the runtime itself (torch-free).

Each request is routed exactly as an app would route it (grammar, cached prefix, confidence; no
threshold, so the risk-coverage sweep sees every call), then scored by `metrics.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from toolroute.grammars import NO_TOOL
from toolroute.train.examples import Example

from .metrics import EvalReport, Gold, Prediction, evaluate_predictions
from .results import RouteResult
from .router import Router


def prediction_of(result: RouteResult) -> Prediction:
    call = result.call if result.kind in ("call", "low_confidence") else None
    kind = "call" if call else "no_tool" if result.kind == "no_tool" else "invalid"
    return Prediction(
        kind=kind,
        tool=call.tool if call else None,
        arguments=call.arguments if call else None,
        raw=result.raw,
        confidence=result.confidence,
        latency_ms=result.latency_ms,
        prompt_tokens=result.prompt_tokens,
    )


def gold_of(example: Example) -> Gold:
    target = example.target
    return Gold(
        request=example.request,
        tool=target.tool,
        arguments=None if target.tool == NO_TOOL else target.arguments,
    )


def evaluate_router(router: Router, examples: Sequence[Example]) -> tuple[EvalReport, list[Prediction]]:
    predictions = []
    for example in tqdm(examples, desc=f"eval {router.path}", leave=False):
        predictions.append(prediction_of(router.route(example.request, list(example.history) or None)))
    golds = [gold_of(e) for e in examples]
    return evaluate_predictions(golds, predictions, router.catalogue), predictions
