"""The customer-support router from the lesson: three tools, declared as Pydantic models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrackOrder(BaseModel):
    """Look up where an order is and when it will arrive."""

    order_id: str = Field(description="The order number as the customer wrote it, e.g. ORD-1234.")


class RequestRefund(BaseModel):
    """Start a refund for an order the customer wants their money back for."""

    order_id: str = Field(description="The order number to refund, e.g. ORD-1234.")
    reason: Literal["damaged", "wrong_item", "not_delivered", "changed_mind", "other"] | None = Field(
        None, description="Why the customer wants a refund, if they said."
    )


class Escalate(BaseModel):
    """Hand the conversation to a human agent: complaints, urgent problems, or explicit requests."""

    summary: str = Field(description="One sentence on what the customer needs.")
    urgency: Literal["low", "normal", "high"] = Field("normal", description="How urgent it is.")


TOOLS = [TrackOrder, RequestRefund, Escalate]
