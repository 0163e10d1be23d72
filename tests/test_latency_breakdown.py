"""The latency breakdown (`python -m toolroute.bench.latency breakdown`) on the tiny random router.

The timers wrap the runtime from the outside; these tests pin what the breakdown must mean: each
nested call charged once, to the right category; counts that agree with what the router reports;
the runtime restored afterwards; a renamed seam failing loudly instead of reporting zeros.
"""

from __future__ import annotations

import json
import math

import pytest
import runtime_support

from toolroute.bench import latency_seams as seams
from toolroute.bench.latency_breakdown import (
    CATALOGUES,
    RouterConfig,
    WorkerSpec,
    parse_config,
    run_catalogue,
)
from toolroute.bench.latency_report import (
    BreakdownResults,
    ConfigRun,
    request_counts,
    summarise,
    write_results,
)
from toolroute.bench.latency_seams import (
    CALL_SCORE,
    CATEGORIES,
    CONFIDENCE,
    COPY,
    DECODE,
    FORCED,
    MASKS,
    MODEL_BATCH,
    OVERHEAD,
    PICK,
    PREPARE,
    PROMPT,
    Profiler,
    RequestBreakdown,
    Seam,
    SeamMissingError,
    SeamNotReachedError,
    instrumented,
    required_categories,
)
from toolroute.bench.measure import NaiveRunner
from toolroute.grammars import CopiedArgument
from toolroute.runtime.decoding import Matcher
from toolroute.runtime.grammar_engine import GrammarMatcher
from toolroute.runtime.router import Router

REQUESTS = ["where is ORD-1?", "refund ORD-2, it arrived broken", "I want to talk to a manager", "hello!"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return runtime_support.tiny_router_file(tmp_path_factory)


def _routed(path, **options):
    """[(plain result, timed result, breakdown)] for every request on a router with `options`,
    after checking that the run reached every category this router must reach."""
    rows = []
    profiler = Profiler()
    with Router.load(path, n_threads=1, **options) as router:
        for text in REQUESTS:
            plain = router.route(text)
            with instrumented(profiler):
                timed = router.route(text)
            rows.append((plain, timed, profiler.requests[-1]))
        required = required_categories(router)
    profiler.require(required)
    return rows, profiler, required


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, ms: float) -> None:
        self.now += ms / 1000.0


def test_nested_timers_charge_each_category_once():
    """A fake clock, fake seams: exclusive time per frame, claimed children kept by the claimer,
    the first unclaimed model batch is the prompt and later ones are decode steps."""
    clock = _Clock()
    profiler = Profiler(clock=clock)
    route = Seam("m", "Router", "route", OVERHEAD, root=True)
    batch = Seam(
        "m", "Context", "decode", MODEL_BATCH, claims=True, count=lambda a, k, r: {"tokens": len(a[0])}
    )
    mask = Seam("m", "Matcher", "mask", MASKS)
    score = Seam("m", "NameScorer", "score", CONFIDENCE, claims=True)

    def spend(ms):
        return lambda *args: clock.tick(ms)

    timed_mask = profiler.wrap(mask, spend(1))
    timed_batch = profiler.wrap(batch, spend(10))

    def scoring():
        clock.tick(2)
        timed_mask()
        timed_batch([7, 8])  # an extra decode inside confidence: confidence time, not a decode step

    timed_score = profiler.wrap(score, scoring)

    def decoding():
        timed_batch([1, 2, 3])  # the prompt
        timed_mask()
        timed_score()
        timed_batch([4])  # a decode step

    timed_decoding = profiler.wrap(Seam("m", "Router", "_generate", OVERHEAD, generation=True), decoding)

    def routing():
        clock.tick(3)
        timed_decoding()
        timed_decoding()  # decoding again from the prompt (after a copy-rule dead end)
        clock.tick(4)

    timed_mask()  # outside a request: passes through untimed
    profiler.wrap(route, routing)()
    (row,) = profiler.requests
    assert row.ms[OVERHEAD] == pytest.approx(7)
    assert row.ms[PROMPT] == pytest.approx(20)
    assert row.ms[DECODE] == pytest.approx(20)
    assert row.ms[MASKS] == pytest.approx(2)
    assert row.ms[CONFIDENCE] == pytest.approx(2 * (2 + 1 + 10))
    assert row.total_ms == pytest.approx(75) == pytest.approx(sum(row.ms.values()))
    assert row.calls(CONFIDENCE, "Matcher.mask") == 2 and row.calls(MASKS, "Matcher.mask") == 2
    assert row.counters == {"prompt.tokens": 6, "confidence.tokens": 4, "decode.tokens": 2}


