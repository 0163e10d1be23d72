"""The copy rule and the call score in the runtime, on the real vocabulary (the tiny random model).

The tiny model's choices are noise, so grammar- and rule-constrained greedy decoding over it is
a random walk through what the two allow: if any token outside a span were allowed, values that
are not spans would come out.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
import runtime_support
from hypothesis import given, settings
from hypothesis import strategies as st

from toolroute.grammars import NO_TOOL, Catalogue, CopiedArgument, GrammarOptions, is_span
from toolroute.runtime import decoding
from toolroute.runtime import router as router_module
from toolroute.runtime.copying import CopyTracker, FieldLimits, RequestText
from toolroute.runtime.decoding import Matcher, allowed_tokens
from toolroute.runtime.grammar_engine import Utf8Tracker
from toolroute.runtime.router import Router
from toolroute.runtime.router_file import RouterFileError, read_router_file, validate_router_kv
from toolroute.runtime.service import ChatService
from toolroute.runtime.thresholds import CallThreshold, NoToolThreshold

COPIED = tuple(
    CopiedArgument(tool=tool, argument="order_id", source=source, share=share, values=values)
    for tool, source, share, values in [
        ("track_order", "declared", None, None),
        ("request_refund", "inferred", 0.97, 120),
        ("escalate", "config", None, None),
    ]
)
OPTIONS = GrammarOptions(max_string_length=12, max_reason_length=6, max_array_items=2)
ALPHABET = 'aZ09 -#"\\\n\té中😀🎉/'
REQUESTS = st.text(alphabet=ALPHABET, min_size=1, max_size=30).filter(lambda t: t.strip())

# A catalogue whose copied arguments a request may have no span for.
PICKY = Catalogue.from_openai(
    [
        {
            "name": "lookup",
            "description": "Look up a product code.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
                "required": ["code"],
            },
        },
        {
            "name": "note",
            "description": "Save a long note.",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "minLength": 40, "maxLength": 60}},
                "required": ["text"],
            },
        },
    ]
)
PICKY_COPIED = (
    CopiedArgument(tool="lookup", argument="code", source="declared"),
    CopiedArgument(tool="note", argument="text", source="declared"),
)


@pytest.fixture(scope="module")
def copy_file(tmp_path_factory):
    return runtime_support.tiny_router_file(
        tmp_path_factory,
        "tiny-copied.gguf",
        **runtime_support.router_metadata(options=OPTIONS, copied=COPIED).model_dump(),
    )


@pytest.fixture(scope="module")
def router(copy_file) -> Iterator[Router]:
    with Router.load(copy_file, n_threads=1) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def picky(tmp_path_factory) -> Iterator[Router]:
    options = GrammarOptions(max_string_length=64, max_reason_length=6)
    metadata = runtime_support.router_metadata(PICKY, options=options, copied=PICKY_COPIED)
    path = runtime_support.tiny_router_file(tmp_path_factory, "tiny-picky.gguf", **metadata.model_dump())
    # The random model spreads its mass over 49k tokens: the required cut-off (made for trained
    # routers) would give up every value, and these tests are about which spans fit.
    with Router.load(path, n_threads=1, min_required_span_mass=0.0) as loaded:
        yield loaded


def _copied_values(result) -> list[str]:
    if result.call is None:
        return []
    return [result.call.arguments["order_id"]] if "order_id" in result.call.arguments else []


@settings(max_examples=25, deadline=None)
@given(REQUESTS)
def test_every_copied_value_the_router_writes_is_a_span_of_the_request(router, request):
    result = router.route(request)
    assert result.kind != "invalid", result.error
    for value in _copied_values(result):
        assert is_span(value, request.strip()), (value, request)


def test_without_the_copy_rule_values_are_not_spans(copy_file, router):
    requests = ["where is my order", "refund please", "I want a person", "order 1234 is late", "hello"]
    with Router.load(copy_file, n_threads=1, copy_rule=False) as plain:
        assert plain.copy_rule.limits == {} and router.copy_rule.limits
        free = [value for text in requests for value in _copied_values(plain.route(text))]
    assert free and any(not is_span(value, text) for value in free for text in requests)


def _walk(router: Router, request: str, text: str) -> None:
    """Feed `text`, spelled by the tokenizer, through the grammar and the copy rule."""
    vocabulary = router.vocabulary
    grammar = router._grammar(None)
    matcher = Matcher(vocabulary.llama, grammar.gbnf)
    tracker = CopyTracker(RequestText(request), router.copy_rule.limits)
    utf8 = Utf8Tracker()
    try:
        for token in vocabulary.spell(text.encode("utf-8")):
            piece = vocabulary.pieces[token]
            if tracker.inside:
                assert token in set(tracker.candidates(vocabulary.trie).tolist()), piece
            assert matcher.allows(token) and utf8.extends(piece) and tracker.allows(piece), piece
            matcher.accept(token)
            utf8.push(piece)
            assert tracker.push(piece)
        assert not tracker.inside
    finally:
        matcher.close()


@settings(max_examples=40, deadline=None)
@given(REQUESTS, st.data())
def test_every_span_is_reachable_in_the_tokenizers_own_spelling(router, request, data):
    request = request.strip()
    solid = [i for i, c in enumerate(request) if not c.isspace()]
    start = data.draw(st.sampled_from(solid))
    end = data.draw(st.sampled_from([i + 1 for i in solid if start < i + 1 <= start + 12]))
    value = request[start:end]
    call = {"tool": "track_order", "arguments": {"order_id": value}}
    _walk(router, request, json.dumps(call, ensure_ascii=False, separators=(",", ":")))


@pytest.mark.parametrize(
    ("tool", "request_text", "argument"),
    [("lookup", "hello there", "lookup.code"), ("note", "a short note", "note.text")],
)
def test_a_required_copied_argument_with_no_span_still_routes(picky, tool, request_text, argument):
    started = time.perf_counter()
    narrowed = picky.route(request_text, tools=[tool])
    assert narrowed.kind == "no_tool" and narrowed.no_span == [argument]
    required = picky.route(request_text, tools=[tool], no_tool=False)
    assert required.kind == "invalid" and "no span of the request fits" in (required.error or "")
    anything = picky.route(request_text)
    assert anything.kind in ("no_tool", "call", "low_confidence")
    assert time.perf_counter() - started < 30  # not a hang (each route is well under a second)


def test_a_span_that_fits_the_pattern_is_copied(picky):
    result = picky.route("is ABC-123 in stock", tools=["lookup"], no_tool=False)
    assert result.kind == "call" and result.call.arguments == {"code": "ABC-123"}


def test_copied_arguments_in_the_file_are_checked_and_the_plain_schema_still_loads(copy_file, router):
    router_file = read_router_file(copy_file)
    assert router_file.metadata.copied(router_file.catalogue) == COPIED
    kv = dict(router_file.kv)
    for entry, message in [
        ({"tool": "escalate", "argument": "nope", "source": "declared"}, "tool 'escalate', field 'nope'"),
        ({"tool": "nope", "argument": "x", "source": "declared"}, "no tool 'nope'"),
    ]:
        with pytest.raises(RouterFileError, match=message):
            validate_router_kv({**kv, "toolroute.copied_arguments": json.dumps([entry])}, "crafted")
    # The schema keyword is accepted wherever tools are compared, and changes nothing.
    marked = copy.deepcopy(router.catalogue.to_openai())
    marked[0]["function"]["parameters"]["properties"]["order_id"]["x-toolroute-copy"] = True
    with Router.load(copy_file, n_threads=1, tools=marked) as again:
        assert again.catalogue == router.catalogue and again.copy_rule.limits == router.copy_rule.limits
    service = ChatService(router, "m")
    body = {"model": "m", "messages": [{"role": "user", "content": "where is 12"}], "tools": marked[:1]}
    service.complete(body)  # no ApiError: the keyword does not make the tool differ


def _brute_logprob(matcher, utf8, vocabulary, logits, token, next_bytes=None, may_end=True, copy=None):
    """The definition, computed the slow way: softmax over every token allowed in the vocabulary."""
    ids, values = allowed_tokens(matcher, utf8, vocabulary, logits, vocabulary.all_ids, copy)
    assert token in set(ids.tolist())
    return float(logits[token]) - float(np.logaddexp.reduce(values.astype(np.float64)))


def test_the_call_score_is_the_constrained_log_probability_whatever_a_step_inspects(router, monkeypatch):
    requests = ["where is order 77", "refund #12 it broke", "get me a human", "hi"]
    fast = [router.route(text) for text in requests]
    monkeypatch.setattr(decoding, "TOP_K", (1, 2))  # the tiers a step masks first
    monkeypatch.setattr(router_module, "chosen_logprob", _brute_logprob)
    slow = [router.route(text) for text in requests]
    scored = 0
    for a, b in zip(fast, slow, strict=True):
        assert a.raw == b.raw and a.scored_tokens == b.scored_tokens
        if a.kind in ("call", "low_confidence"):
            scored += 1
            assert a.scored_tokens > 0 and a.scored_tokens < a.completion_tokens  # forced tokens excluded
            assert math.isclose(a.call_logprob, b.call_logprob, abs_tol=1e-4 * a.scored_tokens)
            assert math.isclose(a.min_token_logprob, b.min_token_logprob, abs_tol=1e-4)
            assert a.min_token_logprob <= 0 and a.call_logprob <= a.min_token_logprob
        else:
            assert a.call_logprob is None
    assert scored


def test_stored_rules_hold_calls_back_and_say_which(copy_file):
    texts = ["where is order 77", "refund #12 it broke", "get me a human"]
    never = CallThreshold(score="call_logprob", value=1.0)  # log-probabilities are never above 0
    with Router.load(copy_file, n_threads=1, call_threshold=never) as r:
        results = [r.route(text) for text in texts]
    calls = [res for res in results if res.call is not None]
    assert calls and all(res.kind == "low_confidence" and res.held_back_by == "call_score" for res in calls)
    assert "call_logprob" in (calls[0].error or "")
    rule = NoToolThreshold(score="no_tool_probability", value=0.0)
    with Router.load(copy_file, n_threads=1, no_tool_threshold=rule) as r:
        results = [r.route(text) for text in texts]
    calls = [res for res in results if res.call is not None]
    assert calls and all(res.held_back_by == "no_tool" and "abstained" in (res.error or "") for res in calls)
    assert all(NO_TOOL in res.probabilities for res in results)


def test_route_command_turns_the_copy_rule_off_on_request(copy_file, router, capsys):
    from toolroute.cli import main

    text = "order 1234 is late"
    with Router.load(copy_file, n_threads=1, copy_rule=False) as plain:
        expected_plain = plain.route(text).model_dump(mode="json")
    expected = router.route(text).model_dump(mode="json")
    assert expected["raw"] != expected_plain["raw"]  # so the flag is seen to act
    outputs = []
    for flags in ([], ["--no-copy-rule"]):
        assert main(["route", str(copy_file), text, "--threads", "1", *flags]) == 0
        outputs.append(json.loads(capsys.readouterr().out))

    def timeless(result: dict) -> dict:
        return {key: value for key, value in result.items() if key != "latency_ms"}

    assert [timeless(o) for o in outputs] == [timeless(expected), timeless(expected_plain)]


def test_the_tracker_gives_up_only_inside_an_optional_copied_value():
    field = FieldLimits(1, 12)
    limits = {"escalate": {"order_id": field}, "track_order": {"order_id": field}}
    optional = {"escalate": frozenset({"order_id"})}

    def opened(tool: str) -> CopyTracker:
        tracker = CopyTracker(RequestText("ORD-1 is late"), limits, optional, min_span_mass=0.1)
        assert tracker.push(f'{{"tool":"{tool}","arguments":{{"order_id":"'.encode())
        return tracker

    assert opened("escalate").gives_up(0.05) and not opened("escalate").gives_up(0.2)
    assert not opened("track_order").gives_up(0.0)  # required: a dead end would drop the tool instead
    begun = opened("escalate")
    assert begun.push(b"O") and begun.gives_up(0.05)  # where the span ends short of what it wanted
    assert begun.push(b'RD-1"') and not begun.gives_up(0.0)  # the value is closed
    outside = CopyTracker(RequestText("ORD-1 is late"), limits, optional, min_span_mass=0.1)
    assert outside.push(b'{"tool":"escalate","arguments":{') and not outside.gives_up(0.0)
    never = CopyTracker(RequestText("ORD-1 is late"), limits, optional)
    assert never.push(b'{"tool":"escalate","arguments":{"order_id":"') and not never.gives_up(0.0)


def test_a_required_copied_value_has_a_cut_off_of_its_own():
    field = FieldLimits(1, 12)
    limits = {"escalate": {"order_id": field}, "track_order": {"order_id": field}}
    optional = {"escalate": frozenset({"order_id"})}

    def opened(tool: str, required: float) -> CopyTracker:
        tracker = CopyTracker(RequestText("ORD-1 is late"), limits, optional, 0.1, required)
        assert tracker.push(f'{{"tool":"{tool}","arguments":{{"order_id":"'.encode())
        return tracker

    assert opened("track_order", 0.3).guarded and opened("track_order", 0.3).gives_up(0.2)
    assert not opened("track_order", 0.3).gives_up(0.4)
    assert not opened("track_order", 0.0).guarded  # off: a required value is never given up
    assert opened("escalate", 0.3).gives_up(0.05) and not opened("escalate", 0.3).gives_up(0.2)  # its own


def test_an_optional_copied_argument_the_model_gives_little_span_mass_is_left_out(copy_file):
    """The tiny model's probabilities are spread over 49k tokens, so the spans' mass at an opening
    is tiny: with a cut-off just under 1 every optional copied argument it opens is left out (and
    listed in `no_span`) and the call still routes; the required ones are still copied."""
    requests = [f"escalate ORD-{n} now, order {n}7 please" for n in range(12)]
    with (
        Router.load(copy_file, n_threads=1, min_span_mass=0.0) as never,
        Router.load(copy_file, n_threads=1, min_span_mass=0.999999, min_required_span_mass=0.0) as strict,
    ):
        opened = 0
        for request in requests:
            plain = never.route(request, tools=["escalate"], no_tool=False)
            given_up = strict.route(request, tools=["escalate"], no_tool=False)
            assert given_up.kind == "call" and "order_id" not in given_up.call.arguments
            if plain.call is not None and "order_id" in plain.call.arguments:
                opened += 1
                assert given_up.no_span == ["escalate.order_id"]
            required = strict.route(request, tools=["track_order"], no_tool=False)
            assert required.kind == "call" and is_span(required.call.arguments["order_id"], request)
        assert opened > 0  # the rule had something to leave out
    with pytest.raises(ValueError, match="min_span_mass"):
        Router.load(copy_file, n_threads=1, min_span_mass=1.0)


def test_a_required_copied_argument_the_model_gives_little_span_mass_drops_its_tool(copy_file):
    """With the required cut-off just under 1, the tiny model's spread-out probabilities give up
    every required value: its tool leaves the choice, so the request ends in no_tool, or in the
    invalid result when a call was demanded of that tool alone; never a hang, never a made-up span.
    Off (0) the same requests get their call."""
    requests = [f"track ORD-{n} please" for n in range(6)]
    with (
        Router.load(copy_file, n_threads=1, min_required_span_mass=0.0) as never,
        Router.load(copy_file, n_threads=1, min_required_span_mass=0.999999) as strict,
    ):
        for request in requests:
            plain = never.route(request, tools=["track_order"], no_tool=False)
            assert plain.kind == "call" and is_span(plain.call.arguments["order_id"], request)
            assert strict.route(request, tools=["track_order"]).kind == "no_tool"
            forced = strict.route(request, tools=["track_order"], no_tool=False)
            assert forced.kind == "invalid" and forced.call is None
    with pytest.raises(ValueError, match="min_required_span_mass"):
        Router.load(copy_file, n_threads=1, min_required_span_mass=1.0)


@pytest.mark.parametrize("command", ["route", "eval"])
def test_the_commands_pass_the_required_cut_off_to_the_router(command, copy_file, monkeypatch, tmp_path):
    from toolroute.cli import main

    seen: dict = {}

    class Loaded(Exception):
        pass

    def load(path, **options):
        seen.update(options)
        raise Loaded

    monkeypatch.setattr(Router, "load", staticmethod(load))
    data = tmp_path / "rows.jsonl"
    data.write_text('{"request": "track ORD-1", "tool": "track_order", "arguments": {"order_id": "ORD-1"}}\n')
    argv = {
        "route": ["route", str(copy_file), "track ORD-1"],
        "eval": ["eval", "--model", str(copy_file), "--data", str(data)],
    }[command]
    with pytest.raises(Loaded):
        main([*argv, "--min-required-span-mass", "0.25"])
    assert seen["min_required_span_mass"] == 0.25
    seen.clear()
    with pytest.raises(Loaded):
        main(argv)
    assert "min_required_span_mass" not in seen  # the runtime's default
    if command == "eval":  # name focus: the runtime's default, and off on request
        assert seen["name_focus"] is True
        seen.clear()
        with pytest.raises(Loaded):
            main([*argv, "--no-name-focus"])
        assert seen["name_focus"] is False
