"""The rules that hold a call back: a call score below a threshold, or too much weight on no_tool.

A routed call carries three scores (see `RouteResult`): the tool name's probability among the
names at the decision point (`name_probability`, the result's `confidence`), and two from the
model's own log-probabilities of the tokens it chose under the constrained distribution: their sum
over the call (`call_logprob`) and their minimum (`min_token_logprob`). `toolroute eval
--pick-threshold` picks one of them and a threshold on validation rows (`CallThreshold`), and an
abstention rule for out-of-scope requests on no_tool's probability at the decision point or on
the margin between the chosen tool and no_tool (`NoToolThreshold`); both go into the router file.

A held-back call comes back as `kind: "low_confidence"`, with the would-be call kept for
inspection, `held_back_by` naming the rule and `error` the numbers; it is never dispatched.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

CallScore = Literal["name_probability", "call_logprob", "min_token_logprob"]
NoToolScore = Literal["no_tool_probability", "margin"]
CALL_SCORES: tuple[CallScore, ...] = ("name_probability", "call_logprob", "min_token_logprob")
NO_TOOL_SCORES: tuple[NoToolScore, ...] = ("no_tool_probability", "margin")


class CallThreshold(BaseModel):
    """Hold a call back when its `score` is below `value`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: CallScore
    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("a threshold is a finite number")
        return value

    def holds_back(self, scores: dict[str, float | None]) -> bool:
        score = scores.get(self.score)
        return score is not None and score < self.value

    def describe(self, scores: dict[str, float | None]) -> str:
        return f"{self.score} {scores.get(self.score):.4f} is below the threshold {self.value:.4f}"


class NoToolThreshold(BaseModel):
    """Abstain (hold a call back) when no_tool's probability at the decision point is at least
    `value` (`no_tool_probability`), or when the chosen tool's probability exceeds no_tool's by
    less than `value` (`margin`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: NoToolScore
    value: float

    @field_validator("value")
    @classmethod
    def _in_range(cls, value: float) -> float:
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise ValueError("a no_tool threshold is a probability or a margin, within [-1, 1]")
        return value

    def holds_back(self, tool_probability: float | None, no_tool_probability: float | None) -> bool:
        if tool_probability is None or no_tool_probability is None:
            return False
        if self.score == "no_tool_probability":
            return no_tool_probability >= self.value
        return tool_probability - no_tool_probability < self.value

    def describe(self, tool_probability: float, no_tool_probability: float) -> str:
        if self.score == "no_tool_probability":
            return (
                f"no_tool's probability {no_tool_probability:.4f} is at least the threshold {self.value:.4f}"
            )
        margin = tool_probability - no_tool_probability
        return f"the margin over no_tool {margin:.4f} is below the threshold {self.value:.4f}"
