"""The one thread rule: how many threads by default, and how many are too many."""
from __future__ import annotations

import numbers
import os
from typing import Optional

MAX_DEFAULT_THREADS = 4
"""Cap of ``default_threads``: this model's ops, the crop kernel and the scoring scans stop
gaining beyond ~4 threads, while every extra thread costs wake-ups per call."""
MAX_THREADS_PER_CPU = 4
"""``threads`` above this many per usable CPU is refused (5000 threads made a verify 60x slower)."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """The one default: the usable CPUs, at most ``MAX_DEFAULT_THREADS``."""
    return min(MAX_DEFAULT_THREADS, usable_cpus())


def check_threads(threads: Optional[int]) -> int:
    """``threads`` as a positive int (None -> :func:`default_threads`), or ValueError."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    threads = int(threads)
    limit = MAX_THREADS_PER_CPU * usable_cpus()
    if threads > limit:
        raise ValueError(f"threads={threads} is more than {MAX_THREADS_PER_CPU} per usable CPU "
                         f"({usable_cpus()} here, so at most {limit})")
    return threads
