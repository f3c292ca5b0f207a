"""The yardstick of issue 5's speed target: ONNX Runtime exactly as a newcomer starts it.

:class:`DefaultSession` is ``onnxruntime.InferenceSession(model.onnx)`` with default
``SessionOptions`` on the CPU provider (ORT picks the threads and lets its workers spin; our own
ORT backend pins threads and disables spinning, so it is not this). Every measured row gets
``speedup_vs_baseline`` = baseline p50 / row p50 at batch 1 (:func:`add_speedups`), and
:func:`speed_target` checks the target on the measured numbers: the best int8 row at one thread
must take <= 1.0 ms per face, and the best int8 row (the baseline uses every core, so any thread
count) must be >= 2x faster than the baseline, in the same run. The one-thread speed-up is
reported too.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

TARGET_MS_PER_FACE = 1.0  # best int8 path, 1 thread, batch-1 p50
TARGET_SPEEDUP = 2.0  # vs the default ORT fp32 session
TARGET_THREADS = 1


class DefaultSession:
    """``InferenceSession(path, providers=["CPUExecutionProvider"])``, nothing else set."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> list:
        return self.session.run(None, {self.input_name: x})

    def describe(self) -> dict:
        import onnxruntime as ort

        options = self.session.get_session_options()
        return {"backend": "onnxruntime", "session": "default SessionOptions",
                "providers": ",".join(self.session.get_providers()), "onnxruntime": ort.__version__,
                "intra_op_num_threads": options.intra_op_num_threads}  # 0: ORT's choice (one per core)


def _ok(rows: List[dict]) -> List[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("p50_ms")]


def baseline_row(rows: List[dict]) -> Optional[dict]:
    """The measured baseline row, or None."""
    return next((r for r in _ok(rows) if r.get("baseline")), None)


def add_speedups(rows: List[dict]) -> None:
    """``speedup_vs_baseline`` on every measured row (the baseline itself gets 1.0)."""
    base = baseline_row(rows)
    if base is None:
        return
    for row in _ok(rows):
        row["speedup_vs_baseline"] = base["p50_ms"] / row["p50_ms"]


def _describe(row: dict) -> str:
    return f"{row['backend']} int8 x{row['threads']} {row['p50_ms']:.2f} ms/face"


def speed_target(rows: List[dict]) -> dict:
    """Issue 5's speed target judged on this run's rows; ``text`` is the one-line verdict."""
    target = {"rule": f"best int8 row at {TARGET_THREADS} thread: batch-1 p50 <= {TARGET_MS_PER_FACE:g} ms/face; "
                      f"best int8 row: >= {TARGET_SPEEDUP:g}x the default ONNX Runtime session (fp32, every core) "
                      "in the same run",
              "target_ms_per_face": TARGET_MS_PER_FACE, "target_speedup": TARGET_SPEEDUP, "met": None}
    base = baseline_row(rows)
    int8 = [r for r in _ok(rows) if r["precision"] == "int8" and not r.get("baseline")]
    if base is None or not int8:
        missing = "baseline row" if base is None else "int8 row"
        return {**target, "text": f"speed target not evaluated: no measured {missing} in this run"}
    best = min(int8, key=lambda r: r["p50_ms"])
    target.update(baseline_p50_ms=base["p50_ms"], best_int8=_summary(best))
    one = [r for r in int8 if r["threads"] == TARGET_THREADS]
    overall = f"best int8: {_describe(best)}, {best['speedup_vs_baseline']:.2f}x vs default ORT " \
              f"({base['p50_ms']:.2f} ms/face)"
    if not one:
        return {**target, "text": f"{overall}; speed target not evaluated: no int8 row at {TARGET_THREADS} thread"}
    best_one = min(one, key=lambda r: r["p50_ms"])
    latency_met = best_one["p50_ms"] <= TARGET_MS_PER_FACE
    speedup_met = best["speedup_vs_baseline"] >= TARGET_SPEEDUP
    met = latency_met and speedup_met
    target.update(best_int8_1_thread=_summary(best_one), latency_met=latency_met, speedup_met=speedup_met, met=met)
    at_one = "" if best_one is best else \
        f"; at {TARGET_THREADS} thread: {_describe(best_one)}, {best_one['speedup_vs_baseline']:.2f}x"
    verdict = (f"target (<= {TARGET_MS_PER_FACE:g} ms/face at {TARGET_THREADS} thread: "
               f"{'met' if latency_met else 'NOT met'}; >= {TARGET_SPEEDUP:g}x: {'met' if speedup_met else 'NOT met'})"
               f" {'MET' if met else 'NOT MET'}")
    return {**target, "text": f"{overall}{at_one}; {verdict}"}


def _summary(row: dict) -> dict:
    return {"backend": row["backend"], "threads": row["threads"], "p50_ms": row["p50_ms"],
            "speedup_vs_baseline": row["speedup_vs_baseline"]}
