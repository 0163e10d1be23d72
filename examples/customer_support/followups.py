"""Follow-ups for the customer-support data: what a stand-in back end returns for each call, and
the reply that tells the customer, for training and measuring the router's answer step.

Each call row gets a tool result (JSON, as `json.dumps` writes a dict: the text `Router.answer`
shows for a tool that returns one) and an answer that states its facts (order state and date,
refund id and amount, ticket number and wait) and nothing the result or the request lacks: every
number and id in an answer is copied from them, so a faithful router can reach 100%
(bench/answer_metrics.py). no_tool rows get no follow-up. Drawn from their own random stream, so
the routing rows (train.jsonl, eval.jsonl) are unchanged byte for byte.
"""

from __future__ import annotations

import datetime
import json
import random
from typing import Any

CARRIERS = ("UPS", "DHL", "FedEx", "USPS", "La Poste", "Royal Mail")
WEEK_START = datetime.date(2026, 11, 30)  # a Monday: dates are drawn from the two weeks after it

TRACK_ANSWERS = {
    "in transit": (
        "Order {order_id} is in transit with {carrier} and should arrive on {eta}.",
        "Good news: {order_id} is on its way with {carrier}. Expected delivery: {eta}.",
        "Your order {order_id} has shipped ({carrier}) and is due on {eta}.",
    ),
    "out for delivery": (
        "Order {order_id} is out for delivery with {carrier} today, {eta}.",
        "{order_id} is out for delivery ({carrier}); it should reach you today, {eta}.",
    ),
    "delivered": (
        "Order {order_id} was delivered on {delivered} by {carrier}.",
        "According to {carrier}, {order_id} was delivered on {delivered}.",
    ),
    "processing": (
        "Order {order_id} is still being prepared; it should ship with {carrier} by {eta}.",
        "{order_id} has not shipped yet. We expect to hand it to {carrier} by {eta}.",
    ),
    "delayed": (
        "Order {order_id} is delayed with {carrier}; the new delivery date is {eta}. Sorry about that.",
        "I'm sorry, {order_id} is running late. {carrier} now expects to deliver it on {eta}.",
    ),
}
REFUND_ANSWERS = {
    "approved": (
        "I've started refund {refund_id} for order {order_id}: ${amount} will be back on your card "
        "within {days} days.",
        "Refund {refund_id} is approved. You'll get ${amount} back for {order_id} within {days} days.",
    ),
    "pending review": (
        "Refund {refund_id} for order {order_id} (${amount}) is waiting for review; we'll reply "
        "within {days} days.",
        "I've opened refund request {refund_id} for {order_id}. A colleague reviews it within {days} days.",
    ),
}
ESCALATE_ANSWERS = (
    "I've passed this to a human agent: ticket {ticket}. The expected wait is about {wait} minutes.",
    "A member of our {team} team will take over. Your ticket number is {ticket} (about {wait} minutes).",
    "Ticket {ticket} is open with our {team} team; someone will be with you in about {wait} minutes.",
)
TEAMS = {
    "complaint": "customer care",
    "human_requested": "support",
    "legal": "legal",
    "account_security": "security",
    "other": "support",
}


def _date(rng: random.Random) -> str:
    day = WEEK_START + datetime.timedelta(days=rng.randrange(14))
    return f"{day:%A} {day:%Y-%m-%d}"


def result_for(rng: random.Random, call: dict[str, Any]) -> dict[str, Any]:
    """What the stand-in back end returns for one call `{"tool": ..., "arguments": {...}}`."""
    tool, arguments = call["tool"], call["arguments"]
    if tool == "track_order":
        status = rng.choice(sorted(TRACK_ANSWERS))
        result = {"order_id": arguments["order_id"], "status": status, "carrier": rng.choice(CARRIERS)}
        result["delivered" if status == "delivered" else "eta"] = _date(rng)
        return result
    if tool == "request_refund":
        return {
            "refund_id": f"RF-{rng.randrange(10000, 99999)}",
            "order_id": arguments["order_id"],
            "status": rng.choice(sorted(REFUND_ANSWERS)),
            "amount": f"{rng.randrange(500, 40000) / 100:.2f}",
            "currency": "USD",
            "days": rng.choice((3, 5, 7, 10)),
        }
    if tool == "escalate":
        high = arguments.get("urgency") == "high"
        result = {
            "ticket": f"T-{rng.randrange(10000, 99999)}",
            "team": TEAMS[arguments["topic"]],
            "urgency": arguments.get("urgency", "normal"),
            "wait": 2 if high else rng.choice((5, 10, 15, 30, 45)),
        }
        if "order_id" in arguments:
            result["order_id"] = arguments["order_id"]
        return result
    raise ValueError(f"no stand-in back end for {tool!r}")


def answer_for(rng: random.Random, tool: str, result: dict[str, Any]) -> str:
    """A reply stating the result's facts (only those: see the module docstring)."""
    if tool == "track_order":
        return rng.choice(TRACK_ANSWERS[result["status"]]).format(**result)
    if tool == "request_refund":
        return rng.choice(REFUND_ANSWERS[result["status"]]).format(**result)
    return rng.choice(ESCALATE_ANSWERS).format(**result)


def followup(rng: random.Random, call: dict[str, Any]) -> tuple[str, str]:
    """(tool output, answer) for one call; the output as `json.dumps` writes the result, which is
    the text `Router.answer` shows for a tool returning that dict."""
    result = result_for(rng, call)
    return json.dumps(result, ensure_ascii=False), answer_for(rng, call["tool"], result)
