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
    """Hand the conversation to a human agent: complaints, legal or account-security issues, or a
    customer who asks for a person."""

    topic: Literal["complaint", "human_requested", "legal", "account_security", "other"] = Field(
        description="What the human agent needs to handle."
    )
    urgency: Literal["low", "normal", "high"] = Field("normal", description="How urgent it is.")
    order_id: str | None = Field(None, description="The order concerned, if the customer gave one.")


TOOLS = [TrackOrder, RequestRefund, Escalate]
