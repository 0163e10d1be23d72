"""Resident memory a router holds but does not use, given back to the kernel (Linux; elsewhere a no-op).

A router process's resident set was the weights (105 MB at Q4_K_M), the interpreter and its
modules (~55 MB), and a KV cache llama.cpp had written zeros over in full (94 MB for SmolLM2-135M at
n_ctx 4096) although a route writes a few hundred of its 4,096 cells; the peak came while the
context was made, with the weights resident and the whole cache being cleared. Two moments, each
of which changes nothing a reader of the memory can see:

1. **Before a context is made**, the model file's pages are dropped from this process's page
   tables (`MADV_DONTNEED` on llama.cpp's read-only shared mapping of the file: the next read maps
   the same bytes again from the page cache; nothing was written to them, so nothing can be lost).
   The cache's clear then does not stack on top of the weights, and the weights come back with the
   first model step.
2. **Right after**, the pages of the new KV buffer that still hold only zeros are given back
   (`MADV_DONTNEED` on a private anonymous mapping: the next read of such a page is a fresh zero
   page, which is what the clear wrote). The buffer is found as the one run of resident zero pages,
   in the anonymous memory that appeared while the context was made, whose length is the KV
   cache's, computed from the model's dimensions (F16 K and V, one cell per position); a model with
   a sliding-window cache (two buffers), other cache types or anything unexpected (no such run, or
   several) leaves the memory as it is. The length match is what keeps other memory out of it:
   only the new context knows this buffer, so no other thread writes to it meanwhile. A cache
   under glibc's mmap threshold (at most 32 MB: small models or contexts) can come from heap
   memory freed earlier in the process, which was not new: it is then left as it is too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MADV_DONTNEED = 4
F16_BYTES = 2
# Pages are read this many at a time when looking for zeros (a bounded temporary, never the buffer).
SCAN_PAGES = 256


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


LIBC = _libc()
Made = TypeVar("Made")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start


def mappings() -> list[Mapping]:
    """This process's memory map (/proc/self/maps)."""
    found = []
    with open("/proc/self/maps") as lines:
        for line in lines:
            parts = line.split(maxsplit=5)
            start, end = (int(bound, 16) for bound in parts[0].split("-"))
            found.append(Mapping(start, end, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return found


def _anonymous(found: list[Mapping]) -> set[tuple[int, int]]:
    # malloc serves a buffer from its heap below its mmap threshold (which glibc raises up to 32
    # MB as large blocks are freed), from a mapping of its own above it.
    return {(m.start, m.end) for m in found if m.path in ("", "[heap]") and m.perms == "rw-p"}


def _madvise(start: int, length: int) -> None:
    assert LIBC is not None
    if LIBC.madvise(start, length, MADV_DONTNEED) != 0:
        raise OSError(ctypes.get_errno(), f"madvise({start:#x}, {length})")


def drop_file_pages(path: str) -> int:
    """Drop the read-only shared mappings of `path` from this process's page tables; the bytes dropped."""
    if LIBC is None:
        return 0
    real = os.path.realpath(path)
    dropped = 0
    for mapping in mappings():
        # Only read-only shared mappings (llama.cpp's): a private one can hold pages written before
        # it was made read-only (a loader's relocations), which dropping would undo.
        if mapping.path == real and mapping.perms == "r--s":
            _madvise(mapping.start, mapping.size)
            dropped += mapping.size
    return dropped


def mincore_resident(start: int, end: int) -> np.ndarray:
    """Which pages of [start, end) are resident (mincore), one bool per page."""
    assert LIBC is not None
    flags = np.zeros((end - start) // PAGE, dtype=np.uint8)
    if LIBC.mincore(start, end - start, flags.ctypes.data) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return (flags & 1).astype(bool)


def zero_runs(start: int, end: int) -> list[tuple[int, int]]:
    """The maximal runs of resident pages of [start, end) that hold only zeros, as address ranges.
    Pages that are not resident are never read (reading would only fault them in)."""
    pages = (end - start) // PAGE
    resident = mincore_resident(start, end)
    words = np.ctypeslib.as_array((ctypes.c_uint64 * ((end - start) // 8)).from_address(start))
    words = words.reshape(pages, PAGE // 8)
    zero = np.zeros(pages, dtype=bool)
    for first in range(0, pages, SCAN_PAGES):  # a bounded temporary, never a copy of the buffer
        block = slice(first, first + SCAN_PAGES)
        held = np.flatnonzero(resident[block]) + first
        if held.size:  # only resident pages are read: reading another would map it
            zero[held] = ~words[held].any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], zero.astype(np.int8), [0]))))
    return [
        (start + a * PAGE, start + b * PAGE)
        for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
    ]


def kv_cache_bytes(
    metadata: dict[str, str], n_layer: int, n_embd: int, n_head: int, n_head_kv: int, cells: int
) -> int:
    """The bytes of llama.cpp's KV buffer for `cells` positions with F16 K and V on every layer."""
    architecture = metadata.get("general.architecture", "")
    key = int(metadata.get(f"{architecture}.attention.key_length", n_embd // max(n_head, 1)))
    value = int(metadata.get(f"{architecture}.attention.value_length", key))
    return n_layer * n_head_kv * (key + value) * F16_BYTES * cells


@dataclass
class KvRelease:
    """What `create_releasing` did: the bytes dropped and given back, or why nothing was given back."""

    weights_dropped: int = 0
    kv_released: int = 0
    skipped: str = ""


def create_releasing(
    create: Callable[[], Made], model_path: str, kv_bytes: Callable[[Made], int | None]
) -> tuple[Made, KvRelease]:
    """`create()` (the making of a llama.cpp context) with the weights' pages dropped before it
    and the zero pages of its new KV buffer given back after it; `kv_bytes(made)` is that buffer's
    size, or None where it cannot be told (then nothing is given back)."""
    release = KvRelease()
    if LIBC is None:
        release.skipped = "not Linux"
        return create(), release
    release.weights_dropped = drop_file_pages(model_path)
    before = _anonymous(mappings())
    made = create()
    expected = kv_bytes(made) if made else None
    if expected is None:
        release.skipped = "no context, or a KV cache whose size is not known"
        return made, release
    # The kernel merges neighbouring anonymous mappings, so the buffer is looked for as a run of
    # zero pages rather than as a mapping: glibc's chunk header keeps its first page non-zero (and
    # a neighbour's header bounds it), so the run is the buffer less at most two pages.
    changed = sorted(_anonymous(mappings()) - before)
    runs = [
        run
        for span in changed
        for run in zero_runs(*span)
        if expected - 2 * PAGE <= run[1] - run[0] <= expected + PAGE
    ]
    if len(runs) != 1:
        release.skipped = f"{len(runs)} runs of zero pages of the KV cache's size ({expected} bytes)"
        return made, release
    ((first, last),) = runs
    _madvise(first, last - first)
    release.kv_released = last - first
    return made, release
