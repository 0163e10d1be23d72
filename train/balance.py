"""Out-of-scope rows repeated until they are a set share of the training rows (`no_tool_share`).

A router's data is mostly calls: customer support has 72 no_tool rows in 480 (15%), and a new
user's catalogue often fewer. A model trained on it learns that a call is the likely answer, and
the false calls it then makes (a call for an out-of-scope request) are the errors a user notices
first. Repeating the no_tool rows gives the call/no-call decision more of the gradient without new
data and without touching the call rows. The repeats go in whole cycles over the no_tool rows in
file order (the trainer shuffles), so the result is the same for the same input; the share is
reached or passed by less than one row. The repeated rows are rows to train: the plan counts them.

Off by default: measured on customer support (BENCHMARKS.md, "No_tool rows repeated") it cuts
false calls, but its 64 extra rows (13% more steps) would take `make demo` past 15 minutes on the
2-core CPU. Drawing the no_tool rows more often within the same steps instead (a weighted sampler
with replacement) was measured too and lost to the rows as given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .examples import Example


def repeats_needed(rows: int, no_tool_rows: int, share: float) -> int:
    """How many no_tool rows to add so that they are at least `share` of all rows."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"no_tool_share must be within [0, 1), not {share}")
    if no_tool_rows == 0 or no_tool_rows >= share * rows:
        return 0
    return math.ceil((share * rows - no_tool_rows) / (1.0 - share))


def balance_no_tool(examples: Sequence[Example], share: float) -> tuple[list[Example], int]:
    """`examples` with no_tool rows repeated up to `share` of them, and how many were added."""
    no_tool = [example for example in examples if example.target.is_no_tool]
    added = repeats_needed(len(examples), len(no_tool), share)
    repeated = [no_tool[index % len(no_tool)] for index in range(added)]
    return [*examples, *repeated], added
