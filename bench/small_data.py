"""Small-data training sets: k rows per label, drawn reproducibly from a larger training split.

A label is the gold tool; no_tool rows are labelled by their reason, so that a dataset whose
no_tool rows come from several out-of-scope intents (HWU64: one reason per `general_*` intent)
gets k rows of each. A label with fewer than k rows keeps them all.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from toolroute.grammars import NO_TOOL
from toolroute.train.examples import Example


def label_of(example: Example) -> str:
    target = example.target
    return f"{NO_TOOL}: {target.reason or ''}" if target.tool == NO_TOOL else target.tool


def per_label(examples: Sequence[Example], k: int, seed: int) -> list[Example]:
    """min(k, available) examples of each label, in file order; the same seed draws the same rows."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    by_label: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(label_of(example), []).append(index)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for label in sorted(by_label):  # sorted: the draw does not depend on which label comes first
        indices = by_label[label]
        chosen.update(rng.sample(indices, min(k, len(indices))))
    return [examples[index] for index in sorted(chosen)]
