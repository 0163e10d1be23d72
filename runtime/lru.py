"""A bounded least-recently-used map that releases what it evicts.

`functools.lru_cache` cannot close an evicted value, and the router's caches hold llama.cpp
grammar matchers (native memory) keyed by client-chosen `tools` subsets: without a bound, a
client that sends many distinct subsets grows the process without limit. Not thread-safe: the
router guards each cache with its own lock or uses it from one thread at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class LruCache(Generic[Key, Value]):
    def __init__(self, max_entries: int, on_evict: Callable[[Value], None] | None = None) -> None:
        if max_entries < 1:
            raise ValueError("an LRU cache holds at least one entry")
        self.max_entries = max_entries
        self._on_evict = on_evict
        self._entries: OrderedDict[Key, Value] = OrderedDict()

    def get(self, key: Key) -> Value | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Key, value: Value) -> None:
        replaced = self._entries.get(key)
        if replaced is not None and replaced is not value and self._on_evict is not None:
            self._on_evict(replaced)
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            _, evicted = self._entries.popitem(last=False)
            if self._on_evict is not None and evicted is not value:
                self._on_evict(evicted)

    def clear(self) -> None:
        while self._entries:
            _, value = self._entries.popitem()
            if self._on_evict is not None:
                self._on_evict(value)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def values(self) -> Iterator[Value]:
        return iter(list(self._entries.values()))
