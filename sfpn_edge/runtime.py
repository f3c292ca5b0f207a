"""One runtime configuration: which backend, device, precision, threads and compile cache.

    rt = Runtime.resolve(backend="auto", precision="int8", threads=1)   # through the target policy
    embedder = FaceEmbedder(model_dir, runtime=rt)
    detector = make_detector("mtcnn", runtime=rt)

A ``Runtime`` is frozen and resolved once: ``auto`` (or a ``target``) becomes a concrete backend
and device, ``threads=None`` becomes ``sfpn_edge.threads.default_threads()``. Everything that runs
a network or a kernel takes its settings from one, so the embedder, the detector and the crop
kernel agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Union

from sfpn_edge.errors import SfpnError
from sfpn_edge.threads import check_threads


@dataclass(frozen=True)
class Runtime:
    """Where and how networks run. Build one with :meth:`resolve`; ``reason`` says why a target
    picked this backend (empty when the backend was named)."""

    backend: str = "onnxruntime"
    device: str = "CPU"
    precision: str = "fp32"
    threads: int = 1
    cache_dir: Optional[Path] = None
    target: Optional[str] = None
    reason: str = ""

    @classmethod
    def resolve(cls, backend: Optional[str] = None, *, device: Optional[str] = None, precision: Optional[str] = None,
                threads: Optional[int] = None, cache_dir: Union[str, Path, None] = None,
                target: Optional[str] = None, int8_gate: Optional[Mapping[str, str]] = None) -> "Runtime":
        """A checked Runtime. ``backend="auto"`` or a ``target`` (cpu, arm, vpu, auto) goes through
        the target policy (``sfpn_edge.backends.select``); a named backend is checked against the
        registry (its precisions; the device is checked when a model opens); None is onnxruntime.
        ``precision`` None: fp32 where the backend runs it, else its first precision (native: int8);
        ``"auto"``: int8 where this CPU has int8 dot products and the backend's int8 file passed its
        accuracy gate (``int8_gate``, from ``ModelDir.int8_gate``), else fp32."""
        from sfpn_edge.backends import registry

        threads = check_threads(threads)
        reason = ""
        if target is not None or backend == "auto":
            if target is not None and backend not in (None, "auto"):
                raise SfpnError("give a backend or a target, not both")
            from sfpn_edge.backends import select

            choice = select.choose(target or "auto", precision=precision or "fp32", int8_gate=int8_gate)
            backend, target, reason = choice.backend, choice.target, choice.reason
            precision, device = choice.precision or precision, device or choice.device
        spec = registry.get(backend or "onnxruntime")
        if precision == "auto":
            precision, reason = _auto_precision(spec, int8_gate or {})
        elif precision is None:
            precision = "fp32" if "fp32" in spec.precisions else spec.precisions[0]
        spec.check_precision(precision)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else None
        return cls(spec.name, (device or "CPU").upper(), precision, threads, cache, target, reason)

    def for_graphs(self) -> "Runtime":
        """The runtime for generic fp32 ONNX graphs (detector nets): this backend and device in
        fp32, or the backend's declared ``graph_backend`` when it runs the face model's own format
        only (native)."""
        from sfpn_edge.backends import registry

        spec = registry.get(self.backend)
        if spec.graph_backend is None:
            return replace(self, precision="fp32")
        return replace(self, backend=spec.graph_backend, device="CPU", precision="fp32", target=None,
                       reason=f"{self.backend} runs the face model only; other networks run on {spec.graph_backend}")

    def open(self, path: Union[str, Path], **options):
        """``path`` loaded with this runtime's backend (see ``sfpn_edge.backends.open_model``)."""
        from sfpn_edge.backends import registry

        return registry.open_model(path, self.backend, device=self.device, precision=self.precision,
                                   threads=self.threads, cache_dir=self.cache_dir, **options)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        return out


def _auto_precision(spec, int8_gate: Mapping[str, str]) -> tuple:
    """(precision, reason) for ``precision="auto"`` on the named backend ``spec``."""
    if "fp32" not in spec.precisions:
        return spec.precisions[0], f"{spec.name} runs {spec.precisions[0]} only"
    if "int8" not in spec.precisions:
        return "fp32", f"{spec.name} has no int8 path"
    from sfpn_edge import platform_info
    from sfpn_edge.backends import select

    why_not = select.int8_rejection(platform_info.detect(), spec.name, int8_gate)
    return ("fp32", f"fp32: {why_not}") if why_not else ("int8", select.int8_accepted(spec.name))


def make_runtime(runtime: Optional[Runtime], backend: Optional[str], precision: Optional[str],
                 device: Optional[str], threads: Optional[int], cache_dir=None,
                 int8_gate: Optional[Mapping[str, str]] = None) -> Runtime:
    """``runtime`` as given, or one resolved from the loose settings (not both); the defaults are
    ``auto``: the fastest backend and precision this machine and model have (``int8_gate``)."""
    if runtime is None:
        if backend is None and device is None:
            backend = "auto"  # a device alone keeps the named default backend (onnxruntime)
        return Runtime.resolve(backend, device=device, precision=precision or "auto", threads=threads,
                               cache_dir=cache_dir, int8_gate=int8_gate)
    if any(v is not None for v in (backend, precision, device, threads, cache_dir)):
        raise SfpnError("give a runtime or backend/precision/device/threads/cache_dir, not both")
    return runtime
