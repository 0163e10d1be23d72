"""Copied arguments without a model: the span predicate, declarations, and the byte-level copy rule.

The runtime's token-level enforcement on a real vocabulary is in `test_copied_decoding.py`.
"""

from __future__ import annotations

import json
import random
import unicodedata
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from toolroute.grammars import Catalogue, CatalogueError, Copied, CopiedArgument, is_span, spans
from toolroute.grammars.copied import check_copied, optional_ancestor, without_arguments
from toolroute.grammars.gbnf import GrammarOptions
from toolroute.runtime.copy_rule import CopyRule
from toolroute.runtime.copying import CopyTracker, FieldLimits, PieceTrie, RequestText

# Requests as users type them, and worse: quotes, backslashes, control characters, accents,
# CJK, emoji (4-byte UTF-8), combining marks, non-breaking spaces.
ALPHABET = 'aZ09 -#"\\\n\t\x01éü中😀🎉\u0301\u00a0/'
REQUESTS = st.text(alphabet=ALPHABET, min_size=1, max_size=24).filter(lambda t: t.strip())


def _span_of(request: str, data: st.DataObject) -> str:
    solid = [i for i, c in enumerate(request) if not c.isspace()]
    start = data.draw(st.sampled_from(solid))
    end = data.draw(st.sampled_from([i + 1 for i in solid if i >= start]))
    return request[start:end]


# -- the predicate ---------------------------------------------------------------------------


def test_a_span_is_the_request_byte_for_byte():
    request = "Play “Too Poetic” by José — now"
    assert is_span("Too Poetic", request) and is_span("José", request) and is_span("“Too", request)
    assert not is_span("too poetic", request)  # case kept
    assert not is_span("Jose", request)  # accents kept
    assert not is_span(unicodedata.normalize("NFD", "José"), request)  # no Unicode normalisation
    assert not is_span(" Too", request) and not is_span("Poetic ", request)  # no edge whitespace
    assert not is_span("", request)
    assert is_span("Too Poetic” by", request)  # inner spaces kept


@settings(max_examples=150, deadline=None)
@given(REQUESTS)
def test_spans_are_exactly_the_values_the_predicate_accepts(request):
    found = set(spans(request))
    every = {request[i:j] for i in range(len(request)) for j in range(i + 1, len(request) + 1)}
    assert found == {value for value in every if is_span(value, request)}
    assert all(len(value) <= 3 for value in spans(request, max_chars=3))


# -- declarations ----------------------------------------------------------------------------


class TrackOrder(BaseModel):
    """Track an order."""

    order_id: Annotated[str, Copied] = Field(description="As written.")
    note: Annotated[str, Copied] | None = None
    carrier: Annotated[str | None, Copied] = None


class TrackOrderPlain(BaseModel):
    """Track an order."""

    model_config = {"title": "track_order"}

    order_id: str = Field(description="As written.")
    note: str | None = None
    carrier: str | None = None


def play(artist: Annotated[str, Copied] | None = None, volume: int = 5) -> None:
    """Play music."""


def test_copied_is_declared_in_every_source_and_is_not_part_of_the_catalogues_identity():
    marked = Catalogue.from_tools([TrackOrder, play])
    plain = Catalogue.from_tools([TrackOrderPlain])
    assert marked.copy_marks == {
        "track_order": {"carrier": True, "note": True, "order_id": True},
        "play": {"artist": True},
    }
    openai = json.loads(marked.to_json())
    assert "x-toolroute-copy" not in marked.to_json()
    openai[0]["function"]["parameters"]["properties"]["order_id"]["x-toolroute-copy"] = True
    openai[1]["function"]["parameters"]["properties"]["artist"]["x-toolroute-copy"] = False
    from_json = Catalogue.from_openai(openai)
    assert from_json.copy_marks == {"track_order": {"order_id": True}, "play": {"artist": False}}
    # The same catalogue, whatever the marks: equality, hash and JSON.
    assert marked == from_json and marked.sha256 == from_json.sha256
    assert marked.get("track_order") == plain.get("track_order") and not plain.copy_marks
    assert marked.subset(["play"]).copy_marks == {"play": {"artist": True}}