def test_the_breakdown_of_a_route_adds_up_and_counts_what_the_router_did(tiny_path):
    rows, _, required = _routed(tiny_path)
    assert {FORCED, CALL_SCORE} <= required
    for plain, timed, row in rows:
        assert timed.raw == plain.raw  # the timers change nothing but the time
        assert set(row.ms) == set(CATEGORIES) and all(ms >= 0.0 for ms in row.ms.values())
        assert sum(row.ms.values()) == pytest.approx(row.total_ms, rel=1e-9)
        # The wrapper's clock encloses the router's own: no time lost or invented.
        assert row.route_latency_ms <= row.total_ms <= row.route_latency_ms + 2.0 + 0.05 * row.total_ms
        counts = request_counts(row)
        # Every token the output holds went through the greedy loop's accept exactly once...
        assert row.calls(MASKS, "Matcher.advance") == row.completion_tokens
        # ...and every model batch (the prompt, then each decode step) ended in one greedy pick.
        assert row.calls(PROMPT, "Context.extend") == 1
        assert counts["picks"] == 1 + counts["decode_steps"]
        assert counts["prompt_batch_tokens"] >= counts["uncached_prompt_tokens"] > 0
        assert counts["forced_tokens"] > 0 and counts["forced_bytes"] >= counts["forced_tokens"]
        assert counts["decode_steps"] < row.completion_tokens  # forced tokens ride along, undecoded


def test_without_fast_forward_every_token_is_a_model_step(tiny_path):
    rows, profiler, required = _routed(tiny_path, fast_forward=False, call_score=False)
    assert FORCED not in required and CALL_SCORE not in required
    for plain, timed, row in rows:
        assert timed.raw == plain.raw
        counts = request_counts(row)
        ended = row.counters.get(f"{PICK}.end", 0)
        assert counts["forced_tokens"] == 0 and counts["forced_bytes"] == 0 and row.ms[FORCED] == 0.0
        assert counts["decode_steps"] == row.completion_tokens + ended - 1
        assert row.ms[CALL_SCORE] == 0.0
    with pytest.raises(SeamNotReachedError, match="forced"):
        profiler.require({FORCED})


def test_the_copy_rule_gets_its_own_time(tmp_path_factory):
    """A router with a copied argument: the span tracking is timed as the copy rule, and the
    greedy loop's invariants still hold."""
    copied = (CopiedArgument(tool="track_order", argument="order_id", source="declared"),)
    metadata = runtime_support.router_metadata(copied=copied).model_dump()
    path = runtime_support.tiny_router_file(tmp_path_factory, "tiny-copied-breakdown.gguf", **metadata)
    rows, _, required = _routed(path)
    assert COPY in required
    for plain, timed, row in rows:
        assert timed.raw == plain.raw
        assert sum(row.ms.values()) == pytest.approx(row.total_ms, rel=1e-9)
        if request_counts(row)["generations"] == 1:  # no dead end: one decoding from the prompt
            assert row.calls(MASKS, "Matcher.advance") == row.completion_tokens
    assert any(row.ms[COPY] > 0 for _, _, row in rows)


def test_the_runtime_is_restored_after_timing():
    before = {name: vars(Matcher).get(name) for name in ("mask", "probe", "advance")}
    with instrumented(Profiler()):
        assert Matcher.mask is not GrammarMatcher.mask
    assert Matcher.mask is GrammarMatcher.mask and "mask" not in vars(Matcher)  # inherited again
    assert {name: vars(Matcher).get(name) for name in before} == before


def test_a_renamed_seam_fails_loudly():
    gone = Seam("toolroute.runtime.decoding", "Matcher", "probe_bytes", MASKS)
    with (
        pytest.raises(SeamMissingError, match=r"Matcher\.probe_bytes"),
        instrumented(Profiler(), [*seams.SEAMS, gone]),
    ):
        pass
    assert Matcher.mask is GrammarMatcher.mask  # the seams patched before it were put back
    with pytest.raises(SeamNotReachedError, match=r"confidence.*NameScorer\.score"):
        Profiler().require({CONFIDENCE})


