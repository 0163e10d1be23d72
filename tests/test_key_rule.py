"""The key rule (runtime/key_rule.py): optional arguments written below a probability are left out.

The offsets are checked on hand-written canonical calls; the rule itself on the tiny random model,
whose probabilities are spread over 49k tokens, so that a threshold just under 1 leaves out every
optional argument it writes and 0 changes nothing.
"""

from __future__ import annotations

import math

import pytest
import runtime_support

from toolroute.runtime.key_rule import (
    ScoredToken,
    WeakArgument,
    argument_probabilities,
    argument_spans,
    weakest_argument,
)
from toolroute.runtime.router import Router


def _span_text(text: bytes, span: tuple[int, int]) -> bytes:
    return text[span[0] : span[1]]


def test_argument_spans_run_from_the_separator_to_the_end_of_the_value():
    text = (
        '{"tool":"escalate","arguments":{"topic":"legal","note":"a \\"quoted\\" \\\\ é😀",'
        '"count":12,"flags":[true,{"x":"}"}],"deep":{"a":{"b":"c,d"}}}}'
    ).encode()
    spans = argument_spans(text)
    assert list(spans) == ["topic", "note", "count", "flags", "deep"]
    assert _span_text(text, spans["topic"]) == b'{"topic":"legal'  # the closing quote left out
    assert _span_text(text, spans["note"]) == ',"note":"a \\"quoted\\" \\\\ é😀'.encode()
    assert _span_text(text, spans["count"]) == b',"count":12'
    assert _span_text(text, spans["flags"]) == b',"flags":[true,{"x":"}"}]'
    assert _span_text(text, spans["deep"]) == b',"deep":{"a":{"b":"c,d"}}'
    assert argument_spans(b'{"tool":"track_order","arguments":{}}') == {}
    assert argument_spans(b'{"tool":"no_tool","reason":"hello"}') == {}


def test_an_argument_scores_the_tokens_that_overlap_it():
    text = b'{"tool":"request_refund","arguments":{"order_id":"ORD-1","reason":"damaged"}}'
    comma = text.index(b',"reason"')
    value = text.index(b"damaged")
    quote = value + len("damaged")
    tokens = [
        # `","`: the order id's closing quote, and the choice to go on
        ScoredToken(comma - 1, comma + 2, math.log(0.5)),
        ScoredToken(comma + 2, comma + 8, math.log(0.9)),  # `reason`
        ScoredToken(value, value + 3, math.log(0.4)),  # `dam`
        ScoredToken(value + 3, quote, 0.0),
        ScoredToken(quote, quote + 3, math.log(0.1)),  # `"}}`: the next decision, not this argument's
    ]
    scores = argument_probabilities(text, tokens, {"reason"})
    assert scores == pytest.approx({"reason": 0.5 * 0.9 * 0.4})
    assert weakest_argument(text, tokens, {"reason"}, 0.2) == WeakArgument("reason", pytest.approx(0.18))
    assert weakest_argument(text, tokens, {"reason"}, 0.1) is None
    assert weakest_argument(text, tokens, {"reason"}, 0.0) is None  # off
    assert weakest_argument(text, tokens, {"order_id"}, 0.99) is None  # not written: nothing to score


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory):
    return runtime_support.tiny_router_file(tmp_path_factory, "tiny-key-rule.gguf")


REQUESTS = [f"escalate order ORD-{n}: it is urgent, legal trouble {n}" for n in range(10)]


def test_a_threshold_just_under_one_leaves_every_optional_argument_out(plain_file):
    with (
        Router.load(plain_file, n_threads=1, min_key_probability=0.0) as off,
        Router.load(plain_file, n_threads=1, min_key_probability=0.999999) as strict,
    ):
        written = 0
        for request in REQUESTS:
            plain = off.route(request, tools=["escalate"], no_tool=False)
            ruled = strict.route(request, tools=["escalate"], no_tool=False)
            assert plain.left_out == []
            assert ruled.kind == "call" and set(ruled.call.arguments) == {"topic"}
            optional = sorted(set(plain.call.arguments) - {"topic"})
            written += len(optional)
            # Each retry leaves out the weakest argument the output then had: every optional one
            # the plain decoding wrote is among those named (a retry may write others first).
            named = {entry.split(" ")[0] for entry in ruled.left_out}
            assert {f"escalate.{name}" for name in optional} <= named
            assert all(0.0 < float(entry.split("(")[1].rstrip(")")) < 0.999999 for entry in ruled.left_out)
        assert written > 0  # the rule had something to leave out
    with pytest.raises(ValueError, match="min_key_probability"):
        Router.load(plain_file, n_threads=1, min_key_probability=1.0)
