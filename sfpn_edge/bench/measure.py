"""Run ONE measurement in a fresh subprocess and print it as JSON.

Parent side: :func:`run_child` starts ``python -m sfpn_edge.bench.measure SPEC`` with the thread
count pinned in the environment and parses the last stdout line. Child side: :func:`main`
dispatches on ``spec["kind"]``:

- ``model``: cold start (import backend + load + first inference), batch-1 latency p50/p95 after
  warm-up, best-batch throughput, descriptors of a fixed probe batch (for fidelity vs fp32); with
  ``"baseline": true`` the model is ONNX Runtime's default session instead of one of our backends;
- ``stage``: one pipeline stage from :mod:`sfpn_edge.bench.stages`;
- ``accuracy``: CFP 10-fold accuracy through :mod:`sfpn_edge.evaluate`.

Every child reports its own peak RSS (``VmHWM``, see :func:`peak_rss_mb`), so each row's memory is its own; model
children report it after batch-1 serving (``peak_rss_mb``) and after the batch sweep too.
This module imports only the stdlib (and the stdlib-only ``bench.timing``) at the top: the child's
cold start must include the imports.
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
import traceback
from typing import Optional

from sfpn_edge.bench.timing import percentiles_ms, time_calls

_T0 = time.perf_counter()

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
FIDELITY_BATCH = 8


# ----------------------------------------------------------------------------------------- parent
def child_env(threads: Optional[int]) -> dict:
    """The parent's environment with BLAS/OpenMP pools pinned to ``threads``.

    Only thread counts change: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and the rest pass through.
    """
    env = dict(os.environ)
    if threads:
        env.update({name: str(threads) for name in THREAD_ENV})
    return env


def run_child(spec: dict, timeout: float = 600.0) -> dict:
    """Measure ``spec`` in a new interpreter; always returns a dict with a ``status``."""
    cmd = [sys.executable, "-m", "sfpn_edge.bench.measure", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=child_env(spec.get("threads")))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"status": "failed", "reason": f"measurement process died: {tail}"}


# ------------------------------------------------------------------------------------------ child
def probe_batch(n: int, size: tuple, seed: int = 2024):
    """Deterministic image-like float32 NCHW batch (smooth blobs + fine noise, mean ~0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.uniform(-90.0, 90.0, (n, 3, h // 12 + 1, w // 12 + 1))
    smooth = coarse.repeat(12, axis=2).repeat(12, axis=3)[:, :, :h, :w]
    return np.ascontiguousarray(smooth + rng.normal(0.0, 12.0, (n, 3, h, w)), dtype=np.float32)


def min_cosine_rows(a, b) -> float:
    """Lowest cosine similarity between matching rows of ``a`` and ``b``."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    return float(cos.min())


def open_measured(spec: dict):
    """The model of a ``model`` spec: one of our backends, or ORT's default session (baseline)."""
    if spec.get("baseline"):
        from sfpn_edge.bench.baseline import DefaultSession

        return DefaultSession(spec["model"])
    from sfpn_edge.backends import open_model

    return open_model(spec["model"], spec["backend"], precision=spec["precision"], threads=spec["threads"])


def peer_inputs(model, n: int, seed: int = 2024):
    """A batch of ``n`` image-like inputs for a peer model, in its own shape and dtype."""
    import numpy as np

    spec = model.inputs[0]
    if len(spec.shape) != 4 or None in spec.shape[1:]:
        from sfpn_edge.errors import SfpnError

        raise SfpnError(f"peer model input {spec.name} is {spec.shape_text}: needs a fixed [N, C, H, W] image input")
    _, c, h, w = spec.shape
    x = probe_batch(n, (h, w), seed)
    x = x if c == 3 else np.ascontiguousarray(x[:, :1].repeat(c, axis=1))
    if spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(spec.dtype)
    return x.astype(spec.dtype)


def measure_model(spec: dict) -> dict:
    model = open_measured(spec)  # inside the cold-start window on purpose
    if spec.get("peer"):
        static = model.inputs[0].shape[0]
        make = lambda n, seed=2024: peer_inputs(model, static or n, seed)  # noqa: E731
    else:
        size = tuple(spec["input_size"])
        make = lambda n, seed=2024: probe_batch(n, size, seed)  # noqa: E731
    probe = make(FIDELITY_BATCH)
    one = probe[:1].copy()
    model.run(one)
    cold = time.perf_counter() - _T0

    import numpy as np

    settings = spec["settings"]
    for _ in range(settings["warmup"]):
        model.run(one)
    latency = percentiles_ms(time_calls(lambda: model.run(one), settings["latency_seconds"],
                                        settings["latency_iters"]))
    serving_rss = peak_rss_mb()  # load + batch-1 inference: what a verifier process holds
    throughput = {1: 1e3 / latency["p50_ms"]}
    for batch in settings["batches"]:
        x = make(batch, seed=batch)
        if len(x) != batch:       # a peer with a static batch: batch 1 only
            continue
        model.run(x)
        per_batch = time_calls(lambda: model.run(x), settings["batch_seconds"], 3)
        throughput[batch] = batch / float(np.median(per_batch))
    best = max(throughput, key=throughput.get)
    if spec.get("output"):
        np.save(spec["output"], model.run(probe)[0])
    return {
        "cold_start_s": cold,
        **latency,
        "peak_rss_mb": serving_rss,
        "peak_rss_sweep_mb": peak_rss_mb(),
        "best_batch": best,
        "throughput_fps": throughput[best],
        "throughput_by_batch": {str(b): v for b, v in throughput.items()},
        "describe": {k: v for k, v in model.describe().items() if isinstance(v, (str, int, float, bool))},
    }


def measure_stage(spec: dict) -> dict:
    from sfpn_edge.bench import stages

    return {"results": stages.run(spec["name"], spec)}


def measure_accuracy(spec: dict) -> dict:
    from sfpn_edge.bench import accuracy

    return accuracy.cfp(spec)


_KINDS = {"model": measure_model, "stage": measure_stage, "accuracy": measure_accuracy}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec. ``ru_maxrss`` would not
    do there: Linux carries the parent's high-water mark across fork + exec into the child.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        spec = json.loads(argv[0])
        result = {"status": "ok", **_KINDS[spec["kind"]](spec)}
        code = 0
    except Exception as exc:  # reported as the row's reason; the parent decides what it means
        from sfpn_edge.errors import SfpnError

        unavailable = isinstance(exc, (SfpnError, ImportError))
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError):  # a part of sfpn-edge or an optional extra is missing
            text = re.sub(r" \(/[^)]*\)$", "", text)  # drop the interpreter's "(/path/to/__init__.py)"
        result = {"status": "not available" if unavailable else "failed", "reason": text}
        if not unavailable:
            traceback.print_exc()
        code = 0 if unavailable else 1
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
