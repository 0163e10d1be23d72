"""The copy rule and the call score on the real default base (SmolLM2-135M, untuned) in a real
router GGUF: `make test-slow`. The base's choices mean little; what is checked is that every
copied value it writes is a span of the request, and that the score is there for every call."""

from __future__ import annotations

import json

import pytest
import runtime_support

from support import ROOT
from toolroute.grammars import CopiedArgument, GrammarOptions, is_span
from toolroute.runtime.router import Router

pytestmark = pytest.mark.slow

COPIED = tuple(
    CopiedArgument(tool=tool, argument="order_id", source="declared")
    for tool in ("track_order", "request_refund", "escalate")
)
EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"


@pytest.fixture(scope="module")
def real_copied(tmp_path_factory):
    metadata = runtime_support.router_metadata(options=GrammarOptions(), copied=COPIED)
    build = lambda path: runtime_support.build_router_file(path, metadata)  # noqa: E731
    return runtime_support.cached_file(tmp_path_factory, "customer-support-copied.gguf", build)


def _requests(count: int) -> list[str]:
    rows = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines()]
    return [next(m["content"] for m in reversed(r["messages"]) if m["role"] == "user") for r in rows][:count]


def test_the_real_base_writes_only_spans_with_the_rule_on(real_copied, tmp_path_factory):
    requests = [*_requests(12), 'where is "ORD-77\\x"? 😀', "Order nº 5512 — où est-il ?"]
    spans = others = 0
    # The required cut-off off: the untuned base means little by its spans, and a call is demanded.
    with Router.load(real_copied, n_threads=2, min_required_span_mass=0.0) as router:
        assert len(router.copy_rule.copied) == 3
        for text in requests:
            # Narrowed to one tool and a call required, every output writes a copied value.
            result = router.route(text, tools=["track_order"], no_tool=False)
            assert result.kind != "invalid", (text, result.error)
            value = result.call.arguments.get("order_id") if result.call is not None else None
            if value is not None:
                assert is_span(value, text.strip()), (value, text)
                spans += 1
            if result.call is not None:
                assert (
                    result.call_logprob is not None and result.call_logprob <= result.min_token_logprob <= 0
                )
    with Router.load(real_copied, n_threads=2, copy_rule=False) as plain:
        for text in requests:
            result = plain.route(text, tools=["track_order"], no_tool=False)
            value = result.call.arguments.get("order_id") if result.call is not None else None
            others += value is not None and not is_span(value, text.strip())
    assert spans == len(requests)
    print(f"copied values: {spans} spans with the rule; {others} of {len(requests)} not spans without it")
    # The real file of the other runtime tests (no copied arguments) is untouched by the rule.
    with Router.load(runtime_support.real_router_file(tmp_path_factory), n_threads=2) as untouched:
        assert untouched.copy_rule.limits == {} and untouched.route("where is ORD-1?").kind != "invalid"
