"""What llama.cpp's quantizer writes to the process's standard error, without its per-tensor lines.

Quantizing the default base (hidden size 576, not a multiple of 256) makes llama.cpp write one
`... not divisible by 256 ... falling back to q5_0` line for 180 of its 272 tensors, at every
level and in every quant-aware training run, and one `applying manual override` line for each
weight export forces a type on (the K-quant levels' second pass: 210 lines). They bury the lines
that matter; llama.cpp's own summary (`WARNING: 180 of 272 tensor(s) required fallback
quantization`) is kept, and the types are in each file's export report. llama.cpp writes
some lines to file descriptor 2 itself and hands others to llama-cpp-python's log callback, which
prints them to `sys.stderr` (not always descriptor 2: a test's capture replaces it). So both are
pointed at one temporary file for the call, and what it received is written back to the real
ones without the per-tensor lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

PER_TENSOR_LINES = re.compile(r"not divisible by \d+ .*falling back to|applying manual override:")


@dataclass
class Folded:
    """The lines a `folded_stderr` block left out (for a count or a test), set when it ends."""

    lines: list[str] = field(default_factory=list)


@contextlib.contextmanager
def folded_stderr(pattern: re.Pattern[str] = PER_TENSOR_LINES) -> Iterator[Folded]:
    """Run a block with file descriptor 2 and `sys.stderr` captured; then write back every
    captured line that does not match `pattern`. The lines are kept in order; a crash inside the
    block still writes them back (the `finally`), so no error message is lost."""
    folded = Folded()
    python_stderr = sys.stderr
    python_stderr.flush()
    saved = os.dup(2)
    with (
        tempfile.TemporaryFile() as capture,
        # The same file position as descriptor 2, so the two kinds of lines keep their order.
        open(capture.fileno(), "w", encoding="utf-8", errors="replace", closefd=False, buffering=1) as text,
    ):
        os.dup2(capture.fileno(), 2)
        sys.stderr = text
        try:
            yield folded
        finally:
            text.flush()
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept: list[str] = []
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                (folded.lines if pattern.search(line) else kept).append(line)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
