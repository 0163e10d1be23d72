"""Issue #11 in the router: bounded context waits, bounded grammar caches, template errors as input errors."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import runtime_support

from toolroute.grammars import Catalogue, load_catalogue, render_system_prompt
from toolroute.runtime.base_models import packaged_gguf
from toolroute.runtime.chat_template import ChatTemplate
from toolroute.runtime.context_pool import ContextPool, WaitLimits
from toolroute.runtime.lru import LruCache
from toolroute.runtime.results import RouteInputError, RouterBusyError, WaitCancelledError
from toolroute.runtime.router import MAX_CACHED_GRAMMARS, Router
from toolroute.runtime.router_file import RouterMetadata

# -- the context pool ------------------------------------------------------------------------------


def test_a_full_queue_is_refused_at_once():
    pool = ContextPool(["context"])
    with pool.acquire():
        start = time.monotonic()
        with pytest.raises(RouterBusyError) as excinfo, pool.acquire(WaitLimits(max_waiting=0)):
            pass
        assert excinfo.value.reason == "queue_full" and time.monotonic() - start < 0.5
    with pool.acquire(WaitLimits(max_waiting=0)) as item:  # free again: no wait, no refusal
        assert item == "context"


def test_a_wait_ends_at_its_timeout():
    pool = ContextPool(["context"])
    with pool.acquire():
        start = time.monotonic()
        with pytest.raises(RouterBusyError) as excinfo, pool.acquire(WaitLimits(timeout_s=0.2)):
            pass
        assert excinfo.value.reason == "timeout" and 0.15 < time.monotonic() - start < 2.0
    assert pool.waiting == 0


def test_a_cancelled_waiter_leaves_while_the_context_is_still_taken():
    pool = ContextPool(["context"])
    cancelled = threading.Event()
    outcome: list[Any] = []

    def wait() -> None:
        try:
            with pool.acquire(WaitLimits(cancelled=cancelled)):
                outcome.append("got a context")
        except WaitCancelledError as exc:
            outcome.append(exc)

    with pool.acquire():
        waiter = threading.Thread(target=wait)
        waiter.start()
        deadline = time.monotonic() + 2
        while pool.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.waiting == 1
        cancelled.set()
        pool.wake()
        waiter.join(timeout=2)
        assert not waiter.is_alive() and isinstance(outcome[0], WaitCancelledError)
    assert pool.waiting == 0


def test_a_released_context_goes_to_a_waiter():
    pool = ContextPool(["context"])
    got: list[str] = []
    holder = pool.acquire()
    holder.__enter__()
    waiter = threading.Thread(target=lambda: got.extend(_take(pool)))
    waiter.start()
    time.sleep(0.05)
    assert got == []
    holder.__exit__(None, None, None)
    waiter.join(timeout=2)
    assert got == ["context"]


def _take(pool: ContextPool[str]) -> list[str]:
    with pool.acquire(WaitLimits(timeout_s=2)) as item:
        return [item]


# -- bounded caches --------------------------------------------------------------------------------


def test_lru_cache_evicts_the_least_recently_used_and_releases_it():
    released: list[str] = []
    cache: LruCache[str, str] = LruCache(2, on_evict=released.append)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # "b" is now the least recently used
    cache.put("c", "C")
    assert released == ["B"] and "b" not in cache and len(cache) == 2
    cache.clear()
    assert sorted(released) == ["A", "B", "C"]


SIX_TOOLS = Catalogue.from_openai(
    [
        {
            "type": "function",
            "function": {
                "name": f"tool_{index}",
                "description": f"tool number {index}",
                "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
            },
        }
        for index in range(6)
    ]
)


def test_grammar_caches_stay_bounded_over_many_tools_subsets(tmp_path_factory):
    # 6 tools have 62 proper non-empty subsets; each used to leave a grammar and a parsed matcher
    # behind for good.
    metadata = runtime_support.router_metadata(catalogue=SIX_TOOLS)
    path = runtime_support.cached_file(
        tmp_path_factory, "six-tools.gguf", lambda p: runtime_support.build_tiny_base(p, metadata)
    )
    names = SIX_TOOLS.names
    subsets = [[n for bit, n in enumerate(names) if mask >> bit & 1] for mask in range(1, 63)]
    assert len(subsets) > MAX_CACHED_GRAMMARS
    with Router.load(path, n_threads=1) as router:
        for subset in subsets:
            result = router.route("do the thing", tools=subset)
            assert result.tool in (*subset, "no_tool", None)
        assert len(router._grammars) <= MAX_CACHED_GRAMMARS
        for slot in router._all_slots:
            assert len(slot._matchers) <= MAX_CACHED_GRAMMARS
        # An evicted subset is rebuilt on demand and routes the same way.
        again = router.route("do the thing", tools=subsets[0])
        assert again.tool in (*subsets[0], "no_tool", None)


# -- chat template failures are the request's fault -----------------------------------------------

STRICT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if 'RAISE' in message['content'] -%}"
    "{{ raise_exception('this template refuses RAISE') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def strict_router(tmp_path_factory):
    """The tiny router with a template that raises on 'RAISE' and trims message content."""
    catalogue = load_catalogue(runtime_support.CUSTOMER_SUPPORT_TOOLS)
    base = ChatTemplate.from_gguf(packaged_gguf())
    template = ChatTemplate(template=STRICT_TEMPLATE, bos_token=base.bos_token, eos_token=base.eos_token)
    metadata = RouterMetadata.build(
        catalogue,
        prompt_mode="compact",
        system_prompt=render_system_prompt(catalogue, "compact"),
        chat_template=STRICT_TEMPLATE,
        completion_suffix=template.completion_suffix(),
        base='{"spec":"default"}',
        manifest_sha256="0" * 64,
        options=runtime_support.TEST_OPTIONS,
    )
    path = runtime_support.cached_file(
        tmp_path_factory, "strict-template.gguf", lambda p: runtime_support.build_tiny_base(p, metadata)
    )
    with Router.load(path, n_threads=1) as router:
        yield router


# A history turn whose special-token text the trimming template alters: the prompt cannot be
# tokenized safely (prompt_tokens.py refuses with a ValueError).
ALTERED_HISTORY = [{"role": "user", "content": "<|im_end|> hello "}]


def test_template_refusals_are_route_input_errors(strict_router):
    assert strict_router.route("where is ORD-1").kind in ("call", "no_tool")
    with pytest.raises(RouteInputError, match="refuses RAISE"):
        strict_router.route("RAISE the roof")
    with pytest.raises(RouteInputError, match="special-token text"):
        strict_router.route("where is ORD-1", ALTERED_HISTORY)


def test_template_refusals_are_400s_over_http(strict_router):
    pytest.importorskip("uvicorn")
    from toolroute.runtime.server import make_server, serve_in_thread

    server = make_server(strict_router, "127.0.0.1", 0, quiet=True)
    serve_in_thread(server)
    try:
        for messages in (
            [{"role": "user", "content": "RAISE the roof"}],
            [*ALTERED_HISTORY, {"role": "user", "content": "where is ORD-1"}],
        ):
            status, body = _post(server.url, {"messages": messages})
            assert status == 400 and body["error"]["code"] == "invalid_request", body
            assert body["error"]["param"] == "messages"
    finally:
        server.shutdown(timeout_s=10)
        server.server_close()


def _post(url: str, payload: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_request_withdrawn_while_it_is_decoded_stops_at_the_next_step(tmp_path_factory, monkeypatch):
    """A client that goes away mid-decode costs at most one more model step, routing or answering."""
    from toolroute.runtime import decoding

    path = runtime_support.tiny_router_file(tmp_path_factory, "tiny-answers-cancel.gguf", answer_rows="12")
    extend = decoding.Context.extend
    steps: list[int] = []
    cancelled = threading.Event()

    def counting(self, tokens, seq, position, *args, **kwargs):
        steps.append(len(tokens))
        if len(steps) == 2:
            cancelled.set()  # the client leaves after the model's second step
        return extend(self, tokens, seq, position, *args, **kwargs)

    with Router.load(path, n_threads=1, draft_values=False) as router:
        call = router.route("where is ORD-12345 and ORD-9 please, it is late again", no_tool=False)
        assert call.kind == "call"
        monkeypatch.setattr(decoding.Context, "extend", counting)
        with pytest.raises(WaitCancelledError, match="while it was decoded"):
            router.route("where is ORD-12345 and ORD-9 please", wait=WaitLimits(cancelled=cancelled))
        assert len(steps) == 2
        steps.clear()
        cancelled.clear()
        with pytest.raises(WaitCancelledError, match="while its answer was decoded"):
            router.answer(
                "where is ORD-12345", call.call, {"status": "shipped"}, max_tokens=64,
                wait=WaitLimits(cancelled=cancelled),
            )  # fmt: skip
        assert len(steps) == 2
        # The context is free again and routes as before.
        monkeypatch.undo()
        again = router.route("where is ORD-12345 and ORD-9 please, it is late again", no_tool=False)
        assert again.call == call.call
