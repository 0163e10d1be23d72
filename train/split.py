"""`toolroute data split` and `data sample`: reproducible subsets of a data file.

`stratified_split`: a train/eval split, stratified by tool. Requests that are the same up to
case and whitespace always land on the same side, so the split never leaks an eval request into
training.

`per_label`: small-data training sets, k rows per label. A label is the gold tool; no_tool rows
are labelled by their reason, so that a dataset whose no_tool rows come from several out-of-scope
intents (HWU64: one reason per `general_*` intent) gets k rows of each. A label with fewer than k
rows keeps them all. The router's small-data curves and the classical reference's draw the same
rows with the same seed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel

from toolroute.grammars import NO_TOOL

from .examples import Example, normalize_request


class Split(BaseModel):
    train: list[str]  # example sources, in file order
    eval: list[str]


def stratified_split(examples: list[Example], eval_fraction: float, seed: int) -> Split:
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval fraction must be between 0 and 1, got {eval_fraction}")
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[normalize_request(example.request)].append(example)
    by_tool: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        by_tool[members[0].target.tool].append(key)
    rng = random.Random(seed)
    eval_keys: set[str] = set()
    for tool in sorted(by_tool):
        keys = sorted(by_tool[tool])
        rng.shuffle(keys)
        take = round(len(keys) * eval_fraction)
        if len(keys) >= 2:
            take = min(max(take, 1), len(keys) - 1)  # every tool on both sides when it can be
        eval_keys.update(keys[:take])
    train = [e.source for e in examples if normalize_request(e.request) not in eval_keys]
    evaluation = [e.source for e in examples if normalize_request(e.request) in eval_keys]
    return Split(train=train, eval=evaluation)


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
