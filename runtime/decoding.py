"""Token-level machinery for grammar-constrained greedy decoding on a llama.cpp context.

`Vocabulary` holds what the runtime needs to know about a model's tokens (computed once per
model), `Matcher` adds clone and a byte probe to the grammar engine's `GrammarMatcher`, `Context` is one
llama.cpp context with its own batch (several sequences share one unified KV cache, so a cached
prefix or a branch point is shared by reference, never copied), and `pick_greedy` /
`forced_bytes` are the two decisions a generation step makes. With a `CopyTracker` (copied
arguments, see `copying.py`), `pick_greedy` also keeps copied values to spans of the request.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from .copying import CopyTracker, PieceTrie
from .grammar_engine import GrammarMatcher, Utf8Tracker, utf8_pending
from .memory import KvRelease, create_releasing, kv_cache_bytes

if TYPE_CHECKING:
    from llama_cpp import Llama

# How many of the highest logits a step checks against the grammar before masking more of the
# vocabulary (the whole of it costs ~10 ms for 49k tokens, 16 tokens ~40 µs): inside strings
# almost any token is allowed, and at structural points the grammar's few tokens are usually on
# top for a trained router; an untrained one needs the wider tiers more often.
TOP_K = (16, 512)


class DecodeError(RuntimeError):
    """llama.cpp failed to evaluate a batch (out of KV cells, or an internal error)."""


def _piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    buffer = ctypes.create_string_buffer(64)
    size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if size < 0:
        buffer = ctypes.create_string_buffer(-size)
        size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[:size]


class Vocabulary:
    """A model's tokens as the runtime uses them. Read-only after construction (thread-safe)."""

    def __init__(self, llama: Llama) -> None:
        self.llama = llama
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.all_ids = np.arange(self.n_vocab, dtype=np.int32)
        self.pieces: list[bytes] = [_piece(vocab, token) for token in range(self.n_vocab)]
        self.eog = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)], dtype=np.int32
        )
        self._eog_set = frozenset(int(t) for t in self.eog)
        special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        texts = set()
        for token in range(self.n_vocab):
            if llama_cpp.llama_vocab_get_attr(vocab, token) & special:
                text = llama.detokenize([token], special=True).decode("utf-8", "replace")
                if text.strip():
                    texts.add(text)
        # Texts that tokenize to special tokens when `special=True`: user text must never spell them.
        self.special_texts = tuple(sorted(texts))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self.bos = llama_cpp.llama_vocab_bos(vocab)

        by_byte: dict[int, int] = {}
        self._spelling: dict[bytes, int] = {}
        first: dict[int, list[int]] = {}
        for token, piece in enumerate(self.pieces):
            if not piece or token in self._eog_set:
                continue
            if len(piece) == 1:
                by_byte.setdefault(piece[0], token)
            self._spelling.setdefault(piece, token)
            first.setdefault(piece[0], []).append(token)
        self._max_piece = max(len(p) for p in self._spelling)
        # One single-byte token per byte value, and the end tokens: masking these few tells
        # which next bytes the grammar allows and whether it may end, in ~50 µs.
        self.byte_token = by_byte
        self.byte_ids = np.array(sorted(by_byte.values()), dtype=np.int32)
        self.probe_ids = np.concatenate([self.byte_ids, self.eog])
        self.first_byte = {byte: np.array(ids, dtype=np.int32) for byte, ids in first.items()}
        # First bytes no single-byte token spells (so `probe` cannot see them): always candidates.
        self.unprobed = frozenset(first) - frozenset(by_byte)
        # Pieces the checks on top of the grammar cannot refuse when no character is pending and
        # no copied value is open: non-empty ASCII (the UTF-8 guard) without a quote (the copy rule).
        self.plain = np.array([bool(p) and p.isascii() and b'"' not in p for p in self.pieces], dtype=bool)

    def is_eog(self, token: int) -> bool:
        return token in self._eog_set

    @cached_property
    def trie(self) -> PieceTrie:
        """The pieces as a trie (built on first use: only routers with copied arguments walk it)."""
        return PieceTrie(self.pieces, self._eog_set)

    def tokenize(self, text: str, special: bool) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def spell(self, data: bytes) -> list[int]:
        """Tokens whose pieces concatenate to exactly `data`.

        The tokenizer's own spelling when it reproduces the bytes (the spelling a fine-tuned
        model saw in training); otherwise (a SentencePiece tokenizer adding its leading space,
        say) the greedy longest match over the vocabulary's pieces.
        """
        tokens = self.llama.tokenize(data, add_bos=False, special=False)
        if b"".join(self.pieces[t] for t in tokens) == data:
            return tokens
        tokens, index = [], 0
        while index < len(data):
            for size in range(min(self._max_piece, len(data) - index), 0, -1):
                token = self._spelling.get(data[index : index + size])
                if token is not None:
                    tokens.append(token)
                    index += size
                    break
            else:
                raise ValueError(f"the vocabulary cannot spell byte {data[index]:#04x}")
        return tokens

    def candidates(self, first_bytes: set[int]) -> np.ndarray:
        """Every token whose piece starts with one of `first_bytes`."""
        parts = [self.first_byte[b] for b in sorted(first_bytes) if b in self.first_byte]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