@pytest.mark.parametrize(
    ("prop", "field"),
    [
        ({"type": "integer", "x-toolroute-copy": True}, "'n'"),
        ({"type": "array", "items": {"type": "string", "x-toolroute-copy": True}}, "'n[]'"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}], "x-toolroute-copy": True}, "'n'"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "x-toolroute-copy": True}, "'n'"),
    ],
)
def test_a_non_string_field_marked_copied_is_refused_naming_tool_and_field(prop, field):
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"n": prop}}},
        }
    ]
    with pytest.raises(CatalogueError) as info:
        Catalogue.from_openai(tools)
    assert f"tool 'lookup', field {field}: keyword 'x-toolroute-copy'" in str(info.value)
    assert "only a string property can be copied" in str(info.value)


def test_the_keyword_must_be_a_boolean_and_marks_in_reused_definitions_count_everywhere():
    bad = {"type": "object", "properties": {"s": {"type": "string", "x-toolroute-copy": "yes"}}}
    with pytest.raises(
        CatalogueError, match="tool 'f', field 's': keyword 'x-toolroute-copy': must be true or false"
    ):
        Catalogue.from_openai([{"name": "f", "parameters": bad}])
    shared = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/Place"}, "b": {"$ref": "#/$defs/Place"}},
        "$defs": {
            "Place": {"type": "object", "properties": {"city": {"type": "string", "x-toolroute-copy": True}}}
        },
    }
    catalogue = Catalogue.from_openai([{"name": "f", "parameters": shared}])
    assert catalogue.copy_marks == {"f": {"a.city": True, "b.city": True}}


def test_copied_entries_are_checked_against_the_catalogue():
    tools = Catalogue.from_tools([TrackOrder]).tools
    check_copied(tools, [CopiedArgument(tool="track_order", argument="note", source="declared")], "here")
    with pytest.raises(CatalogueError, match="here: tool 'track_order', field 'nope'"):
        check_copied(
            tools, [CopiedArgument(tool="track_order", argument="nope", source="inferred", share=1.0)], "here"
        )
    with pytest.raises(CatalogueError, match="no tool 'other'"):
        check_copied(tools, [CopiedArgument(tool="other", argument="x", source="config")], "here")


def test_an_optional_copied_argument_can_be_left_out_and_a_required_one_cannot():
    nested = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "ship": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        "required": ["id"],
    }
    tool = Catalogue.from_openai([{"name": "f", "parameters": nested}]).get("f")
    assert optional_ancestor(tool, "id") is None
    assert optional_ancestor(tool, "ship.city") == "ship"
    assert "ship" not in without_arguments(tool, ["ship"]).properties and "ship" in tool.properties
    rule = CopyRule(
        Catalogue((tool,)),
        (CopiedArgument(tool="f", argument="id", source="declared"),),
        GrammarOptions(),
    )
    fallback = rule.fall_back(("f",), frozenset(), "f", "ship.city")
    assert fallback.names == ("f",) and fallback.dropped == {("f", "ship")}
    assert rule.fall_back(("f",), frozenset(), "f", "id").names == ()
    assert '"ship"' not in rule.gbnf(fallback, no_tool=True).split("root ::=")[1]


# -- the byte-level rule ---------------------------------------------------------------------

LIMITS = {"track_order": {"order_id": FieldLimits(1, 64)}}


def _tracker(request: str, limits: dict[str, dict[str, FieldLimits]] = LIMITS) -> CopyTracker:
    tracker = CopyTracker(RequestText(request), limits)
    assert tracker.push(b'{"tool":"track_order","arguments":{"order_id":"')
    return tracker


