"""Timers around the runtime's seams, for `python -m toolroute.bench.latency breakdown`.

The runtime is measured from the outside, in the benchmark process: `instrumented(profiler)`
swaps the functions and methods listed in `SEAMS` for timed wrappers for the length of a `with`
block and puts the originals back afterwards. `SEAMS` is the one place that knows the runtime's
internals. A seam that is gone fails when it is patched (`SeamMissingError`, naming it), and a
category that a run never reached fails `Profiler.require` (naming the seams that feed it): a
rename in the runtime breaks the benchmark loudly, never a table of zeros.

Attribution. Each wrapped call is a frame on a stack; a frame's exclusive time (its own time
minus its wrapped children's) goes to its category, so nested timers never count twice, and the
categories plus the root's exclusive time (Python overhead: everything in `Router.route` no seam
covers) add up to the request's total. A seam that *claims* its children keeps their time in its
own category: the scorer's masks and extra decodes are confidence work, a forced-byte probe's
masks are forced-byte work, a model batch's logits copy is model time. Claimed children are still
counted (not timed: no clock reads inside a claimed frame), per category and seam, so the
breakdown can say how many masks or decodes each category spent. One thread at a time (the
benchmark routes sequentially).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

# Categories, in report order.
PREPARE = "prepare"  # Router.prepare: chat template, tokenization, the budget check
PROMPT = "prompt"  # the request's first model batch: its uncached prompt tokens
DECODE = "decode"  # every later model batch: one per token the model chooses
MASKS = "masks"  # llama.cpp grammar matcher work of the greedy loop: probe, mask, accept, clone
PICK = "pick"  # pick_greedy outside its masks: ranking the logits into top-k tiers
FORCED = "forced"  # forced_bytes (a matcher clone and a probe per byte) and spelling the bytes
CONFIDENCE = "confidence"  # NameScorer.score and the teacher-forced fallback, masks and decodes included
CALL_SCORE = "call score"  # chosen_logprob: each chosen token's log-probability, masks included
COPY = "copy rule"  # the copied-arguments tracker: per-request set-up, span checks, span candidates
OVERHEAD = "overhead"  # the rest of Router.route: Python glue, output parsing and validation
CATEGORIES = (PREPARE, PROMPT, DECODE, MASKS, PICK, FORCED, CONFIDENCE, CALL_SCORE, COPY, OVERHEAD)
LABELS = {
    PREPARE: "prompt rendering + tokenization",
    PROMPT: "prompt evaluation",
    DECODE: "model decode steps",
    MASKS: "grammar masks",
    PICK: "greedy pick (logit ranking)",
    FORCED: "forced-byte probing + spelling",
    CONFIDENCE: "confidence branches",
    CALL_SCORE: "call score (chosen-token log-probs)",
    COPY: "copy rule (request spans)",
    OVERHEAD: "Python overhead (the rest)",
}
# A model batch is prompt evaluation when it is the request's first, a decode step afterwards.
MODEL_BATCH = "model batch"

_INHERITED = object()  # a method the patched class inherits: restored by deleting the patch
_RAISED = object()  # the wrapped call raised: nothing to count
_ROUTER = "toolroute.runtime.router"
_DECODING = "toolroute.runtime.decoding"
_CONFIDENCE = "toolroute.runtime.confidence"
_COPY_RULE = "toolroute.runtime.copy_rule"
_COPYING = "toolroute.runtime.copying"


def _batch_tokens(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> dict[str, int]:
    return {"tokens": len(kwargs.get("tokens", args[1]))}  # Context.extend/decode(self, tokens, ...)


def _forced_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> dict[str, int]:
    span, _ = result  # forced_bytes(...) -> (bytes, choice_follows)
    return {"bytes": len(span)}


def _end_token(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> dict[str, int]:
    vocabulary = kwargs.get("vocabulary", args[2])  # pick_greedy(matcher, utf8, vocabulary, logits, ...)
    return {"end": int(vocabulary.is_eog(result))}


Counting = Callable[[tuple[Any, ...], dict[str, Any], Any], dict[str, int]]


@dataclass(frozen=True)
class Seam:
    """One function or method wrapped with a timer: `module.owner.name` (owner None: a module
    function, patched in the module that calls it, since `from x import f` copies the name)."""

    module: str
    owner: str | None
    name: str
    category: str
    claims: bool = False  # wrapped calls inside it are counted in its category, not timed apart
    root: bool = False  # a request: the frame every other one nests in
    generation: bool = False  # a decoding from the prompt on: its first model batch is prompt evaluation
    count: Counting | None = None  # counters read from the call (tokens in a batch, bytes forced)

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}" if self.owner else self.name


SEAMS: tuple[Seam, ...] = (
    Seam(_ROUTER, "Router", "route", OVERHEAD, root=True),
    # A copy-rule dead end decodes again from the prompt (a second prompt evaluation).
    Seam(_ROUTER, "Router", "_generate", OVERHEAD, generation=True),
    Seam(_ROUTER, "Router", "prepare", PREPARE, claims=True),
    # Every llama_decode goes through Context.decode; extend adds the logits copy around it.
    Seam(_DECODING, "Context", "extend", MODEL_BATCH, claims=True),
    # A batch carrying a drafted copied value (drafting.py): one decode step, several rows of logits.
    Seam(_DECODING, "Context", "extend_rows", MODEL_BATCH, claims=True),
    Seam(_DECODING, "Context", "decode", MODEL_BATCH, claims=True, count=_batch_tokens),
    # Matcher inherits mask/accept/close from GrammarMatcher; they are patched on Matcher.
    Seam(_DECODING, "Matcher", "mask", MASKS),
    Seam(_DECODING, "Matcher", "probe", MASKS),
    Seam(_DECODING, "Matcher", "advance", MASKS),
    Seam(_DECODING, "Matcher", "accept", MASKS),
    Seam(_DECODING, "Matcher", "clone", MASKS),
    Seam(_DECODING, "Matcher", "close", MASKS),
    Seam(_ROUTER, None, "pick_greedy", PICK, count=_end_token),
    Seam(_ROUTER, None, "forced_bytes", FORCED, claims=True, count=_forced_bytes),
    Seam(_DECODING, "Vocabulary", "spell", FORCED, claims=True),
    Seam(_CONFIDENCE, "NameScorer", "score", CONFIDENCE, claims=True),
    Seam(_ROUTER, "Router", "_score_forced", CONFIDENCE, claims=True),
    Seam(_ROUTER, None, "chosen_logprob", CALL_SCORE, claims=True),
    Seam(_COPY_RULE, "CopyRule", "tracker", COPY, claims=True),
    Seam(_COPYING, "CopyTracker", "allows", COPY, claims=True),
    Seam(_COPYING, "CopyTracker", "push", COPY, claims=True),
    Seam(_COPYING, "CopyTracker", "candidates", COPY, claims=True),
)


def required_categories(router: Any) -> set[str]:
    """The categories every run of this router must reach: forced bytes with the fast-forward on,
    the call score when it is computed, the copy rule when the router has copied arguments, and
    decode steps unless no_tool answers stop at their name (`no_tool_reason=False`)."""
    required = {PREPARE, PROMPT, MASKS, PICK, CONFIDENCE}
    if router.no_tool_reason:  # without the reason, a no_tool needs no decode step
        required.add(DECODE)
    if router.fast_forward:
        required.add(FORCED)
    if router.call_score:
        required.add(CALL_SCORE)
    if router.copy_rule.limits:
        required.add(COPY)
    return required


class SeamMissingError(RuntimeError):
    """A seam named in SEAMS is not in the runtime any more (renamed or moved)."""


class SeamNotReachedError(RuntimeError):
    """A category a run must reach got no time: its seams are no longer called."""


class SeamTime(BaseModel):
    calls: int = 0
    ms: float = 0.0  # exclusive time


class RequestBreakdown(BaseModel):
    """Where one `Router.route` call spent its time."""

    total_ms: float  # the route call, timed by its wrapper
    route_latency_ms: float | None = None  # the router's own clock (RouteResult.latency_ms)
    ms: dict[str, float]  # per category, OVERHEAD included; adds up to total_ms
    seams: dict[str, dict[str, SeamTime]]  # category -> seam label -> calls and exclusive time
    counters: dict[str, int]  # "category.counter" (decode.tokens, forced.bytes, pick.end, ...)
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    kind: str | None = None
    raw: str | None = None

    def calls(self, category: str, seam: str) -> int:
        stat = self.seams.get(category, {}).get(seam)
        return stat.calls if stat else 0


@dataclass
class _Frame:
    category: str
    claimed: str | None  # the category this frame's wrapped children are charged to, if claimed
    start: float
    children: float = 0.0


@dataclass
class _Request:
    prompt_pending: bool = True
    seams: defaultdict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0.0])
    )
    counters: Counter[str] = field(default_factory=Counter)


class Profiler:
    """Collects one `RequestBreakdown` per routed request while `instrumented` is active."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.requests: list[RequestBreakdown] = []
        self._request: _Request | None = None
        self._stack: list[_Frame] = []

    def wrap(self, seam: Seam, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            return self._call(seam, original, args, kwargs)

        return timed

    def _call(
        self, seam: Seam, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._request is None:
            if not seam.root:
                return original(*args, **kwargs)  # outside a request (loading, warm-up)
            self._request = _Request()
        request = self._request
        parent = self._stack[-1] if self._stack else None
        if parent is not None and parent.claimed:
            return self._claimed(parent.claimed, seam, original, args, kwargs)
        if seam.generation:
            request.prompt_pending = True
        category = self._category(seam, request)
        frame = _Frame(category, category if seam.claims else None, self.clock())
        self._stack.append(frame)
        result: Any = _RAISED
        try:
            result = original(*args, **kwargs)
            return result
        finally:
            elapsed = self.clock() - frame.start
            self._stack.pop()
            stat = request.seams[(category, seam.label)]
            stat[0] += 1
            stat[1] += elapsed - frame.children
            if parent is not None:
                parent.children += elapsed
            if seam.count is not None and result is not _RAISED:
                for name, value in seam.count(args, kwargs, result).items():
                    request.counters[f"{category}.{name}"] += value
            if seam.root:
                self._finish(request, elapsed, None if result is _RAISED else result)

    def _claimed(
        self,
        category: str,
        seam: Seam,
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """A call inside a claiming frame: its time is the claimer's; it is only counted (no
        clock reads: the call score checks thousands of tokens a step)."""
        assert self._request is not None
        result = original(*args, **kwargs)
        self._request.seams[(category, seam.label)][0] += 1
        if seam.count is not None:
            for name, value in seam.count(args, kwargs, result).items():
                self._request.counters[f"{category}.{name}"] += value
        return result

    @staticmethod
    def _category(seam: Seam, request: _Request) -> str:
        if seam.category != MODEL_BATCH:
            return seam.category
        if request.prompt_pending:
            request.prompt_pending = False
            return PROMPT
        return DECODE

    def _finish(self, request: _Request, total_s: float, result: Any) -> None:
        self._request = None
        ms = dict.fromkeys(CATEGORIES, 0.0)
        seams: dict[str, dict[str, SeamTime]] = defaultdict(dict)
        for (category, label), (calls, seconds) in request.seams.items():
            ms[category] += seconds * 1000.0
            seams[category][label] = SeamTime(calls=int(calls), ms=seconds * 1000.0)
        fields: dict[str, Any] = {}
        if result is not None:  # a RouteResult (None when the route raised)
            fields = {
                "route_latency_ms": result.latency_ms,
                "prompt_tokens": result.prompt_tokens,
                "cached_tokens": result.cached_tokens,
                "completion_tokens": result.completion_tokens,
                "kind": result.kind,
                "raw": result.raw,
            }
        self.requests.append(
            RequestBreakdown(
                total_ms=total_s * 1000.0, ms=ms, seams=dict(seams), counters=dict(request.counters), **fields
            )
        )

    def require(self, categories: set[str], requests: Sequence[RequestBreakdown] | None = None) -> None:
        """Raise unless every category got time in at least one of `requests` (default: all)."""
        rows = self.requests if requests is None else requests
        reached = {category for row in rows for category, stat in row.seams.items() if stat}
        if missing := sorted(set(categories) - reached):
            feeding = {c: [s.label for s in SEAMS if s.category == _feeding(c)] for c in missing}
            raise SeamNotReachedError(
                f"no time in {', '.join(missing)} over {len(rows)} routed requests: the runtime no longer "
                f"calls {feeding} (update SEAMS in bench/latency_seams.py)"
            )


def _feeding(category: str) -> str:
    return MODEL_BATCH if category in (PROMPT, DECODE) else category


def _resolve(seam: Seam) -> tuple[Any, Callable[..., Any]]:
    try:
        module = importlib.import_module(seam.module)
        owner = getattr(module, seam.owner) if seam.owner else module
        original = getattr(owner, seam.name)
    except (ImportError, AttributeError) as exc:
        raise SeamMissingError(
            f"{seam.module}.{seam.label} is gone ({exc}): update SEAMS in bench/latency_seams.py"
        ) from None
    if not inspect.isfunction(original):
        raise SeamMissingError(f"{seam.module}.{seam.label} is not a plain function or method any more")
    return owner, original


@contextmanager
def instrumented(profiler: Profiler, seams: Sequence[Seam] = SEAMS) -> Iterator[Profiler]:
    """Every seam wrapped with the profiler's timer inside the block; the originals after it."""
    restore: list[tuple[Any, str, Any]] = []
    try:
        for seam in seams:
            owner, original = _resolve(seam)
            own = vars(owner).get(seam.name, _INHERITED)
            setattr(owner, seam.name, profiler.wrap(seam, original))
            restore.append((owner, seam.name, own))
        yield profiler
    finally:
        for owner, name, own in reversed(restore):
            if own is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
