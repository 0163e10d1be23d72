"""What a training step costs on this host, measured before the run sizes its epochs to the budget.

The recipe's stored row cost (`recipe.ROW_COST`) is one host's: 4.37 s a step of 16 rows there, 2.1-3.0 s
on a 2-core AVX-512 Xeon, 7.8-8.8 s on a 2-core AVX2 EPYC (BENCHMARKS.md, "The step cost, measured on
the host"). Sized from it, `make demo`'s 15-minute budget became 26 minutes on the slowest. So a
budget-sized run first times a few steps of its own rows with its own trainer (model, collator,
fast step, quant-aware rounding) and sizes the epochs from that.

A timed step is the trainer's: `compute_loss` and the backward pass on `grad_accum` micro-batches,
then the trainer's own optimizer class at learning rate 0. The last moves no weight (AdamW at rate 0
adds exactly zero) but does the optimizer's memory traffic and bumps each weight's version, so a
quant-aware run pays its per-step rounding as the real steps do. Everything the run reads afterwards
is put back: the gradients, the random number generators, the trainer's logged metrics. The run
that follows is the run without the measurement (`tests/test_calibrate.py`).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from typing import Any

# Two timed optimizer steps after a warm-up one (the first pays for allocation and kernel choice):
# ~25 s of a 15-minute budget on the slowest host measured. There `make demo` timed 8.33 s a step and
# ran at 7.79 (7% over, the safe side: steps vary by 20% with their rows' lengths).
TIMED_STEPS = 2


@dataclass(frozen=True)
class MeasuredCost:
    seconds_per_step: float  # of rows_per_step rows of the sampled lengths
    seconds_per_token: float  # the same steps per (unpadded) token: scaled to the run's mean row
    rows: int  # rows timed
    tokens: int


def _rng_states() -> tuple[Any, ...]:
    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _restore_rng(states: tuple[Any, ...]) -> None:
    import numpy as np
    import torch

    python, numpy_state, torch_state, cuda = states
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _micro_batches(lengths: list[int], batch_size: int, count: int, seed: int) -> list[list[int]]:
    """`count` micro-batches of rows drawn at random (seeded), each of similar lengths, as the
    trainer's `group_by_length` sampler makes them: sorted, then cut."""
    needed, available = count * batch_size, len(lengths)
    draw = random.Random(seed)
    chosen = draw.sample(range(available), min(needed, available))
    if needed > available:  # fewer rows than the timed steps take: some rows twice
        chosen += draw.choices(range(available), k=needed - available)
    chosen.sort(key=lambda i: lengths[i])
    batches = [chosen[start : start + batch_size] for start in range(0, needed, batch_size)]
    # Shuffled so that the warm-up is not always the shortest batch.
    random.Random(seed + 1).shuffle(batches)
    return batches


def measure_step_cost(trainer: Any, seed: int) -> MeasuredCost:
    """Time `TIMED_STEPS` optimizer steps of the trainer's own rows, after one warm-up step."""
    import torch

    args = trainer.args
    model = trainer.model
    dataset = trainer.train_dataset
    lengths = [len(ids) for ids in dataset["input_ids"]]
    per_step = args.gradient_accumulation_steps
    batches = _micro_batches(lengths, args.per_device_train_batch_size, (1 + TIMED_STEPS) * per_step, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)
    # Rate 0: the update adds exactly zero to each weight, the traffic and the version bump are real.
    optimizer = optimizer_cls(trainable, **{**optimizer_kwargs, "lr": 0.0})
    states = _rng_states()
    metrics = copy.deepcopy(getattr(trainer, "_metrics", None))
    total_tokens = getattr(trainer, "_total_train_tokens", None)
    was_training = model.training
    model.train()
    cuda = next(model.parameters()).is_cuda
    seconds = 0.0
    timed_rows = timed_tokens = 0
    try:
        for step in range(1 + TIMED_STEPS):
            step_batches = batches[step * per_step : (step + 1) * per_step]
            started = time.perf_counter()
            for rows in step_batches:
                inputs = trainer._prepare_inputs(trainer.data_collator([dataset[i] for i in rows]))
                loss = trainer.compute_loss(model, inputs)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if step:  # the warm-up step is not counted
                seconds += time.perf_counter() - started
                timed_rows += sum(len(rows) for rows in step_batches)
                timed_tokens += sum(lengths[i] for rows in step_batches for i in rows)
    finally:
        del optimizer  # its moment buffers: as large as the trained weights twice
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        _restore_rng(states)
        if metrics is not None:
            trainer._metrics = metrics
        if total_tokens is not None:
            trainer._total_train_tokens = total_tokens
    return MeasuredCost(
        seconds_per_step=seconds / TIMED_STEPS,
        seconds_per_token=seconds / max(timed_tokens, 1),
        rows=timed_rows,
        tokens=timed_tokens,
    )
