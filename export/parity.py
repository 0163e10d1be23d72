"""Does the GGUF say what the merged model says? Greedy outputs compared prompt by prompt.

Unconstrained greedy decoding on both sides (no grammar), so that any difference in weights,
tokenizer or template shows; tokenizer and template mismatches are the usual reason a fine-tune
breaks after export.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

# Unicode, digits, quotes and backslashes: what tokenizers disagree on first.
TOKENIZER_PROBE_REQUEST = 'Where is "ORD-1234"? Ünïcödé 中文 😀 digits 0123456789, quotes \' " \\ done'


def _cut(text: str, stop: str) -> str:
    return text.split(stop, 1)[0] if stop else text


def hf_greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], stop: str, max_new_tokens: int
) -> list[str]:
    import torch

    stop_ids = tokenizer(stop, add_special_tokens=False)["input_ids"] if stop else []
    eos = [tokenizer.eos_token_id, *stop_ids[:1]]
    outputs = []
    model.eval()
    with torch.no_grad():
        for prompt in tqdm(prompts, desc="parity: merged HF model", leave=False):
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            generated = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=False)
            outputs.append(_cut(text, stop))
    return outputs


def gguf_greedy(path: Path, prompts: Sequence[str], stop: str, max_new_tokens: int) -> list[str]:
    import llama_cpp
    from llama_cpp import Llama

    llama = Llama(str(path), n_ctx=2048, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    outputs = []
    try:
        for prompt in tqdm(prompts, desc=f"parity: {path.name}", leave=False):
            tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            out = b""
            for count, token in enumerate(
                llama.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0)
            ):
                if llama_cpp.llama_vocab_is_eog(vocab, token) or count >= max_new_tokens:
                    break
                out += llama.detokenize([token], special=True)
                if stop and stop.encode() in out:
                    break
            llama.reset()
            outputs.append(_cut(out.decode("utf-8", errors="replace"), stop))
    finally:
        llama.close()
    return outputs


def agreement(first: Sequence[str], second: Sequence[str]) -> float:
    return sum(a == b for a, b in zip(first, second, strict=True)) / len(first) if first else 1.0


def token_ids(path: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llama = Llama(str(path), vocab_only=True, verbose=False)
    try:
        return llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    finally:
        llama.close()
