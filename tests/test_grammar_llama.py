"""Grammar <=> schema, both directions, through llama.cpp's own grammar engine.

(1) every canonical text of a random schema-valid call is accepted token by token with the
default base model's vocabulary, and end-of-sequence is allowed after it;
(2) random walks through the grammar (grammar-masked sampling over random candidates) always
end in text that `parse_tool_call` accepts, Pydantic validates, and that is already canonical.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from support import PROPERTY_OPTIONS, WALK_OPTIONS, accepts, all_catalogues, values
from toolroute.grammars import (
    NO_TOOL,
    ToolCall,
    catalogue_gbnf,
    parse_tool_call,
    serialize_call,
    serialize_no_tool,
)
from toolroute.runtime.grammar_engine import (
    GrammarLoadError,
    GrammarMatcher,
    Utf8Tracker,
    check_grammar_loads,
)

CATALOGUES = all_catalogues()
PROPERTY_GRAMMARS = {name: catalogue_gbnf(cat, PROPERTY_OPTIONS) for name, cat in CATALOGUES.items()}
WALK_GRAMMARS = {name: catalogue_gbnf(cat, WALK_OPTIONS) for name, cat in CATALOGUES.items()}


@pytest.mark.parametrize("name", sorted(CATALOGUES))
def test_grammar_loads_in_llama_cpp(base_vocab, name):
    check_grammar_loads(base_vocab, catalogue_gbnf(CATALOGUES[name]))


def test_broken_grammar_is_refused(base_vocab):
    with pytest.raises(GrammarLoadError):
        check_grammar_loads(base_vocab, 'root ::= "a" undefined-rule')


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_canonical_call_is_accepted(base_vocab, data):
    name = data.draw(st.sampled_from(sorted(CATALOGUES)), label="catalogue")
    catalogue = CATALOGUES[name]
    tool = data.draw(st.sampled_from([*catalogue.names, NO_TOOL]), label="tool")
    if tool == NO_TOOL:
        reason = data.draw(st.text(min_size=1, max_size=PROPERTY_OPTIONS.max_reason_length), label="reason")
        text = serialize_no_tool(reason)
    else:
        arguments = data.draw(values(catalogue.get(tool).parameters, PROPERTY_OPTIONS), label="arguments")
        text = serialize_call(catalogue, tool, arguments)
        parsed = parse_tool_call(text, catalogue)
        assert isinstance(parsed, ToolCall), f"schema-valid call failed validation: {text}"
        assert parsed.canonical == text
    # SmolLM2's byte-level vocabulary has no token for the UTF-8 lead bytes F1/F2 (planes 4-13,
    # unassigned): the model cannot spell those characters at all, so they are not a grammar test.
    tokens = base_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assume(base_vocab.detokenize(tokens) == text.encode("utf-8"))
    assert accepts(base_vocab, PROPERTY_GRAMMARS[name], text), f"grammar rejected canonical text: {text}"


@pytest.mark.parametrize(
    "text",
    [
        '{"tool": "track_order","arguments":{"order_id":"A1"}}',  # whitespace
        '{"tool":"track_order","arguments":{"order_id":"A1"} }',
        '{"arguments":{"order_id":"A1"},"tool":"track_order"}',  # key order
        '{"tool":"escalate","arguments":{"urgency":"low","topic":"legal"}}',  # argument order
        '{"tool":"track_order","arguments":{}}',  # missing required
        '{"tool":"track_order","arguments":{"order_id":"A1","extra":1}}',  # unknown argument
        '{"tool":"cancel_order","arguments":{"order_id":"A1"}}',  # unknown tool
        '{"tool":"track_order","arguments":{"order_id":"a\\/b"}}',  # non-canonical escape
        '{"tool":"track_order","arguments":{"order_id":"\\u0041"}}',  # escaped printable
        '{"tool":"request_refund","arguments":{"order_id":"A1","reason":"lost"}}',  # not in enum
        '{"tool":"request_refund","arguments":{"order_id":"A1","reason":null}}',  # null for absent
        '{"tool":"no_tool","reason":""}',  # empty reason
        '{"tool":"no_tool"}',
        '{"tool":"track_order","arguments":{"order_id":"A1"}}{"tool":"no_tool","reason":"x"}',
    ],
)
def test_non_canonical_or_invalid_text_is_rejected(base_vocab, text):
    assert not accepts(base_vocab, PROPERTY_GRAMMARS["customer_support"], text)


@pytest.mark.parametrize(
    "arguments, ok",
    [
        ('{"offset":-7}', True),
        ('{"offset":-150}', True),
        ('{"offset":-6}', False),
        ('{"offset":-151}', False),
        ('{"offset":-07}', False),
        ('{"scale":0}', True),
        ('{"scale":0.0}', True),
        ('{"scale":-2.0}', True),
        ('{"scale":-2.5}', False),
        ('{"scale":-0.0}', False),
        ('{"scale":0.5}', False),
        ('{"scale":-1.50}', False),  # trailing zero is not canonical
        ('{"ratio":1e5}', False),  # no exponents
        ('{"ratio":123.456}', True),
        ('{"steps":-0}', False),
        ('{"steps":0}', True),
        ('{"offset":-8,"scale":-1,"steps":3,"ratio":-0.25}', True),
    ],
)
def test_number_bounds_and_spelling(base_vocab, arguments, ok):
    text = f'{{"tool":"adjust","arguments":{arguments}}}'
    assert accepts(base_vocab, PROPERTY_GRAMMARS["kitchen_sink"], text) is ok


@pytest.mark.parametrize(
    "day, ok",
    [
        ("2024-02-29", True),
        ("2023-02-29", False),
        ("2000-02-29", True),
        ("1900-02-29", False),
        ("2023-04-31", False),
        ("2023-12-31", True),
        ("0000-01-01", False),
        ("2023-13-01", False),
    ],
)
def test_dates_are_calendar_dates(base_vocab, day, ok):
    text = f'{{"tool":"book_table","arguments":{{"restaurant":"Noma","date":"{day}","party_size":2}}}}'
    assert accepts(base_vocab, PROPERTY_GRAMMARS["kitchen_sink"], text) is ok


class _Walker:
    """Grammar-masked sampling over random candidate sets from the real vocabulary."""

    def __init__(self, vocab, seed: int) -> None:
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)
        with GrammarMatcher(vocab, 'root ::= "x"') as probe:
            self.n_vocab, self.eos = probe.n_vocab, probe.eos
            self.pieces = [probe.piece(t) for t in range(self.n_vocab)]
            self.is_end = np.array([probe.is_end(t) for t in range(self.n_vocab)])
        # Single-byte tokens guarantee that some candidate can always make progress.
        self.singles = np.array([t for t, p in enumerate(self.pieces) if len(p) == 1], dtype=np.int32)
        self.closing = np.array([bool(p) and p[:1] in b'"}]' for p in self.pieces])
        self.ascii = np.array([p.isascii() for p in self.pieces])

    def walk(self, gbnf: str, max_steps: int = 3000) -> str:
        text = b""
        utf8 = Utf8Tracker()
        with GrammarMatcher(self.vocab, gbnf) as matcher:
            for _ in range(max_steps):
                sample = self.rng.choice(self.n_vocab, 1500, replace=False)
                candidates = np.unique(np.concatenate([self.singles, sample, [self.eos]])).astype(np.int32)
                logits = self.rng.standard_normal(len(candidates)).astype(np.float32)
                masked = matcher.mask(candidates, logits)
                for index in np.flatnonzero(np.isfinite(masked)):
                    token = candidates[index]
                    if (utf8.pending or not self.ascii[token]) and not utf8.extends(self.pieces[token]):
                        masked[index] = -np.inf
                allowed = candidates[np.isfinite(masked)]
                assert len(allowed), f"grammar dead end after {text!r}"
                ends = self.is_end[allowed]
                if ends.any():
                    assert ends.all(), f"end of generation offered mid-output after {text!r}"
                    return text.decode("utf-8")
                closers = allowed[self.closing[allowed]]
                if len(closers) and self.rng.random() < 0.25:
                    token = int(self.rng.choice(closers))
                else:
                    token = int(candidates[np.argmax(masked)])
                matcher.accept(token)
                utf8.push(self.pieces[token])
                text += self.pieces[token]
        raise AssertionError(f"walk did not finish in {max_steps} steps: {text!r}")


def test_overlong_utf8_fools_the_grammar_engine_but_not_the_tracker(base_vocab):
    """Why walks (and the runtime) track UTF-8: llama.cpp takes `F0 84 B8 AD` for U+4E2D."""
    with GrammarMatcher(base_vocab, 'root ::= [^"]') as matcher:
        pieces = {matcher.piece(t): t for t in range(matcher.n_vocab)}
        tracker = Utf8Tracker()
        for byte in (b"\xf0", b"\x84", b"\xb8", b"\xad"):
            assert matcher.allows(pieces[byte])
            matcher.accept(pieces[byte])
        assert matcher.allows(matcher.eos)
        assert tracker.extends(b"\xf0")
        tracker.push(b"\xf0")
        assert not tracker.extends(b"\x84")  # overlong: Python's decoder refuses it
        assert tracker.extends(b"\x9f")


def test_random_walks_give_valid_canonical_calls(base_vocab):
    seed = int(os.environ.get("TOOLROUTE_WALK_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    walker = _Walker(base_vocab, seed)
    seen: dict[str, set[str]] = {name: set() for name in CATALOGUES}
    for _ in range(300):
        name = rng.choice(sorted(CATALOGUES))
        text = walker.walk(WALK_GRAMMARS[name])
        parsed = parse_tool_call(text, CATALOGUES[name])
        assert parsed is not None, f"seed {seed}: walk produced invalid output {text!r}"
        assert parsed.canonical == text, f"seed {seed}: walk produced non-canonical {text!r}"
        seen[name].add(parsed.tool)
    covered = sum(len(tools) for tools in seen.values())
    total = sum(len(cat) + 1 for cat in CATALOGUES.values())
    assert covered >= total * 0.8, f"seed {seed}: walks reached only {seen}"
