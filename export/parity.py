"""Does the GGUF say what the merged model says? Greedy outputs compared prompt by prompt.

Unconstrained greedy decoding (no grammar), so that any difference in weights, tokenizer or template
shows; tokenizer and template mismatches are the usual reason a fine-tune breaks after export.

llama.cpp decodes each prompt greedily; the merged HF model then reads prompt + that output in one
teacher-forced forward pass. Its greedy decoding would have produced the same output exactly when
its argmax equals llama.cpp's token at every generated position, end token included, so one
forward pass per prompt replaces a slow token-by-token generation in fp32 on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from toolroute.runtime.llama_build import check_llama_build

# Unicode, digits, quotes and backslashes: what tokenizers disagree on first.
TOKENIZER_PROBE_REQUEST = 'Where is "ORD-1234"? Ünïcödé 中文 😀 digits 0123456789, quotes \' " \\ done'


class Greedy(BaseModel):
    prompt_ids: list[int]
    output_ids: list[int]  # generated tokens, the end-of-generation token included when reached
    text: str


def gguf_greedy(path: Path, prompts: Sequence[str], max_new_tokens: int) -> list[Greedy]:
    import llama_cpp
    from llama_cpp import Llama

    check_llama_build()  # a crashing build is refused, not run
    llama = Llama(str(path), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    results = []
    try:
        for prompt in tqdm(prompts, desc=f"parity: {path.name}", leave=False):
            prompt_ids = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            output: list[int] = []
            for token in llama.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
                output.append(token)
                if llama_cpp.llama_vocab_is_eog(vocab, token) or len(output) >= max_new_tokens:
                    break
            llama.reset()
            text = llama.detokenize(output, special=True).decode("utf-8", errors="replace")
            results.append(Greedy(prompt_ids=prompt_ids, output_ids=output, text=text))
    finally:
        llama.close()
    return results


def hf_agrees(model: Any, references: Sequence[Greedy], batch_size: int = 8) -> list[bool]:
    """Whether the HF model's greedy choice equals each reference token, prompt by prompt."""
    import torch

    model.eval()
    verdicts: list[bool] = []
    for start in tqdm(range(0, len(references), batch_size), desc="parity: merged HF model", leave=False):
        batch = references[start : start + batch_size]
        sequences = [r.prompt_ids + r.output_ids for r in batch]
        width = max(len(s) for s in sequences)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):  # right padding: causal positions stay exact
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        with torch.no_grad():
            choices = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        for row, reference in enumerate(batch):
            first = len(reference.prompt_ids) - 1  # the logits at position i predict token i + 1
            predicted = choices[row, first : first + len(reference.output_ids)].tolist()
            verdicts.append(predicted == reference.output_ids)
    return verdicts


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, computed stably."""
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def teacher_forced_logits(llama: Any, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> np.ndarray:
    """The logits at each output position (float64, one row per output token), prompt and outputs
    evaluated in one batch by `llama`, a `Llama` made with `logits_all=True`."""
    llama.reset()
    llama.eval([*prompt_ids, *output_ids])
    first = len(prompt_ids) - 1  # the logits at position i predict token i + 1
    return np.array(llama.scores[first : first + len(output_ids)], dtype=np.float64)


def gguf_reference_nll(path: Path, references: Sequence[Greedy]) -> float:
    """Mean negative log-likelihood per token of the reference outputs under the file at `path`,
    teacher-forced (one batch per prompt): how far a quantized file strays from F16's own choices.
    Continuous, so a handful of prompts still rank two files that agree on every greedy output."""
    from llama_cpp import Llama

    scored = [r for r in references if r.output_ids]
    if not scored:
        return 0.0
    # Logits for every position: llama-cpp-python holds n_ctx x vocabulary floats, so no more context
    # than the longest sequence needs.
    n_ctx = max(len(r.prompt_ids) + len(r.output_ids) for r in scored) + 8
    check_llama_build()
    llama = Llama(str(path), n_ctx=n_ctx, n_threads=os.cpu_count(), logits_all=True, verbose=False)
    total, count = 0.0, 0
    try:
        for reference in tqdm(scored, desc=f"closeness to F16: {path.name}", leave=False):
            log_probs = log_softmax(teacher_forced_logits(llama, reference.prompt_ids, reference.output_ids))
            total -= float(log_probs[np.arange(len(reference.output_ids)), reference.output_ids].sum())
            count += len(reference.output_ids)
    finally:
        llama.close()
    return total / count


def agreement(first: Sequence[str], second: Sequence[str]) -> float:
    return sum(a == b for a, b in zip(first, second, strict=True)) / len(first) if first else 1.0


def token_ids(path: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llama = Llama(str(path), vocab_only=True, verbose=False)
    try:
        return llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    finally:
        llama.close()
