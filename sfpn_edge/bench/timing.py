"""Wall-clock timing of repeated calls and its percentiles (stdlib at the top; numpy inside)."""
from __future__ import annotations

import time
from typing import Callable


def time_calls(fn: Callable[[], object], min_seconds: float, min_calls: int, max_calls: int = 100_000) -> list:
    """Per-call wall times of ``fn``: at least ``min_calls`` calls and ``min_seconds`` in total."""
    times: list = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def percentiles_ms(seconds: list) -> dict:
    """p50 and p95 of per-call times ``seconds``, in milliseconds, and the number of calls."""
    import numpy as np

    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "calls": int(ms.size)}
