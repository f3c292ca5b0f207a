"""Inference backends behind one small protocol.

    model = open_model("model.onnx", backend="onnxruntime", threads=1)
    (descriptor,) = model.run(batch)

``open_model`` loads any ONNX / OpenVINO IR file (the face model, the MTCNN nets ...) and the
native int8 plan of the face model; target
selection (which backend and device suit this machine) lives in ``sfpn_edge.backends.select``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from sfpn_edge.backends.base import PRECISIONS, Backend, TensorSpec, check_threads
from sfpn_edge.errors import SfpnError

BACKENDS = ("onnxruntime", "openvino")      # run any ONNX / OpenVINO IR file
FACE_BACKENDS = BACKENDS + ("native",)      # the face model also has a native int8 plan

__all__ = ["BACKENDS", "FACE_BACKENDS", "PRECISIONS", "Backend", "TensorSpec", "open_model"]


def open_model(
    path: Union[str, Path],
    backend: str = "onnxruntime",
    *,
    device: str = "CPU",
    precision: str = "fp32",
    threads: Optional[int] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    **options,
) -> Backend:
    """Load ``path`` with ``backend`` on ``device``.

    ``precision`` labels what the file holds (fp32 / int8) and, for OpenVINO, pins the inference
    precision (fp32 -> f32, bf16 explicit). ``threads`` None keeps the library default (one per
    core). ``cache_dir`` enables compiled-model caching (ORT optimized graph / OpenVINO blob) so
    the next start is faster (a native plan has nothing to compile). Backend-specific ``options``:
    onnxruntime ``spinning``, openvino ``batch`` (reshape to a static batch, as NPU requires),
    native ``portable`` (skip the VNNI kernels).
    """
    threads = check_threads(threads)
    if precision not in PRECISIONS:
        raise SfpnError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cache = Path(cache_dir) if cache_dir is not None else None
    if backend == "onnxruntime":
        from sfpn_edge.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device=device, precision=precision, threads=threads,
                                  cache_dir=cache, **options)
    if backend == "openvino":
        from sfpn_edge.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, device=device, precision=precision, threads=threads,
                               cache_dir=cache, **options)
    if backend == "native":
        from sfpn_edge.backends.native_backend import NativeBackend

        return NativeBackend(path, device=device, precision=precision, threads=threads, **options)
    raise SfpnError(f"unknown backend {backend!r}; choose from {FACE_BACKENDS}")
