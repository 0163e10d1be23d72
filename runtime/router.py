"""The runtime: load one router GGUF, route requests on the CPU, dispatch validated calls.

    router = Router.load("customer-support.gguf", tools=[TrackOrder, RequestRefund, Escalate])

    @router.tool
    def track_order(args: TrackOrder) -> str: ...

    result = router.route("where is my order ORD-1234?")
    if result.kind == "call":
        router.dispatch(result)

Only llama-cpp-python, pydantic and the standard library are imported (no torch).

How a request runs:

1. The prompt is `RouterPrompt.render` (the renderer training used) with the router's own
   system prompt, tokenized so that user text never becomes special tokens.
2. **Prefix cache.** The tokens every prompt starts with (the system turn: ~175 tokens for the
   customer-support router in compact mode) are evaluated once per context, at load, into
   sequence 0 of a unified KV cache. A request is evaluated in sequence 1, which first takes the
   prefix's cells by reference (`llama_memory_seq_cp`, metadata only, no copy), so the per-request
   cost is the request's own tokens plus generation. Afterwards sequence 1 is dropped
   (`llama_memory_seq_rm`) and the prefix is untouched. Unlike `save_state`/`load_state`
   (a multi-MB copy per request) this costs nothing, and unlike reusing "whatever the last
   request left" every request sees the same prefix state, so results do not depend on the
   order requests come in.
3. **Greedy decoding under the grammar**, token by token with llama.cpp's own grammar engine
   (`GrammarMatcher`) and `Utf8Tracker` (which refuses the overlong UTF-8 forms the engine
   lets through). Bytes the grammar forces (`{"tool":"`, `","arguments":{"order_id":"`, the
   closing braces) are appended without asking the model (spelled the way the tokenizer
   spells them, as in training), which skips about half the decode steps of a typical call;
   `fast_forward=False` turns this off. Generation stops at an end-of-generation token or as
   soon as the grammar is complete. Copied arguments (the file's `copied_arguments`) are held
   to spans of the request on top of the grammar (`copying.py`; a dead end, where no span
   fits, decodes again without that argument or tool: `copy_rule.py`), and each token the
   model chooses is scored under the constrained distribution (`confidence.chosen_logprob`):
   the call score (`call_logprob`, `min_token_logprob`). Inside a copied value the request's
   next word is drafted into the same model batch and each drafted token is taken only where it
   is the constrained greedy choice (`drafting.py`; `draft_values=False` turns it off).
4. **Confidence** at the decision point right after `{"tool":"`: the probability of each name
   under the grammar-constrained distribution, from the logits the greedy step reads anyway
   (no extra decode when the tools' names start differently); see `confidence.py`. By default
   (`name_focus`) it is read once the name is written, for the chosen tool and no_tool (the two
   the rules read), reusing the logits the greedy decoding computed along the name.
5. The text is parsed and validated against the catalogue; anything else is `invalid`.

Answering a tool's output (`answer`, `respond`, `ask`; `answering.py`): the call is validated
again, the prompt is `RouterPrompt.render_answer` (training's answer rows use it too), tokenized
so that neither the request nor the tool's output can spell special tokens, and decoded greedily
without a grammar in sequence 1 over the cached prefix, which is dropped afterwards, as for a route;
at most `max_answer_tokens` tokens, refused before anything runs when the prompt and that cap do not
fit the context, or when the file says the router never learned to answer (`answer_rows`).

Input limits: an empty or whitespace-only request is refused (`EmptyRequestError`). The
completion budget is the grammar's own bound (the longest output it admits, in bytes: one token
spells at least one byte), so no valid output is ever cut short; `max_completion_tokens` can
lower it, and an output cut short by a lower cap comes back `invalid`, never dispatched. Where
the prompt plus that bound plus the branches confidence scoring may hold does not fit in `n_ctx`
(a large catalogue of optional string arguments: HWU64's grammar admits 18k bytes), the output
gets the room that is left, as long as that is at least `MIN_COMPLETION_TOKENS` (256); with less
room the request is refused (`RequestTooLongError`) before anything runs.

Thread safety: a router owns a pool of `n_contexts` llama.cpp contexts over one shared copy of
the weights; `route` takes a whole context for the request (a queue, so with the default of one
context it is a lock around it; `wait=WaitLimits(...)` bounds the wait and lets a caller
withdraw, as the server does for a client that left). A request's result depends only on the
request (the prefix state is the one computed at load, and the request is evaluated in the same
batches whatever ran before), so concurrent routes give exactly the sequential results, in any
pool size.
Measured with 4 client threads on a shared 2-core machine (`python -m toolroute.bench.latency --contexts`,
customer-support eval set): 1 context x 1 thread 1.91 requests/s, 1 context x 2 threads 1.67,
2 contexts x 1 thread 1.95 (+64 MB RSS for the second KV cache). A single-token decode of a
135M model is memory-bound, so a second context buys nothing on 2 cores; one context is the
default and the pool is there for machines with cores to spare.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from jinja2 import TemplateError
from llama_cpp import Llama
from pydantic import ValidationError

from toolroute.grammars import NO_TOOL, Catalogue, NoTool, ToolCall, catalogue_gbnf, make_call
from toolroute.grammars.output_bound import completion_token_budget

from .answering import DEFAULT_ANSWER_TOKENS, answer_text, decode_answer, tool_output_text
from .chat_template import ChatTemplate, ChatTemplateError, RouterPrompt, Turn
from .confidence import DECISION, MAX_BRANCHES, NAME_MASS, NameScorer, chosen_logprob
from .context_pool import ContextPool, WaitLimits
from .copy_rule import CopyRule, Fallback
from .copying import CopyTracker
from .decoding import Context, DecodeError, Matcher, Vocabulary, forced_bytes, pick_greedy
from .dispatch import DispatchResult, Registry
from .drafting import Lookahead, request_draft
from .grammar_engine import GrammarLoadError, Utf8Tracker
from .key_rule import ScoredToken, WeakArgument, weakest_argument
from .llama_build import check_llama_build
from .lru import LruCache
from .prompt_tokens import PromptTokenizer, common_prefix
from .resources import physical_cores
from .results import (
    AnswerResult,
    AnswersNotTrainedError,
    EmptyRequestError,
    Exchange,
    InvalidCallError,
    RequestTooLongError,
    RouteInputError,
    RouteResult,
    RunnerUp,
    ToolOutputTooLongError,
    WaitCancelledError,
)
from .router_file import PREFIX as ROUTER_PREFIX
from .router_file import TEMPLATE_KEY, RouterFile, RouterFileError, RouterMetadata, read_router_file
from .thresholds import CallThreshold, NoToolThreshold

PREFIX_SEQ = 0  # the cached prompt prefix, filled once per context
NO_TOOL_PREFIX = DECISION + NO_TOOL.encode() + b'"'
WORK_SEQ = 1  # the request being routed
FIRST_BRANCH_SEQ = 2  # one per tool name while scoring confidence
DEFAULT_N_CTX = 4096
# Below this much room for the output a request is refused rather than routed with a cap (a
# router call is tens of tokens; hundreds leave room for long free-text arguments).
MIN_COMPLETION_TOKENS = 256
N_BATCH = 512
# Grammars (and, per context, parsed llama.cpp matchers) kept for distinct `tools` subsets: a
# client choosing subsets must not grow the process without bound; one more is rebuilt in milliseconds.
MAX_CACHED_GRAMMARS = 32
# An optional copied argument is left out when, at some step of its value, the model gives what
# the copy rule allows less probability than this (see `CopyTracker.gives_up`). 0: never. Picked
# on the customer-support validation rows (BENCHMARKS.md, "Optional copied arguments"): 0.1 to 0.5
# all fix the same case and 0.1 is the least that does; the model's mass on the wrong spans it
# copies is mostly high, so the rule is a guard, not the fix for that error.
DEFAULT_MIN_SPAN_MASS = 0.1
# The same for a required copied argument, where giving up takes the tool out of the choice (the
# request lacks what the tool needs; no_tool stays). 0: never. Picked on the customer-support
# validation rows with the top-16 Q4_K_M router (BENCHMARKS.md, "Required copied arguments"):
# 0.3 had the most exact calls (0.734 against 0.726 off; 0.2 ties, with one more silent error) and
# took false calls from 7 to 4 of 34 out-of-scope rows. A trained model copies a real order id
# with nearly all its mass; "Tom Becker" as an order id gets a fraction of it.
DEFAULT_MIN_REQUIRED_SPAN_MASS = 0.3

HistoryItem = Turn | Mapping[str, str]


def _default_threads(n_contexts: int) -> int:
    """The physical cores this process may use, shared between the contexts. Measured on this
    project's 2-core CPU (no SMT), trained customer-support Q4_K_M, idle machine: 2 threads route
    at p50 143 ms against 226 ms with 1 (BENCHMARKS.md, "Threads"); llama-cpp-python's own default,
    half the logical CPUs, gave 1 here. Not more than the cores: llama.cpp spin-waits between
    steps, so threads beyond free cores are far slower (0.7 s instead of 12 ms a step on a busy
    2-core box); on a machine busy with other work, pass `n_threads` (`--threads`) lower."""
    return max(1, physical_cores() // n_contexts)


@dataclass
class _Grammar:
    """A grammar the router decodes with: the full catalogue's, or a subset's (server `tools`)."""

    gbnf: str
    names: list[str]  # the candidate tool names, no_tool last
    scorer: NameScorer
    max_tokens: int


class _Slot:
    """One context, its cached prefix and its pristine grammar matchers. Used by one thread at a time."""

    def __init__(self, router: Router, n_threads: int) -> None:
        self.context = Context(
            router._llama,
            router.n_ctx,
            N_BATCH,
            router._n_seq_max,
            n_threads,
            release_memory=router.release_memory,
        )
        self._llama = router._llama
        self._matchers: LruCache[str, Matcher] = LruCache(MAX_CACHED_GRAMMARS, on_evict=Matcher.close)
        self.prefix = router._prompts.prefix if router.cache_prefix else []
        if self.prefix:
            self.context.extend(self.prefix, PREFIX_SEQ, 0)

    def matcher(self, grammar: _Grammar) -> Matcher:
        """A fresh matcher for `grammar` (a clone: the GBNF is parsed once per context)."""
        pristine = self._matchers.get(grammar.gbnf)
        if pristine is None:
            pristine = Matcher(self._llama, grammar.gbnf)
            self._matchers.put(grammar.gbnf, pristine)
        return pristine.clone()

    def close(self) -> None:
        self._matchers.clear()  # closes each matcher
        self.context.close()


@dataclass(frozen=True)
class _Names:
    """The names' probabilities a decoding read, and which of them are exact."""

    probabilities: dict[str, float]
    grammar: _Grammar  # the grammar they were read under (a decoding again keeps them)
    resolved: frozenset[str] | None = None  # exact names (None: all); the others are lower bounds
    unresolved: float = 0.0  # mass left unsplit among the names outside `resolved`

    def covers(self, name: str | None) -> bool:
        return self.resolved is None or name in self.resolved


