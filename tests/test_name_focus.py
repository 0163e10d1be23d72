"""Name focus (issue 15, item 3): the names' probabilities read once the name is written, exactly
for the chosen tool and no_tool, along the greedy decoding's own logits.

The rules read only those two (`thresholds.py`), so they must match what the full scorer gives,
to `NAME_TOLERANCE`; every other name's value is a lower bound, short of the full scorer's by at
most `unresolved_mass`; and scoring must cost fewer model batches than the full scorer's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import runtime_support

from toolroute.grammars import NO_TOOL, Catalogue, GrammarOptions
from toolroute.runtime import router as router_module
from toolroute.runtime.confidence import NAME_TOLERANCE
from toolroute.runtime.drafting import Lookahead
from toolroute.runtime.results import RouteResult
from toolroute.runtime.router import Router

# Names that share long prefixes, as HWU64's do (`play_`, `music_`): the scorer must branch.
NAMES = ("play_music", "play_radio", "play_podcasts", "play_audiobook", "music_query", "music_likeness")
REQUESTS = ["play some jazz", "what song is this", "put on the radio", "do I like this", "hello there"]
ROUNDING = 2e-2  # as in test_fast_path_parity: a wide batch's logits against one-token steps


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory):
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
        for name in NAMES
    ]
    metadata = runtime_support.router_metadata(Catalogue.from_openai(tools))
    return runtime_support.cached_file(
        tmp_path_factory, "prefixes-real.gguf", lambda p: runtime_support.build_router_file(p, metadata)
    )


def assert_focused_matches(focused: RouteResult, full: RouteResult) -> None:
    assert (focused.kind, focused.raw) == (full.kind, full.raw)
    assert full.unresolved_mass == 0.0 and 0.0 <= focused.unresolved_mass <= 1.0
    exact = {name for name in (focused.tool, NO_TOOL) if name in full.probabilities}
    for name, p in full.probabilities.items():
        q = focused.probabilities[name]
        if name in exact:
            assert math.isclose(q, p, abs_tol=NAME_TOLERANCE), (focused.raw, name, q, p)
        else:  # a lower bound, short by at most the unsplit mass
            assert q <= p + NAME_TOLERANCE and p - q <= focused.unresolved_mass + NAME_TOLERANCE, (name, q, p)
    if focused.confidence is not None:
        assert full.confidence is not None
        assert math.isclose(focused.confidence, full.confidence, abs_tol=NAME_TOLERANCE)
    if focused.runner_up is not None:  # named only when no unsplit mass could overtake it
        best = max(p for name, p in full.probabilities.items() if name != focused.tool)
        assert full.probabilities[focused.runner_up.tool] >= best - NAME_TOLERANCE


def test_name_focus_gives_the_rules_the_full_scorers_values_in_fewer_batches(prefixes):
    counts = {True: [0, 0, 0], False: [0, 0, 0]}  # decodes, branches, branches reused
    original = router_module.NameScorer.score

    def counting(self, *args, **kwargs):
        scores = original(self, *args, **kwargs)
        focused = kwargs.get("focus", args[6] if len(args) > 6 else None) is not None
        for index, value in enumerate((scores.decodes, sum(scores.levels), scores.reused)):
            counts[focused][index] += value
        return scores

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(router_module.NameScorer, "score", counting)
        with (
            Router.load(prefixes, n_threads=1) as focused,
            Router.load(prefixes, n_threads=1, name_focus=False) as full,
        ):
            assert focused.name_focus and not full.name_focus
            for request in REQUESTS:
                for no_tool in (True, False):
                    assert_focused_matches(
                        focused.route(request, no_tool=no_tool), full.route(request, no_tool=no_tool)
                    )
    print(f"focused: {counts[True]}, full: {counts[False]} (decodes, branches, reused)")
    assert counts[True][0] < counts[False][0]  # fewer model batches
    assert counts[True][2] > 0  # some branches came from the greedy decoding's own logits
    assert counts[False][2] == 0  # the full scorer runs at the decision point: nothing to reuse


def test_a_decoding_again_that_chooses_another_tool_is_scored_again(tmp_path_factory):
    """A copy-rule dead end decodes again without the tool; the names read the first time were
    focused on that tool, so the tool chosen the second time is read again under the first
    grammar, and its confidence is the full scorer's."""
    from test_copied_decoding import PICKY, PICKY_COPIED

    options = GrammarOptions(max_string_length=64, max_reason_length=6)
    metadata = runtime_support.router_metadata(PICKY, options=options, copied=PICKY_COPIED)
    path = runtime_support.tiny_router_file(tmp_path_factory, "tiny-picky.gguf", **metadata.model_dump())
    rescored = []
    original = Router._score_forced

    def counting(self, slot, grammar, tokens, branch_seqs, focus=None):
        rescored.append(focus)
        return original(self, slot, grammar, tokens, branch_seqs, focus)

    # Each request has a 40-60 character span for a note and no product code: a first try of
    # `lookup` dead-ends, and the request is decoded again with `note` alone.
    requests = [
        "please remember that the meeting moved to thursday at noon",
        "write down that the plumber comes on monday before lunch",
        "note that the car needs new tyres before the winter starts",
    ]
    settings = {"n_threads": 1, "min_required_span_mass": 0.0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Router, "_score_forced", counting)
        with (
            Router.load(path, **settings) as focused,
            Router.load(path, name_focus=False, **settings) as full,
        ):
            for request in requests:
                a, b = focused.route(request, no_tool=False), full.route(request, no_tool=False)
                assert a.kind == "call", (request, a.raw)
                assert_focused_matches(a, b)
    assert any(focus is not None for focus in rescored), "no decoding again changed the tool"


def test_the_rows_of_a_name_batch_are_the_logits_of_plain_steps(prefixes):
    with Router.load(prefixes, n_threads=1) as router, router.contexts.acquire() as slot:
        context = slot.context
        tokens = router.vocabulary.tokenize("play some music on the radio", special=False)
        try:
            lookahead = Lookahead(context, 1, 0)
            pending = list(tokens)
            rows = lookahead.logits_rows(pending)
            assert not pending and lookahead.position == len(tokens) and len(rows) == len(tokens)
            for index in (0, len(tokens) // 2, len(tokens) - 1):
                plain = None
                for position, token in enumerate(tokens[: index + 1]):
                    plain = context.extend([token], 2, position)
                context.seq_rm(2)
                assert plain is not None and rows[index] is not None
                np.testing.assert_allclose(rows[index], plain, atol=ROUNDING * 10)
                assert int(np.argmax(rows[index])) == int(np.argmax(plain))
        finally:
            context.seq_rm(1)
            context.seq_rm(2)


def test_the_parity_bench_compares_focus_on_and_off(prefixes, tmp_path):
    from toolroute.bench.name_focus_parity import main

    data = tmp_path / "requests.jsonl"
    call = {"id": "call_0", "type": "function", "function": {"name": "play_music", "arguments": "{}"}}
    rows = [
        {"messages": [{"role": "user", "content": text}, {"role": "assistant", "tool_calls": [call]}]}
        for text in REQUESTS
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "parity.json"
    main([str(prefixes), "--data", str(data), "--requests", "3", "--threads", "1", "--out", str(out)])
    found = json.loads(out.read_text())
    assert found["requests"] == 3 and len(found["rows"]) == 3 and len(found["ms"]["focus"]) == 3
    assert found["same_answers"] == 3 and found["lower_bounds_ok"] == 3
    assert found["max_no_tool_gap"] <= found["tolerance"] and found["max_tool_gap"] <= found["tolerance"]
