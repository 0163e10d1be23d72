"""`make demo`: route a handful of customer messages with the exported router, and dispatch them.

    python examples/customer_support/demo.py dist/customer-support.q4_k_m.gguf

The tools' functions below are stand-ins for a shop's real back end (`followups.py`, which also
wrote the training follow-ups); the router decides which one runs, with which arguments, or that
none should. A router trained with answers (`toolroute inspect`: answers) then tells the customer
what the tool returned: request -> call -> stand-in tool -> answer.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from toolroute.runtime.router import Router

sys.path.insert(0, str(Path(__file__).parent))
from followups import result_for
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

    backend = random.Random(7)  # the stand-in back end's order states, refund ids and tickets

    def stand_in(tool: str, args: Any) -> dict[str, Any]:
        return result_for(backend, {"tool": tool, "arguments": args.model_dump(exclude_none=True)})

    @router.tool
    def track_order(args: TrackOrder) -> dict[str, Any]:
        return stand_in("track_order", args)

    @router.tool
    def request_refund(args: RequestRefund) -> dict[str, Any]:
        return stand_in("request_refund", args)

    @router.tool
    def escalate(args: Escalate) -> dict[str, Any]:
        return stand_in("escalate", args)

    answers = router.answers_trained
    print(f"router: {path} ({', '.join(router.catalogue.names)} + no_tool)")
    print("answers: " + ("trained" if answers else "not trained (the tool's output is shown as is)") + "\n")
    for request in REQUESTS:
        result = router.route(request)
        outcome = router.dispatch(result)
        confidence = f"{result.confidence:.2f}" if result.confidence is not None else "-"
        print(f"> {request}")
        print(f"  {result.raw}")
        detail = outcome.value or outcome.reason
        print(f"  {outcome.status}: {detail}  [p={confidence}, {result.latency_ms:.0f} ms]")
        if answers and outcome.status == "called":
            answer = router.answer(request, result, outcome.value)
            print(f"  answer: {answer.text}  [{answer.latency_ms:.0f} ms]")
        print()
    router.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "dist/customer-support.q4_k_m.gguf"))
