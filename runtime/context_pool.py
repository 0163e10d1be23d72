"""A router's pool of llama.cpp contexts: a request takes a whole context, and its wait is bounded.

A plain `queue.Queue` waits forever and cannot be left: a server in front of it queues requests
without limit and runs a request whose client has already gone. Here a caller may say how long
it waits (`timeout_s`), how long a queue it accepts (`max_waiting`: refused at once beyond it) and
give an event that withdraws it from the queue (`cancelled`, with `wake()` to make waiters look).
Both refusals are `RouterBusyError`; a withdrawn wait is `WaitCancelledError`. Without limits
(the library default) `acquire` is the old blocking queue.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from .results import RouterBusyError, WaitCancelledError

Item = TypeVar("Item")


@dataclass(frozen=True)
class WaitLimits:
    """How a request waits for a context (None: no limit)."""

    timeout_s: float | None = None
    max_waiting: int | None = None
    cancelled: threading.Event | None = None


class ContextPool(Generic[Item]):
    """A fixed set of items handed out one caller at a time, with bounded, cancellable waits."""

    def __init__(self, items: Iterable[Item]) -> None:
        self._free: deque[Item] = deque(items)
        self._size = len(self._free)
        self._changed = threading.Condition()
        self._waiting = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def waiting(self) -> int:
        """Callers queued for an item right now."""
        return self._waiting

    def wake(self) -> None:
        """Make every waiter look at its `cancelled` event again (call after setting one)."""
        with self._changed:
            self._changed.notify_all()

    @contextmanager
    def acquire(self, limits: WaitLimits | None = None) -> Iterator[Item]:
        item = self._take(limits or WaitLimits())
        try:
            yield item
        finally:
            with self._changed:
                self._free.append(item)
                # Every waiter looks (not one): a waiter that wakes only to find itself
                # cancelled must not swallow the wake-up another waiter needed.
                self._changed.notify_all()

    def _take(self, limits: WaitLimits) -> Item:
        deadline = None if limits.timeout_s is None else time.monotonic() + limits.timeout_s
        with self._changed:
            self._raise_if_cancelled(limits)
            if self._free:
                return self._free.popleft()
            if limits.max_waiting is not None and self._waiting >= limits.max_waiting:
                raise RouterBusyError(
                    f"all {self._size} router context(s) are busy and {self._waiting} request(s) "
                    "are already waiting",
                    reason="queue_full",
                )
            self._waiting += 1
            try:
                while not self._free:
                    self._raise_if_cancelled(limits)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise RouterBusyError(
                            f"no router context became free within {limits.timeout_s:g} s",
                            reason="timeout",
                        )
                    self._changed.wait(remaining)
                self._raise_if_cancelled(limits)
                return self._free.popleft()
            finally:
                self._waiting -= 1

    @staticmethod
    def _raise_if_cancelled(limits: WaitLimits) -> None:
        if limits.cancelled is not None and limits.cancelled.is_set():
            raise WaitCancelledError("the request was withdrawn before a context was free")