class Matcher(GrammarMatcher):
    """`GrammarMatcher` with clone (a branch point's grammar state, copied), an unchecked accept
    and a probe of the next bytes."""

    def clone(self) -> Matcher:
        twin = object.__new__(Matcher)
        twin._llama, twin.vocab, twin.n_vocab, twin.eos = self._llama, self.vocab, self.n_vocab, self.eos
        twin._sampler = llama_cpp.llama_sampler_clone(self._sampler)
        return twin

    def advance(self, token: int) -> None:
        """`accept` without its check, for a token a mask just allowed (llama.cpp aborts the
        process on a forbidden token, so every caller checks first)."""
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def probe(self, vocabulary: Vocabulary) -> tuple[list[int], bool]:
        """(next bytes the grammar allows, whether it may end here)."""
        allowed = vocabulary.probe_ids[np.isfinite(self.mask(vocabulary.probe_ids))]
        end = any(vocabulary.is_eog(int(t)) for t in allowed)
        return [vocabulary.pieces[int(t)][0] for t in allowed if not vocabulary.is_eog(int(t))], end


def forced_bytes(matcher: Matcher, vocabulary: Vocabulary, limit: int) -> tuple[bytes, bool]:
    """The bytes every grammar-valid continuation starts with (at most `limit`), and whether the
    output goes on after them with a choice (several bytes allowed, or the end or more).

    Found one byte at a time on a clone of the matcher. The bytes end on a character
    boundary so that they can be spelled with whole tokens.
    """
    probe = matcher.clone()
    out = bytearray()
    choice_follows = False
    try:
        while len(out) < limit:
            allowed, may_end = probe.probe(vocabulary)
            if len(allowed) != 1 or may_end:
                choice_follows = bool(allowed)
                break
            out.append(allowed[0])
            probe.advance(vocabulary.byte_token[allowed[0]])  # the probe just allowed it
    finally:
        probe.close()
    pending = utf8_pending(bytes(out)) or b""
    return bytes(out[: len(out) - len(pending)]), choice_follows or bool(pending)


