"""`make demo`: route a handful of customer messages with the exported router, and dispatch them.

    python examples/customer_support/demo.py dist/customer-support.q4_k_m.gguf

The tools' functions below are stand-ins for a shop's real back end; the router decides which one
runs, with which arguments, or that none should.
"""

from __future__ import annotations

import sys
from pathlib import Path

from toolroute.runtime.router import Router

sys.path.insert(0, str(Path(__file__).parent))
from tools import Escalate, RequestRefund, TrackOrder

REQUESTS = [
    "Hi, where is my order ORD-48213? It was supposed to arrive yesterday.",
    "the blender i got (order #77120) arrived cracked, i want my money back",
    "I want a refund.",
    "This is the third time I'm writing. I want to talk to a manager, NOW.",
    "someone changed the password on my account and placed orders, urgent!!",
    "what's your refund policy?",
    "hello!",
    "can you tell me tomorrow's weather in Paris?",
]


def main(path: str) -> int:
    router = Router.load(path, tools=[TrackOrder, RequestRefund, Escalate])

    @router.tool
    def track_order(args: TrackOrder) -> str:
        return f"order {args.order_id}: in transit, arriving Thursday"

    @router.tool
    def request_refund(args: RequestRefund) -> str:
        return f"refund opened for {args.order_id} ({args.reason or 'no reason given'})"

    @router.tool
    def escalate(args: Escalate) -> str:
        return f"ticket for a human: {args.topic}, urgency {args.urgency}"

    print(f"router: {path} ({', '.join(router.catalogue.names)} + no_tool)\n")
    for request in REQUESTS:
        result = router.route(request)
        outcome = router.dispatch(result)
        confidence = f"{result.confidence:.2f}" if result.confidence is not None else "-"
        print(f"> {request}")
        print(f"  {result.raw}")
        detail = outcome.value or outcome.reason
        print(f"  {outcome.status}: {detail}  [p={confidence}, {result.latency_ms:.0f} ms]\n")
    router.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "dist/customer-support.q4_k_m.gguf"))
