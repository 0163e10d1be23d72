"""Integer and number ranges in GBNF, checked exhaustively near their edges with llama.cpp."""

from __future__ import annotations

import random

import pytest

from support import accepts
from toolroute.grammars.numbers import Bound, integer_range, number_range


def _grammar(expr: str) -> str:
    return f"root ::= {expr}"


@pytest.mark.parametrize(
    "low, high",
    [(0, 0), (0, 9), (1, 20), (-150, -7), (-5, 5), (7, 1234), (99, 101), (None, 3), (-3, None), (None, None)],
)
def test_integer_ranges_are_exact(base_vocab, low, high):
    gbnf = _grammar(integer_range(low, high, max_digits=4))
    lo = -9999 if low is None else low
    hi = 9999 if high is None else high
    probes = (
        set(range(lo - 12, lo + 12)) | set(range(hi - 12, hi + 12)) | {0, -1, 1, 10, 100, -10, 9999, -9999}
    )
    probes |= set(random.Random(low or 0).sample(range(-12000, 12000), 60))
    for value in sorted(probes):
        assert accepts(base_vocab, gbnf, str(value)) is (lo <= value <= hi and abs(value) <= 9999), value
    for bad in ("-0", "007", "+3", "1.0", ""):
        assert not accepts(base_vocab, gbnf, bad), bad


@pytest.mark.parametrize(
    "low, high",
    [
        (Bound(5, True), Bound(30, True)),
        (Bound(-3, False), Bound(3, False)),
        (Bound(-2, True), Bound(0, True)),
        (Bound(0, False), None),
        (None, Bound(-1, False)),
        (Bound(2, True), Bound(2, True)),
    ],
)
def test_number_ranges_are_exact(base_vocab, low, high):
    expr = number_range(low, high, max_int_digits=3, max_frac_digits=2)
    gbnf = _grammar(expr)

    def inside(value: float) -> bool:
        ok = abs(value) < 1000
        if low is not None:
            ok &= value >= low.value if low.inclusive else value > low.value
        if high is not None:
            ok &= value <= high.value if high.inclusive else value < high.value
        return ok

    spellings = {
        "0",
        "0.0",
        "0.5",
        "-0.5",
        "1",
        "1.0",
        "1.25",
        "-1.25",
        "2",
        "2.0",
        "2.01",
        "3",
        "-3",
        "2.99",
        "-2.99",
        "-3.0",
        "5",
        "4.99",
        "30",
        "30.0",
        "30.01",
        "29.99",
        "-1",
        "-1.0",
        "-2",
        "-2.0",
        "-2.01",
        "999",
        "999.99",
        "-999.99",
    }
    for text in sorted(spellings):
        assert accepts(base_vocab, gbnf, text) is inside(float(text)), text
    for bad in ("-0", "-0.0", "1.50", "1e3", "01", ".5", "1.", "0.001"):
        assert not accepts(base_vocab, gbnf, bad), bad


def test_empty_number_range_is_an_error():
    with pytest.raises(ValueError, match="no number lies within the bounds"):
        number_range(Bound(2, False), Bound(2, True), 3, 2)
    with pytest.raises(ValueError, match="no integer"):
        integer_range(5, 1, 3)
