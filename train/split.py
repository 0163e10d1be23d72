"""`toolroute data split`: a reproducible train/eval split, stratified by tool.

Requests that are the same up to case and whitespace always land on the same side, so the
split never leaks an eval request into training.
"""

from __future__ import annotations

import random
from collections import defaultdict

from pydantic import BaseModel

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
