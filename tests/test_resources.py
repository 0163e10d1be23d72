"""The process's CPU cores and peak memory, as the runtime, train and bench read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toolroute.runtime import resources
from toolroute.runtime.router import _default_threads


def _topology(monkeypatch, cpus: set[int], siblings: dict[int, str] | None) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    real = Path.read_text

    def read_text(path: Path, *args, **kwargs) -> str:
        if str(path).startswith("/sys/devices/system/cpu/"):
            if siblings is None:
                raise OSError("no topology")
            return siblings[int(path.parts[5].removeprefix("cpu"))] + "\n"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize(
    ("cpus", "siblings", "cores"),
    [
        ({0, 1}, {0: "0", 1: "1"}, 2),  # two cores, no SMT (this project's machine): both
        ({0, 1, 2, 3}, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}, 2),  # SMT pairs count once
        ({2, 3}, {2: "0,2", 3: "1,3"}, 2),  # the affinity's CPUs, not the machine's
        ({0, 2}, {0: "0,2", 2: "0,2"}, 1),
        ({0, 1, 2, 3}, None, 2),  # no topology: half the CPUs
        ({0}, None, 1),
    ],
)
def test_physical_cores_count_smt_siblings_once_within_the_affinity(monkeypatch, cpus, siblings, cores):
    _topology(monkeypatch, cpus, siblings)
    assert resources.physical_cores() == cores


def test_the_default_threads_share_the_cores_between_contexts(monkeypatch):
    _topology(monkeypatch, {0, 1, 2, 3}, {0: "0", 1: "1", 2: "2", 3: "3"})
    assert [_default_threads(n) for n in (1, 2, 3, 8)] == [4, 2, 1, 1]


def test_load_average_is_the_hosts_three_means_or_none_where_the_os_has_none(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (1.234, 0.5, 2.0))
    assert resources.load_average() == [1.23, 0.5, 2.0]

    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert resources.load_average() is None