@dataclass
class _Generation:
    text: bytes
    tokens: int
    truncated: bool
    names: _Names
    dead_end: tuple[str, str] | None = None  # (tool, copied argument) no span of the request fits
    # Each token the model chose in a call (forced tokens excluded): its place in `text` and its log
    # p under the constrained distribution (the call score; the key rule, key_rule.py)
    scored: list[ScoredToken] = field(default_factory=list)


class Router:
    """A loaded router file: route requests, check confidence, dispatch calls. Thread-safe."""

    def __init__(
        self,
        llama: Llama,
        metadata: RouterMetadata,
        catalogue: Catalogue,
        *,
        path: str = "router",
        n_threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_contexts: int = 1,
        min_confidence: float | None = None,
        max_completion_tokens: int | None = None,
        cache_prefix: bool = True,
        fast_forward: bool = True,
        copy_rule: bool = True,
        call_score: bool = True,
        stored_thresholds: bool = True,
        call_threshold: CallThreshold | None = None,
        no_tool_threshold: NoToolThreshold | None = None,
        draft_values: bool = True,
        name_pruning: bool = True,
        no_tool_reason: bool = True,
        max_answer_tokens: int = DEFAULT_ANSWER_TOKENS,
        min_span_mass: float = DEFAULT_MIN_SPAN_MASS,
        min_key_probability: float = 0.0,
        min_required_span_mass: float = DEFAULT_MIN_REQUIRED_SPAN_MASS,
        name_focus: bool = True,
        release_memory: bool = True,
    ) -> None:
        if n_contexts < 1:
            raise ValueError("n_contexts must be at least 1")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], not {min_confidence}")
        self.path = path
        self.metadata = metadata
        self.catalogue = catalogue
        stored = metadata.threshold if stored_thresholds else None
        self.min_confidence = stored if min_confidence is None else min_confidence
        self.call_threshold = call_threshold or (metadata.call_rule if stored_thresholds else None)
        self.no_tool_threshold = no_tool_threshold or (metadata.no_tool_rule if stored_thresholds else None)
        self.call_score = call_score
        # The file's copied arguments; `copy_rule=False` decodes with the grammar alone.
        copied = metadata.copied(catalogue) if copy_rule else ()
        cut_offs = {"min_span_mass": min_span_mass, "min_required_span_mass": min_required_span_mass}
        for name, cut_off in cut_offs.items():
            if not 0.0 <= cut_off < 1.0:
                raise ValueError(f"{name} must be within [0, 1), not {cut_off}")
        self.copy_rule = CopyRule(catalogue, copied, metadata.options, min_span_mass, min_required_span_mass)
        # The key rule (key_rule.py): off by default; picked on validation rows it has not paid yet.
        if not 0.0 <= min_key_probability < 1.0:
            raise ValueError(f"min_key_probability must be within [0, 1), not {min_key_probability}")
        self.min_key_probability = min_key_probability
        self._optional_arguments = {
            tool.name: frozenset(tool.parameters.get("properties", {}))
            - frozenset(tool.parameters.get("required", []))
            for tool in catalogue.tools
        }
        self.cache_prefix = cache_prefix
        self.fast_forward = fast_forward
        # The fast path (issue 15): copied values drafted from the request and verified in one
        # batch (drafting.py), name scoring within a mass budget (confidence.py), and no_tool
        # answers that stop once the name is decided, their reason left empty (off by default).
        self.draft_values = draft_values
        self._name_mass = NAME_MASS if name_pruning else 0.0
        self.name_focus = name_focus
        # Pages the router holds but never reads given back when a context is made (memory.py).
        self.release_memory = release_memory
        self.no_tool_reason = no_tool_reason
        self.n_ctx = n_ctx
        self.n_contexts = n_contexts
        self.n_threads = n_threads or _default_threads(n_contexts)
        self._llama = llama
        self._max_completion_tokens = max_completion_tokens
        if max_answer_tokens < 1:
            raise ValueError("max_answer_tokens must be at least 1")
        self.max_answer_tokens = max_answer_tokens
        self.vocabulary = Vocabulary(llama)
        eos = self.vocabulary.llama.detokenize([llama.token_eos()], special=True).decode("utf-8", "replace")
        bos = self.vocabulary.llama.detokenize([llama.token_bos()], special=True).decode("utf-8", "replace")
        template = ChatTemplate(template=metadata.chat_template, bos_token=bos, eos_token=eos)
        self.prompt = RouterPrompt(chat_template=template, system_prompt=metadata.system_prompt)
        self._prompts = PromptTokenizer(self.prompt, self.vocabulary)
        self._grammars: LruCache[tuple[frozenset[str] | None, bool], _Grammar] = LruCache(MAX_CACHED_GRAMMARS)
        self._grammar_lock = threading.Lock()
        # Grammars decoded again after a copy-rule dead end (see copy_rule.py), by what they leave out.
        self._fallback_grammars: LruCache[tuple[Fallback, bool], _Grammar] = LruCache(MAX_CACHED_GRAMMARS)
        full = self._grammar(None)
        # Branch sequences: one to teacher-force `{"tool":"` if an output steps over it, and two
        # levels of ambiguous name tokens when names share prefixes (see confidence.py).
        branches = 1 + (2 * MAX_BRANCHES if full.scorer.max_levels else 0)
        self._n_seq_max = min(FIRST_BRANCH_SEQ + branches, llama_cpp.llama_max_parallel_sequences())
        self._registry = Registry(catalogue)
        self._all_slots: list[_Slot] = []
        try:
            for _ in range(n_contexts):
                self._all_slots.append(_Slot(self, self.n_threads))
        except BaseException:
            self.close()
            raise
        self._slots: ContextPool[_Slot] = ContextPool(self._all_slots)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        tools: Any = None,
        min_confidence: float | None = None,
        n_threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_contexts: int = 1,
        max_completion_tokens: int | None = None,
        cache_prefix: bool = True,
        fast_forward: bool = True,
        copy_rule: bool = True,
        call_score: bool = True,
        stored_thresholds: bool = True,
        call_threshold: CallThreshold | None = None,
        no_tool_threshold: NoToolThreshold | None = None,
        draft_values: bool = True,
        name_pruning: bool = True,
        no_tool_reason: bool = True,
        max_answer_tokens: int = DEFAULT_ANSWER_TOKENS,
        min_span_mass: float = DEFAULT_MIN_SPAN_MASS,
        min_key_probability: float = 0.0,
        min_required_span_mass: float = DEFAULT_MIN_REQUIRED_SPAN_MASS,
        name_focus: bool = True,
        release_memory: bool = True,
    ) -> Router:
        """Load a router GGUF and check its embedded metadata.

        `tools` (Pydantic models, typed functions, OpenAI tools JSON, a `Catalogue`) must declare
        exactly the embedded catalogue, in any order; calls then come back as the given Pydantic
        classes. `min_confidence`, `call_threshold` and `no_tool_threshold` default to the ones
        the file stores, if any (`stored_thresholds=False` ignores those: nothing is held back
        unless given here). `copy_rule=False` ignores the file's copied arguments (the catalogue's
        grammar alone decides), `call_score=False` skips the call-level score (see `thresholds.py`).
        The fast path's switches, for measuring each on and off: `draft_values` (copied values
        drafted from the request, verified in one batch: `drafting.py`), `name_pruning` (the
        name scorer follows only names with non-negligible mass: `confidence.py`),
        `name_focus` (the names' probabilities are read once the name is written, for the
        chosen tool and no_tool, along the greedy decoding's own logits; the other names' are
        lower bounds, `RouteResult.unresolved_mass` says by how much: `confidence.py`) and
        `no_tool_reason=False` (a no_tool answer stops once its name is decided; its reason is
        then empty). `release_memory=False` keeps the pages a context's making leaves resident
        but unused (the cleared KV cache's zero pages, the weights' pages touched before it:
        `memory.py`); the routes are the same either way, only the resident set differs.
        `max_answer_tokens` caps `answer`'s replies (default `DEFAULT_ANSWER_TOKENS`, 256).
        `min_span_mass`: an optional copied argument is left out when, at some step of its value,
        the model gives what the copy rule allows less probability than this
        (`CopyTracker.gives_up`; 0: never). `min_required_span_mass`: the same for a required
        copied argument, whose tool then leaves the choice (the request lacks what it needs).
        `min_key_probability`: an optional argument the model wrote with less probability than
        this is left out and the request decoded again (`key_rule.py`; 0, the default: off).
        """
        where = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{where}: no such router file")
        # Every check runs on the file's header before llama.cpp opens the file: llama-cpp-python
        # compiles the file's chat templates as it opens it, and a grammar must never reach
        # llama.cpp's parser unchecked (see router_file.py).
        router_file = read_router_file(where)
        threads = n_threads or _default_threads(n_contexts)
        check_llama_build()  # a build that would crash on the first model step is refused first
        # The Llama object owns the weights (and the vocabulary); the router runs its own contexts
        # over them, so Llama's own context is kept minimal.
        llama = Llama(where, n_ctx=64, n_batch=8, n_ubatch=8, n_threads=threads, verbose=False)
        try:
            _check_same_metadata(llama.metadata, router_file)
            catalogue = router_file.catalogue
            if tools is not None:
                catalogue = _match_tools(tools, catalogue, where)
            return cls(
                llama,
                router_file.metadata,
                catalogue,
                path=where,
                n_threads=threads,
                n_ctx=n_ctx,
                n_contexts=n_contexts,
                min_confidence=min_confidence,
                max_completion_tokens=max_completion_tokens,
                cache_prefix=cache_prefix,
                fast_forward=fast_forward,
                copy_rule=copy_rule,
                call_score=call_score,
                stored_thresholds=stored_thresholds,
                call_threshold=call_threshold,
                no_tool_threshold=no_tool_threshold,
                draft_values=draft_values,
                name_pruning=name_pruning,
                no_tool_reason=no_tool_reason,
                max_answer_tokens=max_answer_tokens,
                min_span_mass=min_span_mass,
                min_key_probability=min_key_probability,
                min_required_span_mass=min_required_span_mass,
                name_focus=name_focus,
                release_memory=release_memory,
            )
        except GrammarLoadError as exc:
            llama.close()
            raise RouterFileError(
                f"{where}: the embedded grammar does not load in llama.cpp: {exc}"
            ) from None
        except ChatTemplateError as exc:
            llama.close()
            raise RouterFileError(
                f"{where}: the chat template fails on the router's own prompt: {exc}"
            ) from None
        except BaseException:
            llama.close()
            raise

    def close(self) -> None:
        """Free the contexts and the model (also done at interpreter exit)."""
        for slot in getattr(self, "_all_slots", []):
            slot.close()
        self._all_slots = []
        if getattr(self, "_llama", None) is not None:
            self._llama.close()
            self._llama = None

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- grammars ----------------------------------------------------------------------------

    def _grammar(self, tools: Iterable[str] | None, no_tool: bool = True) -> _Grammar:
        """The grammar for all tools (the embedded one) or for a subset of them (empty: no_tool
        only), with or without no_tool (without: a call is required)."""
        key = None if tools is None else frozenset(tools)
        if key is not None and key == frozenset(self.catalogue.names):
            key = None
        if key is not None and not key and not no_tool:
            raise RouteInputError("no tools and no no_tool: a grammar that accepts nothing")
        with self._grammar_lock:
            grammar = self._grammars.get((key, no_tool))
            if grammar is None:
                if key is None and no_tool:
                    gbnf, names = self.metadata.grammar, self.catalogue.names
                else:
                    if key is not None and (unknown := sorted(key - set(self.catalogue.names))):
                        raise RouteInputError(f"tools not in the router's catalogue: {', '.join(unknown)}")
                    names = [n for n in self.catalogue.names if key is None or n in key]
                    subset = self.catalogue.subset(names) if names else self.catalogue
                    options = self.metadata.options
                    gbnf = catalogue_gbnf(subset, options, calls=bool(names), no_tool=no_tool)
                limit = completion_token_budget(gbnf)
                if self._max_completion_tokens is not None:
                    limit = min(limit, self._max_completion_tokens)
                names = [*names, NO_TOOL] if no_tool else list(names)
                grammar = _Grammar(gbnf, names, NameScorer(names, self.vocabulary, self._name_mass), limit)
                self._grammars.put((key, no_tool), grammar)
            return grammar

    @property
    def max_completion_tokens(self) -> int:
        return self._grammar(None).max_tokens

    # -- routing -----------------------------------------------------------------------------

    def _turns(self, history: Sequence[HistoryItem] | None) -> list[Turn]:
        turns = []
        for index, item in enumerate(history or ()):
            try:
                turns.append(item if isinstance(item, Turn) else Turn.model_validate(dict(item)))
            except (ValidationError, TypeError, ValueError) as exc:
                raise RouteInputError(f"history turn #{index}: {exc}") from None
        return turns

    def prepare(
        self,
        text: str,
        history: Sequence[HistoryItem] | None = None,
        tools: Iterable[str] | None = None,
        no_tool: bool = True,
    ) -> tuple[list[int], int, _Grammar]:
        """Check a request and tokenize it: (prompt tokens, cached prefix length, grammar).

        Raises `EmptyRequestError` or `RequestTooLongError` (see the module docstring).
        """
        if not isinstance(text, str):
            raise RouteInputError(f"a request is text, not {type(text).__name__}")
        request = text.strip()  # training requests carry no surrounding whitespace
        if not request:
            raise EmptyRequestError("empty request: there is nothing to route")
        grammar = self._grammar(tools, no_tool)
        turns = self._turns(history)
        try:
            tokens = self._prompts.tokens(request, turns)
        except RouteInputError:
            raise  # already says what the template refused (chat.ChatTemplateError)
        except (ValueError, TemplateError) as exc:
            # The conversation, not the server, is at fault: the chat template refuses it
            # (`raise_exception`, e.g. roles that do not alternate) or alters special-token text.
            raise RouteInputError(f"the chat template cannot render this conversation: {exc}") from None
        prefix = self._prompts.prefix if self.cache_prefix else []
        cached = min(common_prefix([tokens, prefix]), len(tokens) - 1) if prefix else 0
        self.completion_budget(len(tokens), cached, grammar)  # raises when the request does not fit
        return tokens, cached, grammar

    def completion_budget(self, prompt_tokens: int, cached: int, grammar: _Grammar) -> int:
        """Output tokens a request may use: the grammar's bound on the longest output, or, where
        that does not fit in the context (a large catalogue of optional strings), the room left,
        if it is at least `MIN_COMPLETION_TOKENS`; an output cut there comes back `invalid`.

        KV cells needed: the prefix (shared), the rest of the prompt, the completion and the
        branches confidence scoring may hold. Raises `RequestTooLongError`.
        """
        prefix = len(self._prompts.prefix) if self.cache_prefix else 0
        used = prompt_tokens + (prefix - cached) + grammar.scorer.max_cells
        room = self.n_ctx - used
        needed = min(grammar.max_tokens, MIN_COMPLETION_TOKENS)
        if room < needed:
            fits = self.n_ctx - needed - grammar.scorer.max_cells - (prefix - cached)
            raise RequestTooLongError(
                f"request too long: the prompt is {prompt_tokens} tokens and the context holds {self.n_ctx}, "
                f"of which {needed} are kept for the output; prompts up to about {fits} tokens fit "
                "(load the router with a larger n_ctx for more)"
            )
        return min(grammar.max_tokens, room)

    @property
    def contexts(self) -> ContextPool[Any]:
        """The pool of contexts requests wait for (`waiting`, `wake()`; `acquire` holds one)."""
        return self._slots

    def route(
        self,
        text: str,
        history: Sequence[HistoryItem] | None = None,
        *,
        tools: Iterable[str] | None = None,
        no_tool: bool = True,
        wait: WaitLimits | None = None,
    ) -> RouteResult:
        """Route one request. `history`: earlier turns ({role, content}, user/assistant/tool).

        `tools` restricts the choice to some of the catalogue's tools (the grammar is narrowed;
        the prompt stays the one the router was trained with; empty: no_tool only), and
        `no_tool=False` takes no_tool out of the grammar (a call is required). `wait` bounds the
        wait for a free context (`RouterBusyError`) and lets the caller withdraw it, waiting or
        being decoded (`WaitCancelledError`); by default a request waits as long as it takes.
        """
        start = time.perf_counter()
        tokens, cached, grammar = self.prepare(text, history, tools, no_tool)
        budget = self.completion_budget(len(tokens), cached, grammar)
        request = text.strip()
        no_span: list[str] = []
        left_out: list[str] = []
        cancelled = wait.cancelled if wait is not None else None
        with self._slots.acquire(wait) as slot:
            copy = self.copy_rule.tracker(request)
            generation = self._generate(slot, tokens, cached, grammar, budget, copy, cancelled=cancelled)
            fallback = Fallback(tuple(n for n in grammar.names if n != NO_TOOL), frozenset())
            while True:
                if generation.dead_end is not None:
                    tool, argument = generation.dead_end
                    no_span.append(f"{tool}.{argument}")
                else:
                    weak = self._weak_argument(generation)
                    if weak is None:
                        break
                    tool, weakest = weak
                    argument = weakest.name
                    left_out.append(f"{tool}.{argument} ({weakest.probability:.3g})")
                fallback = self.copy_rule.fall_back(fallback.names, fallback.dropped, tool, argument)
                if not fallback.names and NO_TOOL not in grammar.names:
                    generation = _Generation(b"", generation.tokens, False, generation.names)
                    break
                grammar = self._fallback_grammar(fallback, NO_TOOL in grammar.names)
                generation = self._generate(
                    slot, tokens, cached, grammar, min(budget, grammar.max_tokens),
                    self.copy_rule.tracker(request), generation.names, cancelled=cancelled,
                )  # fmt: skip
        return self._result(generation, grammar, tokens, cached, start, no_span, left_out)

    def _weak_argument(self, generation: _Generation) -> tuple[str, WeakArgument] | None:
        """(tool, argument) when the key rule leaves an optional argument of this call out."""
        text = generation.text
        if self.min_key_probability <= 0.0 or generation.truncated or not text.startswith(DECISION):
            return None
        tool = text[len(DECISION) : text.find(b'"', len(DECISION))].decode("utf-8", "replace")
        optional = self._optional_arguments.get(tool)
        if not optional:
            return None
        weak = weakest_argument(text, generation.scored, optional, self.min_key_probability)
        return None if weak is None else (tool, weak)

    def _fallback_grammar(self, fallback: Fallback, no_tool: bool) -> _Grammar:
        """The grammar to decode with again after a copy-rule dead end (see copy_rule.py)."""
        if not fallback.dropped:
            return self._grammar(fallback.names, no_tool)
        with self._grammar_lock:
            grammar = self._fallback_grammars.get((fallback, no_tool))
            if grammar is None:
                gbnf = self.copy_rule.gbnf(fallback, no_tool)
                limit = completion_token_budget(gbnf)
                if self._max_completion_tokens is not None:
                    limit = min(limit, self._max_completion_tokens)
                names = [*fallback.names, NO_TOOL] if no_tool else list(fallback.names)
                grammar = _Grammar(gbnf, names, NameScorer(names, self.vocabulary, self._name_mass), limit)
                self._fallback_grammars.put((fallback, no_tool), grammar)
            return grammar

    def route_many(
        self, texts: Sequence[str], history: Sequence[HistoryItem] | None = None
    ) -> list[RouteResult]:
        """Route a batch (every request checked first); as many at a time as there are contexts."""
        for index, text in enumerate(texts):
            try:
                self.prepare(text, history)
            except RouteInputError as exc:
                raise type(exc)(f"request #{index}: {exc}") from None
        if self.n_contexts == 1:
            return [self.route(text, history) for text in texts]
        with ThreadPoolExecutor(max_workers=self.n_contexts) as pool:
            return list(pool.map(lambda text: self.route(text, history), texts))

    # -- answering a tool's output ---------------------------------------------------------

    @property
    def answers_trained(self) -> bool:
        """Whether the file says training had answer-step rows (`toolroute inspect`: answers)."""
        return self.metadata.trained_answers > 0

    def _check_answers(self) -> None:
        if not self.answers_trained:
            raise AnswersNotTrainedError(
                f"{self.path}: this router was trained without answers (no training row had a tool "
                "result and a reply to it), so it cannot answer a tool's output; train it on data with "
                "follow-ups (a `tool` message and the assistant's answer after the call) to enable it"
            )

    def _answered_call(self, call: RouteResult | ToolCall | Mapping[str, Any]) -> ToolCall:
        """The call a tool's output answers, validated again against this router's catalogue."""
        if isinstance(call, RouteResult):
            if call.kind != "call" or call.call is None:
                raise InvalidCallError(
                    f"a {call.kind} result is not a call: there is no tool output to answer"
                )
            call = call.call
        if isinstance(call, ToolCall):
            tool, arguments = call.tool, call.arguments
        elif isinstance(call, Mapping):
            tool, arguments = call.get("tool"), call.get("arguments")
        else:
            raise InvalidCallError(
                f"a call is a ToolCall, a RouteResult or {{tool, arguments}}, not {type(call).__name__}"
            )
        if not isinstance(tool, str) or tool not in self.catalogue:
            raise InvalidCallError(
                f"{str(tool)[:64]!r} is not a tool of this router ({', '.join(self.catalogue.names)})"
            )
        if not isinstance(arguments, Mapping):
            raise InvalidCallError(f"the arguments of the call to {tool!r} must be an object")
        try:
            return make_call(self.catalogue, tool, dict(arguments))
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidCallError(f"the call to {tool!r} fails the tool's schema: {exc}") from None

    def prepare_answer(
        self,
        text: str,
        call: RouteResult | ToolCall | Mapping[str, Any],
        tool_output: Any,
        history: Sequence[HistoryItem] | None = None,
        max_tokens: int | None = None,
    ) -> tuple[list[int], int, int]:
        """Check an answer request and tokenize it: (prompt tokens, cached prefix length, token cap).

        Raises `AnswersNotTrainedError`, `InvalidCallError`, `EmptyRequestError` or
        `ToolOutputTooLongError` (the prompt and the cap do not fit the context), before anything runs.
        """
        self._check_answers()
        if not isinstance(text, str):
            raise RouteInputError(f"a request is text, not {type(text).__name__}")
        request = text.strip()
        if not request:
            raise EmptyRequestError("empty request: there is nothing to answer")
        cap = self.max_answer_tokens if max_tokens is None else max_tokens
        if cap < 1:
            raise RouteInputError(f"max_tokens must be at least 1, not {cap}")
        checked = self._answered_call(call)
        turns = self._turns(history)
        try:
            tokens = self._prompts.answer_tokens(
                request, checked.canonical, tool_output_text(tool_output), turns
            )
        except RouteInputError:
            raise
        except (ValueError, TemplateError) as exc:
            raise RouteInputError(f"the chat template cannot render this conversation: {exc}") from None
        prefix = self._prompts.prefix if self.cache_prefix else []
        cached = min(common_prefix([tokens, prefix]), len(tokens) - 1) if prefix else 0
        used = len(tokens) + (len(prefix) - cached)
        if used + cap > self.n_ctx:
            raise ToolOutputTooLongError(
                f"tool output too long: the answer prompt (request, call and tool output) is {len(tokens)} "
                f"tokens and the context holds {self.n_ctx}, of which {cap} are kept for the answer; "
                f"shorten the tool's output by about {used + cap - self.n_ctx} tokens (or load the router "
                "with a larger n_ctx)"
            )
        return tokens, cached, cap

    def answer(
        self,
        text: str,
        call: RouteResult | ToolCall | Mapping[str, Any],
        tool_output: Any,
        history: Sequence[HistoryItem] | None = None,
        *,
        max_tokens: int | None = None,
        wait: WaitLimits | None = None,
    ) -> AnswerResult:
        """The router's reply to a tool's output: `text` is the routed request, `call` the call
        (validated again against the catalogue), `tool_output` what the tool returned (text, or
        anything JSON-serialisable: see `tool_output_text`). Greedy, no grammar, at most
        `max_tokens` (default `max_answer_tokens`) tokens, on the same cached prefix as `route`.
        """
        start = time.perf_counter()
        tokens, cached, cap = self.prepare_answer(text, call, tool_output, history, max_tokens)
        end_of_turn = self.metadata.completion_suffix.encode("utf-8")
        with self._slots.acquire(wait) as slot:
            context = slot.context
            context.seq_rm(WORK_SEQ)
            if cached:
                context.seq_cp(PREFIX_SEQ, WORK_SEQ, 0, cached)
            try:
                decoded = decode_answer(
                    context, self.vocabulary, tokens[cached:], cached, WORK_SEQ, cap, end_of_turn,
                    wait.cancelled if wait is not None else None,
                )  # fmt: skip
            finally:
                context.seq_rm(WORK_SEQ)  # the prefix stays as it was
        return AnswerResult(
            text=answer_text(decoded.text),
            finish_reason="length" if decoded.truncated else "stop",
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            completion_tokens=decoded.tokens,
            latency_ms=(time.perf_counter() - start) * 1000.0,
        )

    def respond(
        self,
        text: str,
        call: RouteResult | ToolCall | Mapping[str, Any],
        tool_output: Any,
        history: Sequence[HistoryItem] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> str:
        """`answer(...)`'s text: what to tell the user once the tool ran."""
        return self.answer(text, call, tool_output, history, max_tokens=max_tokens).text

    def ask(self, text: str, history: Sequence[HistoryItem] | None = None) -> Exchange:
        """Route, dispatch a validated call to its registered function, and answer its output.

        A no_tool, held-back or invalid route, or a tool that was refused or raised, ends the
        exchange there (`Exchange.text` then gives the reason). Refused up front, before any tool
        runs, when the router was trained without answers.
        """
        self._check_answers()
        result = self.route(text, history)
        if result.kind != "call":
            return Exchange(route=result)
        dispatched = self.dispatch(result)
        if dispatched.status != "called":
            return Exchange(route=result, dispatch=dispatched)
        return Exchange(
            route=result, dispatch=dispatched, answer=self.answer(text, result, dispatched.value, history)
        )

    def _generate(
        self,
        slot: _Slot,
        tokens: list[int],
        cached: int,
        grammar: _Grammar,
        budget: int,
        copy: CopyTracker | None = None,
        scored: _Names | None = None,
        *,
        cancelled: threading.Event | None = None,
    ) -> _Generation:
        """Greedy decoding under the grammar (and, with `copy`, the copy rule). `scored`: the
        names' probabilities an earlier decoding read (a decoding again after a copy-rule dead
        end keeps the first decoding's, read again under its grammar if they do not cover the
        name this decoding chose). `cancelled` set (the client went away): `WaitCancelledError`
        before the next model step."""
        context, vocabulary = slot.context, self.vocabulary
        pieces = vocabulary.pieces
        branch_seqs = list(range(FIRST_BRANCH_SEQ, self._n_seq_max))
        context.seq_rm(WORK_SEQ)
        if cached:
            context.seq_cp(PREFIX_SEQ, WORK_SEQ, 0, cached)
        matcher = slot.matcher(grammar)
        utf8 = Utf8Tracker()
        out = bytearray()
        produced: list[int] = []
        pending = list(tokens[cached:])
        position = cached
        lookahead = Lookahead(context, WORK_SEQ, cached)
        names: _Names | None = scored
        # With name focus: the decision point (its logits, grammar state and position), kept
        # until the name is written, and the logits after each run of name tokens the greedy
        # decoding took since (by those tokens), which the scorer reuses instead of decoding.
        root: tuple[np.ndarray, Matcher, int] | None = None
        decision_at = 0  # tokens produced before the name
        known: dict[tuple[int, ...], np.ndarray] = {}
        truncated = False
        scored: list[ScoredToken] = []
        score_tokens = self.call_score or self.min_key_probability > 0.0
        dead_end: tuple[str, str] | None = None

        def take(token: int) -> None:  # a token the grammar (and the copy rule) was just seen to allow
            matcher.advance(token)
            utf8.push(pieces[token])
            if copy is not None:
                copy.push(pieces[token])
            out.extend(pieces[token])
            produced.append(token)
            pending.append(token)

        def draft(limit: int) -> list[int]:  # the request's next tokens, inside a copied value
            assert copy is not None
            return request_draft(copy.continuation(), tokenize, limit)

        tokenize = functools.partial(vocabulary.llama.tokenize, add_bos=False, special=False)
        try:
            while True:
                if self.fast_forward:
                    # Stop a forced run at the decision point so that confidence is read there.
                    before = len(DECISION) - len(out) if len(out) < len(DECISION) else None
                    limit = budget - len(produced) if before is None else before
                    span, choice_follows = (
                        forced_bytes(matcher, vocabulary, limit) if limit > 0 else (b"", False)
                    )
                    spelled = vocabulary.spell(span) if span else []
                    if choice_follows:
                        # Training's tokenizer often merged the span's last bytes with the choice
                        # after them (`","`, `"}}`): forcing `"` alone would show the model a
                        # spelling it never saw (it then drops optional arguments). The model
                        # decodes that last token itself, under the grammar.
                        spelled = spelled[:-1]
                    for token in spelled:
                        piece = pieces[token]
                        if not (matcher.allows(token) and utf8.extends(piece)):
                            break
                        if copy is not None and not copy.allows(piece):
                            break  # the model's step below finds what the rule allows, or a dead end
                        take(token)
                if not self.no_tool_reason and out.startswith(NO_TOOL_PREFIX):
                    out[:] = NO_TOOL_PREFIX + b',"reason":""}'  # the reason was not wanted
                    break
                allowed, may_end = matcher.probe(vocabulary)
                if not allowed:
                    break  # the grammar is complete (or, impossibly, stuck): nothing to decode
                if cancelled is not None and cancelled.is_set():
                    raise WaitCancelledError("the request was withdrawn while it was decoded")
                if len(produced) >= budget:
                    truncated = True
                    break
                in_name = root is not None and names is None and out.find(b'"', len(DECISION)) < 0
                if root is not None and names is None and not in_name:
                    names = self._score_name(context, grammar, root, known, branch_seqs, out)
                drafting = self.draft_values and copy is not None and copy.inside
                if in_name:  # keep the logits after every name token for the scorer
                    taken = tuple(produced[decision_at:])
                    rows = lookahead.logits_rows(pending)
                    for index, row in enumerate(rows):
                        if row is not None:
                            known[taken[: len(taken) - len(rows) + index + 1]] = row
                    logits = rows[-1]
                else:
                    logits = lookahead.logits(pending, draft if drafting else None, budget - len(produced))
                position = lookahead.position
                if names is None and root is None and out == DECISION:
                    if self.name_focus:
                        root, decision_at = (logits, matcher.clone(), position), len(produced)
                    else:
                        scorer = grammar.scorer
                        scores = scorer.score(context, WORK_SEQ, position, logits, matcher, branch_seqs)
                        names = _Names(scores.probabilities, grammar)
                if copy is not None:
                    copy.rejected = None
                try:
                    token = pick_greedy(matcher, utf8, vocabulary, logits, allowed, may_end, copy)
                except DecodeError:
                    if copy is None or copy.dead_end is None:
                        raise
                    dead_end = copy.dead_end
                    break
                if score_tokens and not out.startswith(NO_TOOL_PREFIX):  # only calls are scored
                    logprob = chosen_logprob(matcher, utf8, vocabulary, logits, token, allowed, may_end, copy)
                    scored.append(ScoredToken(len(out), len(out) + len(pieces[token]), logprob))
                if vocabulary.is_eog(token):
                    break
                take(token)
            lookahead.discard()
            if names is None and root is not None:
                names = self._score_name(context, grammar, root, known, branch_seqs, out)
            if names is None:
                names = self._score_forced(slot, grammar, tokens, branch_seqs, self._focus(out, grammar))
            elif not names.covers(self._focus_name(out)):  # a decoding again chose another tool
                first = names.grammar
                names = self._score_forced(slot, first, tokens, branch_seqs, self._focus(out, first))
        finally:
            context.seq_rm(WORK_SEQ)
            matcher.close()
            if root is not None:
                root[1].close()
        return _Generation(bytes(out), len(produced), truncated, names, dead_end, scored)

    def _focus_name(self, out: bytes | bytearray) -> str | None:
        """The tool name an output wrote after `{"tool":"`, once its closing quote is there."""
        if not out.startswith(DECISION):
            return None
        end = out.find(b'"', len(DECISION))
        return None if end < 0 else bytes(out[len(DECISION) : end]).decode("utf-8", "replace")

    def _focus(self, out: bytes | bytearray, grammar: _Grammar) -> frozenset[str] | None:
        """The names whose probabilities the rules read: the chosen tool and no_tool (None:
        every name, without name focus or before a name is written)."""
        name = self._focus_name(out) if self.name_focus else None
        if name is None or name not in grammar.names:
            return None
        return frozenset({name, NO_TOOL}.intersection(grammar.names))

    def _score_name(
        self,
        context: Context,
        grammar: _Grammar,
        root: tuple[np.ndarray, Matcher, int],
        known: dict[tuple[int, ...], np.ndarray],
        branch_seqs: list[int],
        out: bytes | bytearray,
    ) -> _Names:
        """The names' probabilities at the decision point `root`, read once the name is written."""
        logits, matcher, position = root
        focus = self._focus(out, grammar)
        scores = grammar.scorer.score(context, WORK_SEQ, position, logits, matcher, branch_seqs, focus, known)
        return _Names(scores.probabilities, grammar, focus, scores.unresolved)

    def _score_forced(
        self,
        slot: _Slot,
        grammar: _Grammar,
        tokens: list[int],
        branch_seqs: list[int],
        focus: frozenset[str] | None = None,
    ) -> _Names:
        """Confidence when the output's tokens stepped over the decision point (a token spanning
        `":"t`, say): teacher-force `{"tool":"` after the prompt on a branch and score from there."""
        context, branch, rest = slot.context, branch_seqs[0], branch_seqs[1:]
        decision = self.vocabulary.spell(DECISION)
        matcher = slot.matcher(grammar)
        try:
            for token in decision:
                matcher.accept(token)
            context.seq_cp(WORK_SEQ, branch, 0, len(tokens))
            logits = context.extend(decision, branch, len(tokens))
            position = len(tokens) + len(decision)
            scores = grammar.scorer.score(context, branch, position, logits, matcher, rest, focus)
            return _Names(scores.probabilities, grammar, focus, scores.unresolved)
        finally:
            context.seq_rm(branch)
            matcher.close()

    def _result(
        self,
        generation: _Generation,
        grammar: _Grammar,
        tokens: list[int],
        cached: int,
        start: float,
        no_span: Sequence[str] = (),
        left_out: Sequence[str] = (),
    ) -> RouteResult:
        raw = generation.text.decode("utf-8", "replace")
        parsed = None if generation.truncated else self.catalogue.parse(raw)
        if parsed is not None and parsed.tool not in grammar.names:
            parsed = None  # outside the tools this request allowed
        names = generation.names
        probabilities = dict(sorted(names.probabilities.items(), key=lambda kv: -kv[1]))
        chosen = parsed.tool if parsed is not None else None
        confidence = probabilities.get(chosen) if chosen else None
        others = [(n, p) for n, p in probabilities.items() if n != chosen]
        # With name focus the other names' values are lower bounds: a runner-up is named only
        # when no unsplit mass could put another name above it.
        runner_up = None
        if chosen and others:
            second = others[1][1] if len(others) > 1 else 0.0
            if names.covers(others[0][0]) or others[0][1] >= second + names.unresolved:
                runner_up = RunnerUp(tool=others[0][0], probability=others[0][1])
        # A refusal has no call score; without `call_score` the tokens were scored for the key rule only.
        scored = self.call_score and not isinstance(parsed, NoTool)
        logprobs = [token.logprob for token in generation.scored] if scored else []
        scores: dict[str, float | None] = {
            "name_probability": confidence,
            "call_logprob": sum(logprobs) if logprobs else None,
            "min_token_logprob": min(logprobs) if logprobs else None,
        }
        fields: dict[str, Any] = {}
        if isinstance(parsed, ToolCall):
            fields.update(call=parsed, kind="call")
            held = self._held_back(parsed.tool, confidence, probabilities.get(NO_TOOL), scores, runner_up)
            if held is not None:
                fields.update(kind="low_confidence", held_back_by=held[0], error=held[1])
        elif isinstance(parsed, NoTool):
            fields.update(kind="no_tool", no_tool=parsed)
        elif not raw and no_span:
            fields.update(kind="invalid", error=f"no span of the request fits {', '.join(no_span)}")
        else:
            fields.update(kind="invalid", error=self._diagnose(raw, generation))
        return RouteResult(
            call_logprob=scores["call_logprob"],
            min_token_logprob=scores["min_token_logprob"],
            scored_tokens=len(logprobs),
            no_span=list(no_span),
            left_out=list(left_out),
            raw=raw,
            confidence=confidence,
            runner_up=runner_up,
            probabilities=probabilities,
            unresolved_mass=names.unresolved,
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            completion_tokens=generation.tokens,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            **fields,
        )

    def _held_back(
        self,
        tool: str,
        confidence: float | None,
        no_tool_probability: float | None,
        scores: dict[str, float | None],
        runner_up: RunnerUp | None,
    ) -> tuple[str, str] | None:
        """(rule, why) when a rule holds the call back: abstention first, then the call score,
        then the name probability (see thresholds.py)."""
        rule = self.no_tool_threshold
        if rule is not None and rule.holds_back(confidence, no_tool_probability):
            assert confidence is not None and no_tool_probability is not None
            return "no_tool", f"abstained from {tool}: {rule.describe(confidence, no_tool_probability)}"
        if self.call_threshold is not None and self.call_threshold.holds_back(scores):
            return "call_score", f"the call to {tool} is held back: {self.call_threshold.describe(scores)}"
        threshold = self.min_confidence
        if threshold is not None and confidence is not None and confidence < threshold:
            return "confidence", (
                f"confidence {confidence:.3f} in {tool} is below the threshold {threshold:g}"
                + (f" (runner-up {runner_up.tool} at {runner_up.probability:.3f})" if runner_up else "")
            )
        return None

    def _diagnose(self, raw: str, generation: _Generation) -> str:
        if generation.truncated:
            return f"the output was cut at the completion cap of {generation.tokens} tokens"
        import json

        try:
            data = json.loads(raw)
            make_call(self.catalogue, data["tool"], data["arguments"])
        except Exception as exc:  # the reason is the point here, whatever raised it
            return f"the output fails validation: {type(exc).__name__}: {exc}"
        return "the output is not a call this request allows"

    # -- dispatch ----------------------------------------------------------------------------

    def tool(self, fn: Callable[..., Any] | str | None = None, *, name: str | None = None) -> Any:
        """Register a function for a catalogue tool: `@router.tool`, `@router.tool("name")`."""
        if isinstance(fn, str):
            fn, name = None, fn

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self._registry.register(name or function.__name__, function)
            return function

        return register(fn) if fn is not None else register

    def register(self, functions: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]]) -> None:
        """Register functions by tool name (`{name: fn}`), or by their own names."""
        items = functions.items() if isinstance(functions, Mapping) else ((f.__name__, f) for f in functions)
        for tool_name, function in items:
            self._registry.register(tool_name, function)

    @property
    def registered(self) -> list[str]:
        return self._registry.names

    def dispatch(self, result: RouteResult | ToolCall | NoTool) -> DispatchResult:
        """Run a routed call's function; see `Registry.dispatch`. Never raises for a tool's error."""
        return self._registry.dispatch(result)


