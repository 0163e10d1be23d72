"""llama.cpp's own grammar engine, token by token: which tokens a GBNF grammar allows next.

A thin wrapper over `llama_sampler_init_grammar` / `llama_sampler_apply` / `llama_sampler_accept`
from llama-cpp-python's low-level bindings. It is how toolroute checks that a grammar loads and
what it accepts, with the real vocabulary of a real model (loaded `vocab_only=True`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp
import numpy as np

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class GrammarLoadError(ValueError):
    """llama.cpp refused to parse the grammar (it logs the reason to stderr)."""


class GrammarMatcher:
    """The state of one grammar-constrained generation over a model's vocabulary."""

    def __init__(self, llama: llama_cpp.Llama, gbnf: str, root: str = "root") -> None:
        self._llama = llama  # keeps the vocabulary alive as long as the sampler
        self.vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self._sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), root.encode())
        if not self._sampler:
            raise GrammarLoadError("llama.cpp could not parse the grammar (see its log above)")

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __enter__(self) -> GrammarMatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def mask(self, tokens: Sequence[int] | np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
        """Apply the grammar to candidate tokens; returns their logits, -inf where forbidden."""
        data = np.zeros(len(tokens), dtype=_TOKEN_DATA)
        data["id"] = np.asarray(tokens, dtype=np.int32)
        data["logit"] = 0.0 if logits is None else logits
        ids = data["id"].copy()
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(data),
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        result = data[: array.size]
        if array.size == len(tokens) and np.array_equal(result["id"], ids):
            return result["logit"].copy()
        # A sampler may drop or reorder candidates; map what it kept back to the caller's order.
        out = np.full(len(tokens), -np.inf, dtype=np.float32)
        position = {int(t): i for i, t in enumerate(np.asarray(tokens))}
        for record in result:
            out[position[int(record["id"])]] = record["logit"]
        return out

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as nothing)."""
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    def is_end(self, token: int) -> bool:
        """End-of-generation tokens: the grammar allows them only once the output is complete."""
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def allows(self, token: int) -> bool:
        return bool(np.isfinite(self.mask([token])[0]))

    def accept(self, token: int) -> None:
        """Advance past `token`. Check `allows` first: llama.cpp aborts on a forbidden token."""
        if not self.allows(token):
            raise ValueError(f"token {token} is not allowed by the grammar here")
        llama_cpp.llama_sampler_accept(self._sampler, token)


def _utf8_second_byte_range(lead: int) -> tuple[int, int, int] | None:
    """(low, high, continuation bytes needed) for a lead byte, per RFC 3629; None if invalid."""
    if lead < 0x80:
        return (0, 0, 0)
    if 0xC2 <= lead <= 0xDF:
        return (0x80, 0xBF, 1)
    if lead == 0xE0:
        return (0xA0, 0xBF, 2)
    if lead == 0xED:
        return (0x80, 0x9F, 2)  # no surrogates
    if 0xE1 <= lead <= 0xEF:
        return (0x80, 0xBF, 2)
    if lead == 0xF0:
        return (0x90, 0xBF, 3)
    if 0xF1 <= lead <= 0xF3:
        return (0x80, 0xBF, 3)
    if lead == 0xF4:
        return (0x80, 0x8F, 3)
    return None


def utf8_pending(data: bytes) -> bytes | None:
    """The incomplete character at the end of `data` (b"" if none); None if `data` is not a
    valid UTF-8 prefix (overlong forms, surrogates and stray bytes are invalid)."""
    index = 0
    while index < len(data):
        shape = _utf8_second_byte_range(data[index])
        if shape is None:
            return None
        low, high, need = shape
        for offset in range(1, need + 1):
            if index + offset == len(data):
                return data[index:]
            byte = data[index + offset]
            bounds = (low, high) if offset == 1 else (0x80, 0xBF)
            if not bounds[0] <= byte <= bounds[1]:
                return None
        index += need + 1
    return b""


class Utf8Tracker:
    """Keeps a token-by-token output valid UTF-8.

    llama.cpp's grammar engine decodes UTF-8 without rejecting every overlong form: with a
    byte-level vocabulary `F0 84 B8 AD` passes as U+4E2D. `extends` tells which next pieces keep
    the output a valid UTF-8 prefix (stricter than Python's incremental decoder, which only
    notices a bad second byte once the character is complete).
    """

    def __init__(self) -> None:
        self.pending = b""

    def extends(self, piece: bytes) -> bool:
        return utf8_pending(self.pending + piece) is not None

    def push(self, piece: bytes) -> None:
        pending = utf8_pending(self.pending + piece)
        if pending is None:
            raise ValueError(f"{piece!r} makes the output invalid UTF-8")
        self.pending = pending


def check_grammar_loads(llama: llama_cpp.Llama, gbnf: str) -> None:
    """Raise GrammarLoadError unless llama.cpp parses `gbnf`."""
    GrammarMatcher(llama, gbnf).close()
