"""The evaluation numbers against hand-computed cases."""

from __future__ import annotations

import pytest

from support import CUSTOMER_SUPPORT_TOOLS
from toolroute.bench.metrics import Gold, Prediction, evaluate_predictions, percentile, risk_coverage
from toolroute.grammars import load_catalogue

CAT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)


def call(tool, confidence=0.9, **arguments):
    return Prediction(kind="call", tool=tool, arguments=arguments, confidence=confidence)


NO = Prediction(kind="no_tool", confidence=0.8)
BAD = Prediction(kind="invalid", raw="{oops")

GOLDS = [
    Gold(request="a", tool="track_order", arguments={"order_id": "A1"}),
    Gold(request="b", tool="track_order", arguments={"order_id": "B2"}),
    Gold(request="c", tool="request_refund", arguments={"order_id": "C3", "reason": "damaged"}),
    Gold(request="d", tool="escalate", arguments={"topic": "legal"}),
    Gold(request="e", tool="no_tool"),
    Gold(request="f", tool="no_tool"),
]
PREDICTIONS = [
    call("track_order", 0.95, order_id="A1"),  # exact
    call("track_order", 0.60, order_id="B9"),  # right tool, wrong argument: silent error
    call("request_refund", 0.90, order_id="C3"),  # missing reason: silent error
    call("escalate", 0.70, topic="legal", urgency="normal"),  # explicit default == absent: exact
    call("track_order", 0.40, order_id="E5"),  # false tool call: silent error
    BAD,  # invalid on a gold no_tool
]


def test_the_four_numbers_and_the_rest_by_hand():
    report = evaluate_predictions(GOLDS, PREDICTIONS, CAT)
    assert report.examples == 6
    assert report.valid_tool_call_rate == pytest.approx(5 / 6)
    assert report.tool_name_accuracy == pytest.approx(4 / 6)  # a, b, c, d
    assert report.argument_match_accuracy == pytest.approx(2 / 4)  # a, d of the 4 calls to the gold tool
    assert report.false_tool_call_rate == pytest.approx(1 / 2)  # e of e, f
    assert report.missed_call_rate == pytest.approx(0 / 4)
    assert report.silent_error_rate == pytest.approx(3 / 6)  # b, c, e
    assert report.exact_call_accuracy == pytest.approx(2 / 6)
    # gold triples A1, B2, C3, damaged, legal; predicted A1, B9, C3, legal, E5; shared A1, C3, legal
    assert report.slot_precision == pytest.approx(3 / 5)
    assert report.slot_recall == pytest.approx(3 / 5)
    assert report.slot_f1 == pytest.approx(3 / 5)
    assert report.confusion["no_tool"] == {"track_order": 1, "(invalid)": 1}
    assert report.per_argument_accuracy == {
        "escalate.topic": 1.0, "request_refund.order_id": 1.0, "request_refund.reason": 0.0,
        "track_order.order_id": 0.5,
    }  # fmt: skip


def test_risk_coverage_picks_the_threshold_with_most_coverage_under_one_percent():
    points, threshold = risk_coverage(GOLDS, PREDICTIONS, CAT)
    by_threshold = {p.threshold: p for p in points}
    assert by_threshold[0.0].coverage == pytest.approx(5 / 6)
    assert by_threshold[0.0].silent_error_rate == pytest.approx(3 / 6)
    # Above 0.9 only the exact call with 0.95 is left: no silent error, coverage 1/6.
    assert threshold == 0.95
    assert by_threshold[0.95].silent_error_rate == 0 and by_threshold[0.95].coverage == pytest.approx(1 / 6)


def test_empty_sets_and_all_invalid_outputs():
    empty = evaluate_predictions([], [], CAT)
    assert empty.examples == 0 and empty.slot_f1 is None and empty.argument_match_accuracy is None
    assert empty.latency_ms_p50 is None
    invalid = evaluate_predictions(GOLDS, [BAD] * len(GOLDS), CAT)
    assert invalid.valid_tool_call_rate == 0 and invalid.tool_name_accuracy == 0
    assert invalid.silent_error_rate == 0  # nothing dispatched: detectable, not silent
    assert invalid.false_tool_call_rate == 0 and invalid.argument_match_accuracy is None
    assert invalid.slot_precision is None and invalid.slot_recall == 0
    assert invalid.threshold_for_1pct == 0.0
    with pytest.raises(ValueError, match="6 gold examples but 1 predictions"):
        evaluate_predictions(GOLDS, [BAD], CAT)


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile(list(range(1, 101)), 50) == 50
    assert percentile(list(range(1, 101)), 95) == 95
