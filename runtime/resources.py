"""What this process has and has used: the CPU cores it may run on, its peak resident memory (the one
definition of each that the runtime, train and bench read), and the host's load beside a timing."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def _status_mb(field: str) -> float | None:
    """A `/proc/self/status` memory field in MB, or None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """This process's resident memory now in MB (VmRSS), or None where /proc is missing."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak RSS in MB. VmHWM belongs to the process's own memory map; `ru_maxrss` on
    Linux keeps the parent's peak across fork and exec (a bench parent holding torch showed
    1.8 GB for every child), so it is only the fallback where /proc is missing."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def load_average() -> list[float] | None:
    """The host's 1-, 5- and 15-minute load averages (None where the OS has none): recorded beside a
    timing, since another job on a 2-core host doubles a training step's seconds."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def physical_cores() -> int:
    """The physical cores among the CPUs this process may run on (its affinity: a container's or
    `taskset`'s share, not the machine's): SMT siblings count once, read from Linux's CPU topology.
    Where the topology is not readable, half the CPUs (llama-cpp-python's guess: SMT machines)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            return max(1, len(cpus) // 2)
        cores.add(siblings.strip())
    return max(1, len(cores))