def _check_same_metadata(loaded: Mapping[str, str], checked: RouterFile) -> None:
    """llama.cpp must read the values that were checked (two GGUF readers must never disagree)."""
    keys = {key for key in [*loaded, *checked.kv] if key.startswith((ROUTER_PREFIX, TEMPLATE_KEY))}
    if differing := sorted(key for key in keys if loaded.get(key) != checked.kv.get(key)):
        raise RouterFileError(
            f"{checked.path}: llama.cpp reads {', '.join(differing)} differently from the file's header "
            "(a NUL byte in the text?): refused"
        )


def _match_tools(tools: Any, embedded: Catalogue, where: str) -> Catalogue:
    """The catalogue the caller declared, checked against the embedded one (order aside)."""
    if isinstance(tools, Catalogue):
        given = tools
    elif isinstance(tools, str | os.PathLike):
        from toolroute.grammars import load_catalogue

        given = load_catalogue(tools)
    elif isinstance(tools, Mapping):
        given = Catalogue.from_openai(tools)
    else:
        given = Catalogue.from_tools(list(tools))
    if set(given.names) == set(embedded.names):
        given = Catalogue(tuple(given.get(n) for n in embedded.names), dict(given.sources))
    if given != embedded:
        raise RouterFileError(
            f"{where}: the tools given do not match the router's catalogue: {embedded.diff(given)} "
            "(the router was trained for its embedded catalogue; retrain or pass the same tools)"
        )
    return given
