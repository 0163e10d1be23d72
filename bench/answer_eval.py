"""`toolroute eval` on the answer step: the router's replies to the data's tool outputs, scored.

Every example with a follow-up (a tool result and the gold reply) is answered from the gold call,
not the routed one: the answer step is measured on its own, whatever routing did (routing has its
own numbers). A GGUF answers through `Router.answer` (the runtime: cached prefix, greedy, the cap);
a training run before export through transformers' greedy `generate` on the same prompt
(`RouterPrompt.render_answer`) and the same cap. Scores: `answer_metrics.py`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from toolroute.runtime.answering import DEFAULT_ANSWER_TOKENS
from toolroute.runtime.results import RouteInputError
from toolroute.train.examples import Example

from .answer_metrics import AnswerCase, AnswerReport, answer_report, score_answer


def followups(examples: Sequence[Example]) -> list[Example]:
    return [example for example in examples if example.answer is not None]


def _call(example: Example) -> dict[str, Any]:
    return {"tool": example.target.tool, "arguments": example.target.arguments or {}}


def _case(example: Example, text: str, finish_reason: str, latency_ms: float | None) -> AnswerCase:
    assert example.answer is not None
    return score_answer(
        text,
        tool_output=example.answer.tool_output,
        request=example.request,
        gold=example.answer.text,
        source=example.source,
        finish_reason=finish_reason,
        latency_ms=latency_ms,
    )


def answer_router(router: Any, examples: Sequence[Example]) -> AnswerReport | None:
    """A GGUF router's answers to the examples' tool outputs (None: no follow-ups, or a router
    trained without answers, which refuses to answer)."""
    rows = followups(examples)
    if not rows or not router.answers_trained:
        return None
    cases = []
    for example in tqdm(rows, desc=f"answers {router.path}", leave=False):
        assert example.answer is not None
        history = list(example.history) or None
        try:
            result = router.answer(example.request, _call(example), example.answer.tool_output, history)
        except RouteInputError as exc:  # a tool output too long for the context: no answer at all
            cases.append(
                _case(example, "", "refused", None).model_copy(update={"answer": f"(refused: {exc})"})
            )
            continue
        cases.append(_case(example, result.text, result.finish_reason, result.latency_ms))
    return answer_report(cases)


def answer_run(
    router: Any, examples: Sequence[Example], max_new_tokens: int = DEFAULT_ANSWER_TOKENS
) -> AnswerReport | None:
    """A training run's answers before export (an `HfRouter`: base + adapter merged, transformers)."""
    import torch

    rows = followups(examples)
    if not rows or not router.manifest.answer_rows:
        return None
    catalogue, suffix = router.catalogue, router.manifest.completion_suffix
    pad = router.tokenizer.pad_token_id or router.tokenizer.eos_token_id
    cases = []
    for example in tqdm(rows, desc=f"answers {router.run.path}", leave=False):
        assert example.answer is not None
        call = example.target.canonical(catalogue)
        text = router.prompt.render_answer(example.request, call, example.answer.tool_output, example.history)
        encoded = router.tokenizer(text, return_tensors="pt")
        start = time.perf_counter()
        with torch.no_grad():
            output = router.model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        latency = (time.perf_counter() - start) * 1000.0
        generated = output[0, encoded["input_ids"].shape[1] :]
        raw = router.tokenizer.decode(generated, skip_special_tokens=False)
        ended = (suffix and suffix in raw) or (len(generated) < max_new_tokens)
        answer = raw.split(suffix)[0] if suffix else raw
        cases.append(_case(example, answer.strip(), "stop" if ended else "length", latency))
    return answer_report(cases)
