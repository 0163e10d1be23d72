"""GBNF for integers and numbers within bounds, in the canonical plain-decimal spelling.

Canonical spellings (see `canonical.format_number`): integers `-?(0|[1-9][0-9]*)` without `-0`;
numbers add an optional fraction that is `.0` or ends in a non-zero digit, never exponents.
Bounds are enforced exactly (integer bounds for numbers; `schema.py` refuses fractional ones).
Magnitudes are capped at `max_int_digits` digits and fractions at `max_frac_digits` digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FracKind = Literal["any", "nonzero", "zero"]


def _alt(options: list[str]) -> str:
    options = [o for o in options if o]
    if not options:
        raise ValueError("empty alternative")
    return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"


def _digits(low: str, high: str) -> str:
    return f'"{low}"' if low == high else f"[{low}-{high}]"


def _same_length(low: str, high: str) -> list[str]:
    """Alternatives matching the decimal strings in [low, high], both of the same length."""
    prefix_len = 0
    while prefix_len < len(low) and low[prefix_len] == high[prefix_len]:
        prefix_len += 1
    prefix = f'"{low[:prefix_len]}"' if prefix_len else ""
    low, high = low[prefix_len:], high[prefix_len:]
    if not low:
        return [prefix]
    rest = len(low) - 1
    if rest == 0:
        return [f"{prefix} {_digits(low, high)}".strip()]
    tail_any = f"[0-9]{{{rest}}}" if rest > 1 else "[0-9]"
    options: list[str] = []
    first_full = int(low[0]) if low[1:] == "0" * rest else int(low[0]) + 1
    last_full = int(high[0]) if high[1:] == "9" * rest else int(high[0]) - 1
    if first_full != int(low[0]):
        options.append(f'"{low[0]}" {_alt(_same_length(low[1:], "9" * rest))}')
    if first_full <= last_full:
        options.append(f"{_digits(str(first_full), str(last_full))} {tail_any}")
    if last_full != int(high[0]):
        options.append(f'"{high[0]}" {_alt(_same_length("0" * rest, high[1:]))}')
    body = _alt(options)
    return [f"{prefix} {body}".strip()]


def natural_range(low: int, high: int) -> str:
    """GBNF for the canonical decimal spellings of the integers in [low, high], 0 <= low <= high."""
    if not 0 <= low <= high:
        raise ValueError(f"bad range [{low}, {high}]")
    options: list[str] = []
    full_lengths: list[int] = []
    for length in range(len(str(low)), len(str(high)) + 1):
        first = 0 if length == 1 else 10 ** (length - 1)
        last = 10**length - 1
        lo, hi = max(low, first), min(high, last)
        if length > 1 and (lo, hi) == (first, last):
            full_lengths.append(length)
            continue
        options.extend(_same_length(str(lo), str(hi)))
    if full_lengths:
        # Consecutive whole lengths: [1-9][0-9]{a,b}; they are contiguous by construction.
        a, b = full_lengths[0] - 1, full_lengths[-1] - 1
        repeat = "" if a == b == 1 else f"{{{a}}}" if a == b else f"{{{a},{b}}}"
        options.append(f"[1-9] [0-9]{repeat}")
    return _alt(options)


@dataclass(frozen=True)
class Bound:
    value: int
    inclusive: bool


def integer_range(low: int | None, high: int | None, max_digits: int) -> str:
    """GBNF for integers in [low, high] (None = as far as `max_digits` digits reach)."""
    cap = 10**max_digits - 1
    low = -cap if low is None else max(low, -cap)
    high = cap if high is None else min(high, cap)
    if low > high:
        raise ValueError(f"no integer with at most {max_digits} digits lies in [{low}, {high}]")
    options = []
    if high >= 0:
        options.append(natural_range(max(low, 0), high))
    if low < 0:
        options.append(f'"-" {natural_range(max(-high, 1), -low)}')
    return _alt(options)


def _fraction(kind: FracKind, max_frac_digits: int) -> str:
    nonzero = f"[0-9]{{0,{max_frac_digits - 1}}} [1-9]" if max_frac_digits > 1 else "[1-9]"
    if kind == "nonzero":
        return f'"." {nonzero}'
    if kind == "zero":
        return '(".0")?'
    return f'("." ("0" | {nonzero}))?'


def _magnitude(low: Bound, high: Bound, max_frac_digits: int) -> list[str]:
    """Spellings `I(.F)?` of the non-negative values v with low <(=) v <(=) high.

    With v = I + f (0 <= f < 1) and integer bounds: v >= L iff I >= L; v > L iff I > L or
    (I == L and f > 0); v <= H iff I < H or (I == H and f == 0); v < H iff I < H.
    """
    kinds: dict[int, FracKind | None] = {}
    low_kind: FracKind = "any" if low.inclusive else "nonzero"
    high_kind: FracKind | None = "zero" if high.inclusive else None
    if low.value == high.value:
        both = {("any", "zero"): "zero", ("nonzero", "zero"): None}.get((low_kind, high_kind))
        kinds[low.value] = both  # type: ignore[assignment]
    else:
        kinds[low.value] = low_kind
        kinds[high.value] = high_kind
    options = []
    interior = (low.value + 1, high.value - 1)
    if low_kind == "any" and low.value < high.value:
        interior = (low.value, high.value - 1)
        kinds.pop(low.value)
    if interior[0] <= interior[1]:
        options.append(f"{natural_range(*interior)} {_fraction('any', max_frac_digits)}")
    for value, kind in sorted(kinds.items()):
        if kind is not None and value >= 0:
            options.append(f"{natural_range(value, value)} {_fraction(kind, max_frac_digits)}")
    return options


def number_range(low: Bound | None, high: Bound | None, max_int_digits: int, max_frac_digits: int) -> str:
    """GBNF for numbers (ints or decimals) within integer bounds."""
    limit = 10**max_int_digits
    options: list[str] = []
    # Non-negative side: values in [max(low, 0), high].
    if high is None or high.value > 0 or (high.value == 0 and high.inclusive):
        side_low = Bound(0, True) if low is None or low.value < 0 else low
        side_high = Bound(limit, False) if high is None or high.value >= limit else high
        options += _magnitude(side_low, side_high, max_frac_digits)
    # Negative side: magnitudes m > 0 with -low >(=) m and m >(=) -high.
    if low is None or low.value < 0:
        m_high = (
            Bound(limit, False) if low is None or -low.value >= limit else Bound(-low.value, low.inclusive)
        )
        m_low = Bound(0, False) if high is None or high.value >= 0 else Bound(-high.value, high.inclusive)
        negative = _magnitude(m_low, m_high, max_frac_digits)
        if negative:
            options.append(f'"-" {_alt(negative)}')
    if not options:
        raise ValueError("no number lies within the bounds")
    return _alt(options)
