"""Example budgets for the kernel fuzzers (hypothesis): brief by default, so CI stays fast;
``SFPN_FUZZ_EXAMPLES=N`` raises every fuzzer to at least N examples for a longer run, e.g.

    SFPN_FUZZ_EXAMPLES=20000 pytest tests/test_kernels_scoring.py tests/test_nms.py tests/test_warp.py
"""
from __future__ import annotations

import os

FUZZ_ENV = "SFPN_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """The example count for a fuzzer whose CI budget is ``default``."""
    wanted = os.environ.get(FUZZ_ENV, "").strip()
    if not wanted:
        return default
    if not wanted.isdigit() or int(wanted) < 1:
        raise ValueError(f"${FUZZ_ENV} must be a positive integer, got {wanted!r}")
    return max(default, int(wanted))
