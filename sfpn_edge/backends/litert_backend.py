"""LiteRT backend (``ai-edge-litert``, the TFLite interpreter): .tflite files on the CPU, XNNPACK on.

LiteRT applies the XNNPACK delegate by default (NEON on ARM, SSE/AVX on x86); ``xnnpack=False``
runs the builtin kernels instead. ``threads`` is the interpreter's ``num_threads`` (XNNPACK's pool).

Layout: TFLite image tensors are NHWC; this backend takes and returns 4-D tensors NCHW like every
other backend (transposed on the way in and out), so the face model's input stays float32
[N, 3, 113, 113], RGB minus the mean.

An interpreter serves one call at a time: idle interpreters wait in a pool per input shape
(a batch size is a ``resize_tensor_input`` + ``allocate_tensors``, done once per interpreter and
shape), so concurrent callers each get their own and repeated batch sizes cost nothing.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from ai_edge_litert import interpreter as litert

from sfpn_edge.backends.base import BackendBase, TensorSpec, check_model_file
from sfpn_edge.backends.select import litert_version
from sfpn_edge.errors import ModelError, SfpnError

MAX_MODEL_BYTES = 256 << 20
MAX_SHAPES = 8          # input shapes with interpreters kept ready; the oldest is dropped beyond


def available_devices() -> list:
    return ["CPU"]


class LiteRtBackend(BackendBase):
    name = "litert"

    def __init__(self, path: Path, *, device: str = "CPU", precision: str = "fp32", threads: int = 1,
                 cache_dir: Optional[Path] = None, xnnpack: bool = True):
        path = check_model_file(path, (".tflite",))
        if device.upper() != "CPU":
            raise SfpnError(f"the litert backend runs on the CPU only, not {device!r}")
        super().__init__(path, "CPU", precision, threads)
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise ModelError(f"{path.name}: {path.stat().st_size:,} bytes is over the {MAX_MODEL_BYTES:,}-byte cap")
        self.xnnpack = xnnpack
        self._content = path.read_bytes()
        first = self._interpreter()
        details = first.get_input_details()
        self._input_index = [d["index"] for d in details]
        self._output_index = [d["index"] for d in first.get_output_details()]
        self.inputs = [TensorSpec(d["name"], np.dtype(d["dtype"]), _nchw(_signature(d))) for d in details]
        self.output_names = [d["name"] for d in first.get_output_details()]
        self._check_io()
        self.delegate_nodes = _delegate_nodes(first)
        self._lock = threading.Lock()
        self._idle: Dict[Tuple[tuple, ...], queue.SimpleQueue] = {}
        self._release(self._declared_shapes(), first)

    def _interpreter(self):
        resolver = (litert.OpResolverType.AUTO if self.xnnpack
                    else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            interp = litert.Interpreter(model_content=self._content, num_threads=self.threads,
                                        experimental_op_resolver_type=resolver)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"litert cannot load {self.path.name}: {_first_line(exc)}") from None
        return interp

    def _declared_shapes(self) -> Tuple[tuple, ...]:
        return tuple(tuple(1 if d is None else d for d in spec.shape) for spec in self.inputs)

    def _acquire(self, shapes: Tuple[tuple, ...]):
        with self._lock:
            pool = self._idle.get(shapes)
        if pool is not None:
            try:
                return pool.get_nowait()
            except queue.Empty:
                pass
        interp = self._interpreter()
        if shapes != self._declared_shapes():
            try:
                for index, shape in zip(self._input_index, shapes):
                    interp.resize_tensor_input(index, list(_nhwc(shape)), strict=True)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"{self.path.name}: cannot run input shapes {list(shapes)}: "
                                 f"{_first_line(exc)}") from None
        return interp

    def _release(self, shapes: Tuple[tuple, ...], interp) -> None:
        with self._lock:
            if shapes not in self._idle:
                if len(self._idle) >= MAX_SHAPES:
                    self._idle.pop(next(iter(self._idle)))
                self._idle[shapes] = queue.SimpleQueue()
            self._idle[shapes].put(interp)

    def run(self, *inputs: np.ndarray) -> list:
        arrays = self.check_inputs(inputs)
        shapes = tuple(a.shape for a in arrays)
        interp = self._acquire(shapes)
        try:
            for index, array in zip(self._input_index, arrays):
                interp.set_tensor(index, _to_nhwc(array))
            interp.invoke()
            outputs = [_to_nchw(interp.get_tensor(index)) for index in self._output_index]
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"litert failed to run {self.path.name}: {_first_line(exc)}") from None
        self._release(shapes, interp)
        return outputs

    def describe(self) -> dict:
        return {**super().describe(), "version": litert_version(), "xnnpack": self.xnnpack_state,
                "layout": "NCHW in and out (the .tflite's NHWC tensors transposed)"}

    @property
    def xnnpack_state(self) -> str:
        """"on (N delegated partitions)", "off (builtin kernels)" or "requested, not applied"."""
        if not self.xnnpack:
            return "off (builtin kernels)"
        if self.delegate_nodes is None:
            return "requested (partitions not reported by this LiteRT)"
        if not self.delegate_nodes:
            return "requested, not applied"
        return f"on ({self.delegate_nodes} delegated partition{'s' if self.delegate_nodes > 1 else ''})"


def _signature(detail: dict) -> tuple:
    dims = detail.get("shape_signature")
    dims = detail["shape"] if dims is None or len(dims) == 0 else dims
    return tuple(int(d) if d > 0 else None for d in dims)


def _nchw(shape: tuple) -> tuple:
    return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape


def _nhwc(shape: tuple) -> tuple:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


def _to_nhwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def _to_nchw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if array.ndim == 4 else array


def _delegate_nodes(interp) -> Optional[int]:
    """Delegate (XNNPACK) partitions in the execution graph; None where this LiteRT hides them."""
    try:
        wrapper = interp._interpreter   # the node list is not in the public API
        return sum(wrapper.NodeName(i) == "DELEGATE" for i in range(wrapper.NumNodes()))
    except (AttributeError, TypeError, RuntimeError):
        return None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
