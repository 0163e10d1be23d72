"""What this process has used: its peak resident memory (the one definition train and bench read)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS in MB. VmHWM belongs to the process's own memory map; `ru_maxrss` on
    Linux keeps the parent's peak across fork and exec (a bench parent holding torch showed
    1.8 GB for every child), so it is only the fallback where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
