"""Picking the call score, its threshold and the abstention rule on validation rows, by hand."""

from __future__ import annotations

import pytest

from support import CUSTOMER_SUPPORT_TOOLS
from toolroute.bench.metrics import Gold, Prediction
from toolroute.bench.thresholds import apply_rules, pick_call_threshold, pick_no_tool_threshold, summarize
from toolroute.grammars import load_catalogue
from toolroute.runtime.thresholds import CallThreshold, NoToolThreshold

CAT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)


def call(order_id: str, name: float, least: float, whole: float = -0.5, no_tool: float = 0.01) -> Prediction:
    return Prediction(
        kind="call", tool="track_order", arguments={"order_id": order_id}, confidence=name,
        call_logprob=whole, min_token_logprob=least, no_tool_probability=no_tool,
    )  # fmt: skip


def gold(order_id: str | None) -> Gold:
    if order_id is None:
        return Gold(request="x", tool="no_tool")
    return Gold(request="x", tool="track_order", arguments={"order_id": order_id})


# Right tool every time, so the name's probability is high whether or not the arguments are right;
# the least token log-probability is what tells the invented order ids apart.
GOLDS = [gold("A1"), gold("B2"), gold("C3"), gold("D4"), gold("E5"), gold("F6")]
PREDICTIONS = [
    call("A1", 0.99, -0.01, -0.1),
    call("B2", 0.97, -0.05, -0.4),
    call("C3", 0.98, -0.02, -0.2),
    call("XX", 0.99, -3.0, -0.3),  # invented: silent error
    call("E5", 0.96, -0.03, -0.25),
    call("YY", 0.995, -2.5, -0.15),  # invented, the most confident name, a likely call: silent error
]


def test_the_call_score_that_dispatches_most_at_the_allowed_risk_wins():
    choice = pick_call_threshold(GOLDS, PREDICTIONS, CAT, max_risk=0.0)
    assert choice.rule == CallThreshold(score="min_token_logprob", value=-0.05)
    assert choice.coverage == pytest.approx(4 / 6) and choice.silent_error_rate == 0.0
    assert choice.by_score["name_probability"] is None  # no threshold on it keeps the risk at 0
    assert choice.by_score["call_logprob"].coverage == pytest.approx(1 / 6)
    held = apply_rules(PREDICTIONS, call_rule=choice.rule)
    assert [p.held_back for p in held] == [False, False, False, True, False, True]
    assert summarize(GOLDS, held, CAT).silent_error_rate == 0.0


def test_scores_a_backend_does_not_report_are_left_out():
    bare = [p.model_copy(update={"call_logprob": None, "min_token_logprob": None}) for p in PREDICTIONS]
    choice = pick_call_threshold(GOLDS, bare, CAT, max_risk=1.0)
    assert choice.rule is not None and choice.rule.score == "name_probability"
    assert choice.by_score["call_logprob"] is None and choice.coverage == 1.0


def test_abstention_is_picked_only_when_it_makes_fewer_wrong_decisions():
    golds = [gold("A1"), gold("B2"), gold(None), gold(None), gold("E5")]
    predictions = [
        call("A1", 0.9, -0.1, no_tool=0.05),
        call("B2", 0.8, -0.1, no_tool=0.15),
        call("ZZ", 0.5, -0.1, no_tool=0.45),  # out of scope, called anyway
        call("QQ", 0.6, -0.1, no_tool=0.35),  # likewise
        Prediction(kind="no_tool", confidence=0.9, no_tool_probability=0.9),
    ]
    choice = pick_no_tool_threshold(golds, predictions, CAT)
    assert choice.errors_without == 2 and choice.errors == 0
    assert choice.rule is not None
    held = apply_rules(predictions, no_tool_rule=choice.rule)
    assert summarize(golds, held, CAT).false_tool_call_rate == 0.0
    assert summarize(golds, predictions, CAT).false_tool_call_rate == 1.0
    assert [p.kind for p in held[:2]] == ["call", "call"]  # the right calls go through
    nothing_to_gain = pick_no_tool_threshold(golds[:2], predictions[:2], CAT)
    assert nothing_to_gain.rule is None and nothing_to_gain.errors == nothing_to_gain.errors_without == 0


def test_the_rules_hold_back_exactly_what_the_router_holds_back():
    rule = NoToolThreshold(score="margin", value=0.5)
    assert rule.holds_back(0.6, 0.2) and not rule.holds_back(0.8, 0.2)
    share = NoToolThreshold(score="no_tool_probability", value=0.3)
    assert share.holds_back(0.5, 0.3) and not share.holds_back(0.5, 0.29)
    threshold = CallThreshold(score="call_logprob", value=-1.0)
    assert threshold.holds_back({"call_logprob": -1.5}) and not threshold.holds_back({"call_logprob": None})
    with pytest.raises(ValueError):
        NoToolThreshold(score="margin", value=2.0)