def _spelled(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(REQUESTS, st.data())
def test_every_span_is_accepted_in_its_canonical_spelling(request, data):
    value = _span_of(request, data)
    tracker = _tracker(request)
    assert tracker.inside
    assert tracker.push(_spelled(value) + b'"}}')
    assert not tracker.inside and tracker.tool == "track_order"


@settings(max_examples=200, deadline=None)
@given(REQUESTS, st.text(alphabet=ALPHABET, min_size=1, max_size=6))
def test_a_value_that_is_not_a_span_is_refused(request, value):
    written = _tracker(request).push(_spelled(value) + b'"')
    assert written == is_span(value, request)


def test_spellings_other_than_the_canonical_one_and_empty_values_are_refused():
    request = 'say "hi" \\ now'
    assert _tracker(request).push(b'\\"hi\\""')
    assert not _tracker(request).push(b'\\u0022hi\\u0022"')  # the same text, not the same bytes
    assert not _tracker(request).push(b'"')  # empty
    assert not _tracker(request).push(b' say"')  # leading whitespace
    assert not _tracker(request).push(b'say "')  # trailing whitespace
    assert _tracker(request).push(b'\\\\"')  # the backslash itself
    # Outside copied values the rule has nothing to say.
    free = CopyTracker(RequestText(request), LIMITS)
    assert free.push(b'{"tool":"no_tool","reason":"anything at all"}')


def test_lengths_are_looked_ahead_so_a_capped_value_can_always_close():
    limits = {"track_order": {"order_id": FieldLimits(1, 4)}}
    tracker = _tracker("abc defgh", limits)
    assert not tracker.copy().push(b"abc ")  # "abc d" would be 5 code points: no end within 4
    assert tracker.copy().push(b'abc"') and tracker.copy().push(b'defg"')
    assert not tracker.copy().push(b'defgh"')
    short = {"track_order": {"order_id": FieldLimits(30, 64)}}
    opened = CopyTracker(RequestText("too short"), short)
    assert not opened.push(b'{"tool":"track_order","arguments":{"order_id":"')
    assert opened.dead_end == ("track_order", "order_id")


def _vocabulary(request: str, seed: int) -> list[bytes]:
    """A fake vocabulary: bytes, pieces of the request's spelling, closers and noise."""
    spelled = _spelled(request)
    rng = random.Random(seed)
    pieces = {bytes((b,)) for b in range(256)}
    for _ in range(60):
        start = rng.randrange(len(spelled))
        pieces.add(spelled[start : start + rng.randint(1, 6)])
        pieces.add(spelled[start : start + rng.randint(1, 3)] + rng.choice([b'"', b'"}', b'"}}', b'","']))
    pieces |= {b'"}}', b'","', b'"x', b"zz", b"\\u0022"}
    return sorted(pieces)


@settings(max_examples=60, deadline=None)
@given(REQUESTS, st.integers(0, 10_000))
def test_the_trie_walk_finds_every_token_the_rule_allows(request, seed):
    pieces = _vocabulary(request, seed)
    trie = PieceTrie(pieces)
    tracker = _tracker(request, {"track_order": {"order_id": FieldLimits(1, 8)}})
    rng = random.Random(seed)
    opening = b'{"tool":"track_order","arguments":{"order_id":'
    written = b'"'
    while tracker.inside:  # a random walk through what the rule allows, checking each step
        allowed = {token for token, piece in enumerate(pieces) if tracker.allows(piece)}
        assert allowed <= set(tracker.candidates(trie).tolist())
        assert allowed, "the rule never leaves a plain copied string without a way on"
        token = rng.choice(sorted(allowed))
        assert tracker.push(pieces[token])
        written += pieces[token]
    # What follows the closing quote is the grammar's business (this fake vocabulary has no grammar).
    value, _ = json.JSONDecoder().raw_decode((opening + written).decode("utf-8", "replace"), len(opening))
    assert is_span(value, request) and len(value) <= 8


def test_a_tracker_follows_nested_paths_arrays_and_escaped_keys():
    limits = {"f": {"place.city": FieldLimits(1, 20)}}
    tracker = CopyTracker(RequestText("to Paris, France"), limits)
    assert tracker.push(b'{"tool":"f","arguments":{"tags":["x","y"],"place":{"city":"')
    assert tracker.inside and tracker.cursor is not None and tracker.cursor.path == "place.city"
    assert not tracker.copy().push(b'London"')
    assert tracker.push(b'Paris"},"n":1}}') and not tracker.inside
