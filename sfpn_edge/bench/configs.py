"""What to measure: model configurations (backend x precision x threads) and their availability,
plus the baseline every row's speed-up is computed against (:func:`baseline_candidate`)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from sfpn_edge import platform_info
from sfpn_edge.backends import registry
from sfpn_edge.backends.registry import PRECISIONS
from sfpn_edge.errors import SfpnError
from sfpn_edge.model_dir import ModelDir

THREADS = (1, 2)
BASELINE_LABEL = "ONNX Runtime, default session"


@dataclass(frozen=True)
class Settings:
    """How long to measure: the ``--quick`` and full presets."""

    warmup: int
    latency_seconds: float  # batch-1 timing runs at least this long ...
    latency_iters: int  # ... and at least this many calls
    batches: tuple  # batch sizes tried for best-batch throughput (batch 1 comes from latency)
    batch_seconds: float

    def as_dict(self) -> dict:
        return {**self.__dict__, "batches": list(self.batches)}


QUICK = Settings(warmup=3, latency_seconds=0.3, latency_iters=20, batches=(8,), batch_seconds=0.25)
FULL = Settings(warmup=10, latency_seconds=1.5, latency_iters=100, batches=(2, 4, 8, 16, 32), batch_seconds=0.5)


@dataclass(frozen=True)
class Candidate:
    """One row to measure: a model file for (backend, precision, threads), or why there is none.

    The ``baseline`` row is a plain ``onnxruntime.InferenceSession`` with default options (its
    threads stay None: the library picks them). A ``peer`` row is someone else's face model
    (``--peer-tflite``) on the litert backend: latency and memory only.
    """

    backend: str
    precision: str
    threads: Optional[int]  # None for a "not available" row that applies to every thread count
    model: Optional[Path] = None
    reason: str = ""
    baseline: bool = False
    peer: bool = False

    @property
    def available(self) -> bool:
        return self.model is not None

    @property
    def label(self) -> str:
        if self.baseline:
            return BASELINE_LABEL
        suffix = f" x{self.threads}" if self.threads else ""
        if self.peer:
            return f"peer {self.model.name if self.model else '?'} ({self.backend})"
        return f"{self.backend} {self.precision}{suffix}"


def parse_list(text: Optional[str], allowed: Sequence[str], what: str) -> tuple:
    """``"a,b"`` -> ("a", "b"), each checked against ``allowed``; None -> all of ``allowed``."""
    if text is None:
        return tuple(allowed)
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SfpnError(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(allowed)}")
    return items


def parse_threads(text: Optional[str]) -> tuple:
    """``"1,2"`` -> (1, 2); default: 1 and 2, capped at the CPUs this process may use."""
    if text is None:
        cpus = platform_info.detect().logical_cpus
        return tuple(t for t in THREADS if t <= max(cpus, 1))
    try:
        values = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise SfpnError(f"--threads takes positive integers like 1,2; got {text!r}") from None
    if not values or min(values) < 1:
        raise SfpnError(f"--threads takes positive integers like 1,2; got {text!r}")
    return values


def backends() -> tuple:
    """The registered backends, in registration order (read when asked: a backend registered at
    run time is benched like the built-in ones)."""
    return registry.names()


def unsupported_reason(backend: str, precision: str) -> str:
    """Why ``backend`` cannot run ``precision`` on this machine ('' when it can)."""
    spec = registry.get(backend)
    missing = spec.missing()
    if missing:
        return missing
    offered = spec.precisions
    if precision not in offered:
        return f"{backend} offers {'/'.join(offered)} only"
    if precision == "bf16":
        plat = platform_info.detect()
        if not any(plat.has(f) for f in ("avx512_bf16", "amx_bf16", "bf16")):
            return "this CPU has no bf16 instructions (it would silently compute in fp32)"
    return ""


def model_path(model_dir: Path, backend: str, precision: str) -> Path:
    """The file a CPU row loads (the runtime's own rule: bf16 runs the fp32 IR with a hint)."""
    return ModelDir(model_dir).file(backend, precision)


def model_candidates(
    model_dir: Path,
    backends: Optional[Iterable[str]] = None,
    precisions: Iterable[str] = PRECISIONS,
    threads: Iterable[int] = THREADS,
) -> list:
    """Every (backend, precision, threads) row, in display order, with its model file or reason."""
    rows = []
    for backend in backends if backends is not None else registry.names():
        for precision in precisions:
            reason = unsupported_reason(backend, precision)
            path = None
            if not reason:
                try:
                    path = model_path(model_dir, backend, precision)
                except SfpnError as exc:
                    reason = str(exc)
            if reason:
                rows.append(Candidate(backend, precision, None, reason=reason))
            else:
                rows.extend(Candidate(backend, precision, t, model=Path(path)) for t in threads)
    return rows


PEER_BACKEND = "litert"


def peer_candidates(path: Path, threads: Iterable[int]) -> list:
    """Rows timing a face .tflite that is not ours (``--peer-tflite``) on the litert backend."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix.lower() != ".tflite":
        raise SfpnError(f"--peer-tflite {path}: not a .tflite file")
    missing = registry.get(PEER_BACKEND).missing()
    if missing:
        return [Candidate(PEER_BACKEND, "peer", None, model=None, reason=missing, peer=True)]
    return [Candidate(PEER_BACKEND, "peer", t, model=path, peer=True) for t in threads]


def baseline_candidate(model_dir: Path) -> Candidate:
    """The reference row: the fp32 ``model.onnx`` in ONNX Runtime's default session."""
    try:
        importlib.import_module("onnxruntime")
        path = model_path(model_dir, "onnxruntime", "fp32")
    except ImportError as exc:
        return Candidate("onnxruntime", "fp32", None, reason=f"onnxruntime is not installed ({exc.name})",
                         baseline=True)
    except SfpnError as exc:
        return Candidate("onnxruntime", "fp32", None, reason=str(exc), baseline=True)
    return Candidate("onnxruntime", "fp32", None, model=Path(path), baseline=True)