def pick_greedy(
    matcher: Matcher,
    utf8: Utf8Tracker,
    vocabulary: Vocabulary,
    logits: np.ndarray,
    next_bytes: Sequence[int] | None = None,
    may_end: bool = True,
    copy: CopyTracker | None = None,
) -> int:
    """The highest-logit token the grammar allows, that keeps the output valid UTF-8 and, with
    `copy`, keeps copied values to spans of the request.

    Checked in tiers of the highest logits, then every token that can be allowed: the first
    allowed token of a tier sorted by logit is the argmax over the allowed set, the same token a
    full mask picks. `next_bytes`/`may_end` (from `Matcher.probe`) narrow the last tier to tokens
    starting with an allowed byte, plus the end tokens when the grammar may end. Inside a copied
    value the candidates are the few the request's spans allow (`CopyTracker.candidates`).
    """
    if copy is not None and copy.inside:
        candidates = copy.candidates(vocabulary.trie)
        ids, values = allowed_tokens(matcher, utf8, vocabulary, logits, candidates, copy)
        if not len(ids):
            raise DecodeError("no token extends a span of the request here (dead end)")
        if copy.guarded and copy.gives_up(span_mass(logits, values)):
            raise DecodeError("the model gives what the copy rule allows too little probability here")
        return int(ids[int(np.argmax(values))])
    top = np.argpartition(-logits, TOP_K[-1])[: TOP_K[-1]]
    top = top[np.argsort(-logits[top], kind="stable")]
    for low, high in zip((0, *TOP_K[:-1]), TOP_K, strict=True):
        tier = top[low:high]
        masked = matcher.mask(tier, logits[tier])
        for token, value in zip(tier, masked, strict=True):
            if np.isfinite(value) and _keeps(int(token), utf8, vocabulary, copy):
                return int(token)
    candidates = step_candidates(vocabulary, next_bytes, may_end)
    masked = matcher.mask(candidates, logits[candidates])
    allowed = np.flatnonzero(np.isfinite(masked))
    for index in allowed[np.argsort(-masked[allowed], kind="stable")]:
        token = int(candidates[index])
        if _keeps(token, utf8, vocabulary, copy):
            return token
    raise DecodeError("the grammar allows no token here (dead end)")


def span_mass(logits: np.ndarray, allowed_logits: np.ndarray) -> float:
    """The model's probability (softmax over the whole vocabulary) of the allowed tokens."""
    top = float(np.max(logits))
    total = float(np.sum(np.exp(logits.astype(np.float64) - top)))
    return float(np.sum(np.exp(allowed_logits.astype(np.float64) - top)) / total)


def _keeps(token: int, utf8: Utf8Tracker, vocabulary: Vocabulary, copy: CopyTracker | None) -> bool:
    """The checks on top of the grammar: valid UTF-8 and, with `copy`, the copy rule. A control
    token (an empty piece here) is refused unless it ends generation: llama.cpp's grammar reads
    it as its text (`<|im_end|>` is fine string content to it), which the output would not hold."""
    piece = vocabulary.pieces[token]
    if not piece:
        return vocabulary.is_eog(token)
    return utf8.extends(piece) and (copy is None or copy.allows(piece))


def step_candidates(vocabulary: Vocabulary, next_bytes: Sequence[int] | None, may_end: bool) -> np.ndarray:
    """Every token the grammar can allow at a step: those starting with a byte it allows next
    (`Matcher.probe`), and the end tokens when it may end; all tokens without a probe."""
    if next_bytes is None:
        return vocabulary.all_ids
    candidates = vocabulary.candidates(set(next_bytes) | vocabulary.unprobed)
    if may_end:
        candidates = np.concatenate([candidates, vocabulary.eog])
    return candidates


