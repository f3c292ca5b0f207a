"""Shared pytest-benchmark plumbing: memory recorded next to every timing.

Every test that uses ``benchmark`` automatically gets, in ``benchmark.extra_info``:

- ``peak_rss_mb``: the process's peak resident set size during the test. On Linux the
  high-water mark is reset before the test (``/proc/self/clear_refs``), so this is the peak of
  *this* benchmark, not of the session; elsewhere it is ``ru_maxrss`` (session peak so far) and
  ``peak_rss_scope`` says so.
- ``rss_before_mb``: resident set size when the test started (model loads show up as the gap).

For the Python-level allocation peak of one call, use the ``memory`` fixture::

    def test_embed(benchmark, memory, embedder, batch):
        memory.trace(embedder.embed, batch)   # one untimed call under tracemalloc
        benchmark(embedder.embed, batch)

which stores ``tracemalloc_peak_mb`` (numpy buffers included; native allocations of ORT or
OpenVINO are not traced, peak RSS covers those). Tracing runs outside the timed loop because
tracemalloc slows every allocation.
"""
from __future__ import annotations

import resource
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MB = 1024.0 * 1024.0


def _status_kb(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


class MemoryRecorder:
    """Stores memory figures of one benchmark into its ``extra_info``."""

    def __init__(self, extra_info: dict):
        self.extra_info = extra_info

    def trace(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` once under tracemalloc; record its Python allocation peak. Returns its result."""
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            result = fn(*args, **kwargs)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            if not was_tracing:
                tracemalloc.stop()
        self.extra_info["tracemalloc_peak_mb"] = round((peak - base) / _MB, 3)
        return result


@pytest.fixture
def memory(benchmark) -> MemoryRecorder:
    """Record the tracemalloc peak of one call: ``memory.trace(fn, *args)``."""
    return MemoryRecorder(benchmark.extra_info)


@pytest.fixture(autouse=True)
def _record_peak_rss(request):
    """Put peak RSS (and RSS at start) into ``extra_info`` of every benchmark test."""
    if "benchmark" not in request.fixturenames:
        yield
        return
    benchmark = request.getfixturevalue("benchmark")
    per_test = _reset_peak_rss() and _status_kb("VmHWM") is not None
    before = _status_kb("VmRSS")
    yield
    if per_test:
        peak_mb, scope = _status_kb("VmHWM") / 1024.0, "test"
    else:
        peak_mb, scope = _ru_maxrss_mb(), "process"
    benchmark.extra_info["peak_rss_mb"] = round(peak_mb, 1)
    benchmark.extra_info["peak_rss_scope"] = scope
    if before is not None:
        benchmark.extra_info["rss_before_mb"] = round(before / 1024.0, 1)
