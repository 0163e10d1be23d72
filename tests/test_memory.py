"""Giving back memory a router does not use (runtime/memory.py): the cleared KV cache's zero pages and
the weights' pages before a context is made. Nothing a reader of the memory sees may change."""

import ctypes
import json
import mmap
import subprocess
import sys

import pytest
import runtime_support

from toolroute.runtime import memory
from toolroute.runtime.router import Router

pytestmark = pytest.mark.skipif(memory.LIBC is None, reason="Linux only")

PAGE = memory.PAGE


def _private(size: int) -> mmap.mmap:
    """Private anonymous memory, as llama.cpp's buffers are (malloc's mmapped chunks)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _address(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def test_zero_runs_are_resident_zero_pages_only():
    buffer = _private(16 * PAGE)
    start = _address(buffer)
    for page in range(12):  # pages 12-15 are never touched: not resident, never reported
        buffer[page * PAGE] = 0  # resident, zero
    buffer[3 * PAGE + 100] = 7
    buffer[8 * PAGE + PAGE - 1] = 1
    runs = [((a - start) // PAGE, (b - start) // PAGE) for a, b in memory.zero_runs(start, start + 16 * PAGE)]
    assert runs == [(0, 3), (4, 8), (9, 12)]
    assert memory.mincore_resident(start, start + 16 * PAGE)[12:].sum() == 0  # the scan faulted nothing in
    buffer.close()


def test_create_releasing_gives_back_only_a_run_of_the_expected_size(tmp_path):
    unmapped = str(tmp_path / "weights.gguf")  # no mapping of it: nothing to drop
    kept: list[mmap.mmap] = []

    def create() -> int:
        cache = _private(64 * PAGE)
        cache.write(b"\1" + b"\0" * (64 * PAGE - 1))  # an allocator's header, then the clear's zeros
        other = _private(8 * PAGE)
        other.write(b"\1" + b"\0" * (8 * PAGE - 2) + b"\1")  # a smaller cleared buffer: left alone
        kept.extend((cache, other))
        return _address(cache)

    made, release = memory.create_releasing(create, unmapped, lambda _: 64 * PAGE)  # 63 zero pages
    assert release.skipped == "" and release.kv_released == 63 * PAGE
    resident = memory.mincore_resident(made, made + 64 * PAGE)
    assert resident.tolist() == [True] + [False] * 63  # the header's page stays
    assert kept[0][:] == b"\1" + b"\0" * (64 * PAGE - 1)  # reads as before
    assert memory.mincore_resident(_address(kept[1]), _address(kept[1]) + 8 * PAGE).all()
    kept[0][5] = 9  # and stays writable
    assert kept[0][5] == 9

    made, release = memory.create_releasing(create, unmapped, lambda _: 1000 * PAGE)
    assert release.kv_released == 0 and "0 runs" in release.skipped
    made, release = memory.create_releasing(create, unmapped, lambda _: None)
    assert release.kv_released == 0 and release.skipped
    for buffer in kept:
        buffer.close()


def test_kv_cache_bytes_reads_head_sizes_from_the_metadata():
    smollm = {"general.architecture": "llama"}
    assert (
        memory.kv_cache_bytes(smollm, n_layer=30, n_embd=576, n_head=9, n_head_kv=3, cells=4096) == 94_371_840
    )
    gemma = {"general.architecture": "gemma3", "gemma3.attention.key_length": "256"}
    assert (
        memory.kv_cache_bytes(gemma, n_layer=18, n_embd=640, n_head=4, n_head_kv=1, cells=10)
        == 18 * 512 * 2 * 10
    )


# Run in a fresh interpreter: the tiny model's 1 MB cache is under glibc's mmap threshold, so in a
# process that already made and freed contexts (the test suite) it comes from recycled heap memory,
# which the release rightly leaves alone (`skipped`); the default base's 94 MB cache is always a
# fresh mapping (the slow test below runs in-process).
_ROUTE_BOTH_WAYS = """
import json, sys
from toolroute.runtime.router import Router
requests = json.loads(sys.argv[2])
found = {}
for release in (True, False):
    with Router.load(sys.argv[1], n_threads=1, release_memory=release) as router:
        done = router._all_slots[0].context.release
        results = [router.route(text).model_dump(mode="json", exclude={"latency_ms"}) for text in requests]
        release_done = [done.weights_dropped, done.kv_released, done.skipped]
        found[str(release)] = {"release": release_done, "results": results}
print(json.dumps(found))
"""


def test_router_contexts_give_back_the_cleared_cache_and_route_the_same(tmp_path_factory):
    path = runtime_support.tiny_router_file(tmp_path_factory)
    requests = ["Where is my order ORD-1234?", "hello!", "refund 'A-77' it came broken"]
    done = subprocess.run(
        [sys.executable, "-c", _ROUTE_BOTH_WAYS, str(path), json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(done.stdout.splitlines()[-1])
    weights_dropped, kv_released, skipped = found["True"]["release"]
    assert skipped == "" and kv_released > 0 and weights_dropped > 0
    assert found["False"]["release"] == [0, 0, "release_memory=False"]
    assert found["True"]["results"] == found["False"]["results"]


def test_weights_are_dropped_from_shared_read_only_mappings_only(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * (8 * PAGE // 256))
    with open(path, "rb") as file:
        shared = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        private = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    assert shared[:] == private[:]  # both resident now
    assert memory.drop_file_pages(str(path)) == 8 * PAGE  # the shared one only
    assert shared[:] == path.read_bytes()  # read back from the page cache
    shared.close()
    private.close()


def test_elsewhere_than_linux_the_context_is_made_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "LIBC", None)
    made, release = memory.create_releasing(lambda: 42, str(tmp_path / "x.gguf"), lambda _: 64 * PAGE)
    assert made == 42 and release.kv_released == 0 and release.skipped == "not Linux"


@pytest.mark.slow
def test_the_default_base_gives_back_its_whole_cleared_cache_and_routes_the_same(tmp_path):
    """SmolLM2-135M (30 layers, 3 KV heads of 64) at n_ctx 4096: a 94,371,840-byte F16 cache."""
    path = runtime_support.build_router_file(tmp_path / "base-router.gguf")
    requests = ["Where is my order ORD-1234?", "hello!", "I want to talk to a manager, NOW."]
    results = {}
    for release in (True, False):
        with Router.load(path, n_threads=1, release_memory=release) as router:
            done = router._all_slots[0].context.release
            if release:
                assert done.skipped == ""
                assert 94_371_840 - 2 * PAGE <= done.kv_released <= 94_371_840
                # llama.cpp keeps the tensor data mapped (it unmaps the header's pages after load).
                assert 0.9 * path.stat().st_size <= done.weights_dropped <= path.stat().st_size
            results[release] = [router.route(text).model_dump(exclude={"latency_ms"}) for text in requests]
    assert results[True] == results[False]