def allowed_tokens(
    matcher: Matcher,
    utf8: Utf8Tracker,
    vocabulary: Vocabulary,
    logits: np.ndarray,
    candidates: np.ndarray,
    copy: CopyTracker | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, logits) of the candidates the grammar, the UTF-8 guard and the copy rule allow."""
    if not len(candidates):
        return candidates, np.zeros(0, dtype=np.float32)
    masked = matcher.mask(candidates, logits[candidates])
    finite = np.flatnonzero(np.isfinite(masked))
    if utf8.pending or (copy is not None and copy.inside):
        checked = finite
    else:  # only pieces the checks could refuse go through them (a free-text step allows ~45k)
        checked = finite[~vocabulary.plain[candidates[finite]]]
    refused = [i for i in checked if not _keeps(int(candidates[i]), utf8, vocabulary, copy)]
    if refused:
        finite = np.setdiff1d(finite, np.asarray(refused, dtype=finite.dtype), assume_unique=True)
    return candidates[finite], masked[finite]


def _kv_cache_bytes(llama: Llama) -> Callable[[llama_cpp.llama_context_p], int | None]:
    """The size of a context's KV buffer on this model, where one buffer holds it: F16 K and V for
    every layer and every cell (the defaults the router keeps); None with a sliding window."""
    model = llama.model

    def size(ctx: llama_cpp.llama_context_p) -> int | None:
        if llama_cpp.llama_model_n_swa(model) > 0:
            return None
        return kv_cache_bytes(
            llama.metadata,
            n_layer=llama_cpp.llama_model_n_layer(model),
            n_embd=llama_cpp.llama_model_n_embd(model),
            n_head=llama_cpp.llama_model_n_head(model),
            n_head_kv=llama_cpp.llama_model_n_head_kv(model),
            cells=llama_cpp.llama_n_ctx(ctx),
        )

    return size


class Context:
    """One llama.cpp context over a shared model, with its own batch and unified KV cache.

    Not thread-safe: the router gives each thread a whole context at a time.
    """

    def __init__(
        self,
        llama: Llama,
        n_ctx: int,
        n_batch: int,
        n_seq_max: int,
        n_threads: int,
        *,
        release_memory: bool = True,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.kv_unified = True  # sequences share cells: a prefix is cached once for all of them
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self._llama = llama  # the model must outlive the context
        create = partial(llama_cpp.llama_init_from_model, llama.model, params)
        if release_memory:
            # llama.cpp clears the whole KV cache as it makes it (94 MB at n_ctx 4096 for
            # SmolLM2-135M) with the weights resident: memory.py gives back what nothing reads.
            self.ctx, self.release = create_releasing(create, llama.model_path, _kv_cache_bytes(llama))
        else:
            self.ctx, self.release = create(), KvRelease(skipped="release_memory=False")
        if not self.ctx:
            raise DecodeError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama.model))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq_max)

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seqs: Sequence[Sequence[int]],
        outputs: Sequence[bool],
    ) -> None:
        """Evaluate one batch (at most n_batch tokens); logits kept where `outputs` is True."""
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = positions[i]
            batch.n_seq_id[i] = len(seqs[i])
            for j, seq in enumerate(seqs[i]):
                batch.seq_id[i][j] = seq
            batch.logits[i] = outputs[i]
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise DecodeError(f"llama_decode failed with status {status}")

    def extend(self, tokens: Sequence[int], seq: int, start: int) -> np.ndarray | None:
        """Append tokens to one sequence from position `start`; the last token's logits."""
        logits = None
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            last = offset + len(chunk) == len(tokens)
            outputs = [False] * len(chunk)
            outputs[-1] = last
            positions = range(start + offset, start + offset + len(chunk))
            self.decode(chunk, positions, [(seq,)] * len(chunk), outputs)
            if last:
                logits = self.logits(len(chunk) - 1)
        return logits

    def extend_rows(self, tokens: Sequence[int], seq: int, start: int, rows: int) -> list[np.ndarray]:
        """Append tokens to one sequence in one batch (at most n_batch tokens, `rows` of them
        last); the logits after each of the last `rows` tokens, in order. How a draft is verified."""
        if not 0 < rows <= len(tokens) <= self.n_batch:
            raise ValueError(f"extend_rows: {rows} rows of {len(tokens)} tokens (n_batch {self.n_batch})")
        first = len(tokens) - rows
        outputs = [index >= first for index in range(len(tokens))]
        self.decode(tokens, range(start, start + len(tokens)), [(seq,)] * len(tokens), outputs)
        return [self.logits(index) for index in range(first, len(tokens))]

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits of batch row `index` (the next decode overwrites them)."""
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def seq_cp(self, source: int, dest: int, p0: int = -1, p1: int = -1) -> None:
        llama_cpp.llama_memory_seq_cp(self.memory, source, dest, p0, p1)