def test_run_catalogue_compares_configurations_and_writes_the_report(tiny_path, tmp_path):
    spec = WorkerSpec(
        catalogue="customer-support",
        router=tiny_path,
        router_label=tiny_path.name,
        requests=CATALOGUES["customer-support"].requests,
        limit=3,
        threads=1,
        configs=[parse_config("on"), parse_config("off:fast_forward=false,cache_prefix=false")],
        naive=True,
    )
    run = run_catalogue(spec, "customer support")
    assert [c.label for c in run.configs] == ["on", "off"] and run.tools == 3
    off = run.configs[1]
    assert off.options == {"fast_forward": False, "cache_prefix": False} and FORCED not in off.required
    assert all(c.same_output == 3 and len(c.requests) == 3 for c in run.configs)
    # Without the prefix cache the whole prompt is evaluated per request.
    assert all(row.cached_tokens == 0 for row in off.requests)
    assert run.naive is not None and len(run.naive.latencies_ms) == 3
    summary = summarise(run.configs[0])
    assert sum(s.share for s in summary.categories.values()) == pytest.approx(1.0)
    assert summary.per_step["ms per decode step"] > 0 and summary.per_step["ms per forced byte"] > 0

    results = BreakdownResults(command="test", machine="test", threads=1, date="today", catalogues=[run])
    write_results(results, tmp_path)
    assert BreakdownResults.model_validate_json((tmp_path / "breakdown.json").read_text()) == results
    table = (tmp_path / "BREAKDOWN.md").read_text()
    assert "on: median ms" in table and "off: median ms" in table and "grammar masks" in table
    assert (tmp_path / "breakdown.png").read_bytes()[:4] == b"\x89PNG"


def test_every_median_of_the_report_is_the_nearest_rank_p50():
    """A median beside a p50 in the same table is one statistic (`metrics.percentile`): of two
    requests it is the first's value, never the mean of the two (which no request had)."""
    rows = [
        RequestBreakdown(
            total_ms=ms + 1.0, ms={DECODE: ms, OVERHEAD: 1.0}, seams={}, counters={}, prompt_tokens=tokens
        )
        for ms, tokens in ((30.0, 8), (10.0, 4))
    ]
    plain = [31.0, 11.0]
    run = ConfigRun(
        label="x", options={}, load_s=0.0, required=[], plain_ms=plain, plain_wall_ms=plain, same_output=2,
        requests=rows,
    )  # fmt: skip
    summary = summarise(run)
    assert summary.categories[DECODE].median_ms == 10.0  # statistics.median: 20
    assert summary.medians["prompt_tokens"] == 4 and summary.categories[PREPARE].count == 4  # not 6
    assert summary.timed_p50_ms == summary.plain_p50_ms == 11.0


def test_config_options_parse_as_json_else_text():
    parsed = parse_config("x:fast_forward=false,n_ctx=2048,route.no_tool=false,tag=a b")
    assert parsed == RouterConfig(
        label="x",
        options={"fast_forward": False, "n_ctx": 2048, "tag": "a b"},
        route_options={"no_tool": False},
    )
    with pytest.raises(Exception, match="not key=value"):
        parse_config("x:fast_forward")


def test_an_option_the_router_does_not_take_is_refused_before_loading(tiny_path):
    spec = WorkerSpec(
        catalogue="customer-support",
        router=tiny_path,
        router_label="tiny",
        requests=CATALOGUES["customer-support"].requests,
        limit=1,
        threads=1,
        configs=[parse_config("typo:route.no_tools=false")],
        naive=False,
    )
    with pytest.raises(SystemExit, match=r"Router\.route takes no no_tools"):
        run_catalogue(spec, "customer support")


def test_the_naive_runner_routes_with_the_checked_grammar(tiny_path):
    with NaiveRunner(tiny_path, 1) as runner:
        done = runner.complete("where is ORD-1?")
    assert runner.catalogue.parse(done.content) is not None  # the catalogue's grammar held
    assert done.completion_tokens > 0 and math.isfinite(done.latency_ms)
    assert json.loads(done.content)["tool"] in [*runner.catalogue.names, "no_tool"]
