"""OpenVINO backend: IR (.xml + .bin) or ONNX files on CPU, GPU, NPU or AUTO.

Inference precision is always pinned (``f32`` unless bf16/fp16 is asked for): left alone, the CPU
plugin silently computes in bf16 on CPUs that have it. fp16 means the compressed-weight IR; on CPU
its weights are expanded and computed in f32, on GPU/NPU it runs in f16.
"""
from __future__ import annotations

import functools
import queue
from pathlib import Path
from typing import Optional

import numpy as np
import openvino as ov

from sfpn_edge.backends.base import MYRIAD_GONE, BackendBase, TensorSpec, check_model_file
from sfpn_edge.errors import ModelError, SfpnError

DEVICE_FAMILIES = ("CPU", "GPU", "NPU", "AUTO")


@functools.lru_cache(maxsize=1)
def core() -> ov.Core:
    """One OpenVINO Core per process (creating one loads every plugin's metadata)."""
    return ov.Core()


def available_devices() -> list:
    return list(core().available_devices)


def inference_precision(device: str, precision: str) -> Optional[str]:
    """The INFERENCE_PRECISION_HINT for ``precision`` on ``device`` (None: leave the device default)."""
    family = device.split(".")[0]
    if family == "NPU":
        return None  # NPU compiles its own (f16/int8) precision and rejects the hint
    if precision == "bf16":
        return "bf16"
    if precision == "fp16" and family == "GPU":
        return "f16"
    return "f32"


class OpenVinoBackend(BackendBase):
    name = "openvino"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "CPU",
        precision: str = "fp32",
        threads: int = 1,
        cache_dir: Optional[Path] = None,
        batch: Optional[int] = None,
    ):
        path = check_model_file(path, (".xml", ".onnx"))
        device = device.upper()
        _check_device(device)
        super().__init__(path, device, precision, threads)
        model = _read(path)
        if batch is not None or device.startswith("NPU"):
            _fix_batch(model, batch or 1, static=device.startswith("NPU"))
        config = self._config(cache_dir)
        blobs_before = _blobs(cache_dir)
        try:
            self.compiled = core().compile_model(model, device, config)
        except RuntimeError as exc:
            raise ModelError(f"openvino cannot compile {path.name} for {device}: {_first_line(exc)}") from None
        if cache_dir is not None:
            self.cache_hit = bool(blobs_before) and _blobs(cache_dir) == blobs_before
        self.inputs = [
            TensorSpec(_port_name(p, i, "input"), np.dtype(p.get_element_type().to_dtype()), _shape(p))
            for i, p in enumerate(self.compiled.inputs)
        ]
        self.output_names = [_port_name(p, i, "output") for i, p in enumerate(self.compiled.outputs)]
        self._check_io()
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # infer requests are not thread-safe

    def _config(self, cache_dir: Optional[Path]) -> dict:
        config = {"PERFORMANCE_HINT": "LATENCY"}
        hint = inference_precision(self.device, self.precision)
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if self.device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = self.threads
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        return config

    def run(self, *inputs: np.ndarray) -> list:
        arrays = self.check_inputs(inputs)
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            results = request.infer(dict(enumerate(arrays)), share_inputs=True, share_outputs=False)
            return [np.asarray(results[port]) for port in self.compiled.outputs]
        finally:
            self._idle.put(request)

    def describe(self) -> dict:
        info = {**super().describe(), "version": ov.get_version()}
        for key in ("EXECUTION_DEVICES", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
            try:
                value = self.compiled.get_property(key)
            except RuntimeError:
                continue
            info[key.lower()] = value.get_type_name() if isinstance(value, ov.Type) else value
        return info


def _check_device(device: str) -> None:
    family = device.split(".")[0]
    if family == "MYRIAD":
        raise SfpnError(MYRIAD_GONE)
    if family not in DEVICE_FAMILIES:
        raise SfpnError(f"openvino has no device {device!r}; choose from {list(DEVICE_FAMILIES)}")
    available = available_devices()
    if family != "AUTO" and not any(d == device or d.split(".")[0] == device for d in available):
        raise SfpnError(f"openvino device {device} is not available here; available: {available}")


def _read(path: Path) -> ov.Model:
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelError(f"{path.name}: its weights file {path.with_suffix('.bin').name} is missing")
    try:
        if path.suffix.lower() == ".onnx":  # straight to the ONNX frontend: no noisy guessing
            frontend = _onnx_frontend()
            return frontend.convert(frontend.load(str(path)))
        return core().read_model(str(path))
    except Exception as exc:  # RuntimeError, or the frontends' GeneralFailure (not a RuntimeError)
        raise ModelError(f"openvino cannot read {path.name}: {_first_line(exc)}") from None


def _fix_batch(model: ov.Model, batch: int, static: bool) -> None:
    """Fix the batch dimension; with ``static`` (NPU) every other dimension must be fixed too."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    shapes = {}
    for port in model.inputs:
        dims = list(port.get_partial_shape())
        if dims:
            dims[0] = ov.Dimension(batch)
        if static and any(d.is_dynamic for d in dims):
            raise ModelError(
                f"NPU needs static shapes but input {port.get_any_name()} has dynamic "
                f"dimensions {port.get_partial_shape()} beyond the batch"
            )
        shapes[port] = ov.PartialShape(dims)
    try:
        model.reshape(shapes)
    except RuntimeError as exc:
        raise ModelError(f"cannot reshape the model to batch {batch}: {_first_line(exc)}") from None


def _shape(port) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())


def _port_name(port, index: int, kind: str) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:
        return f"{kind}{index}"


def _blobs(cache_dir: Optional[Path]) -> set:
    if cache_dir is None or not Path(cache_dir).is_dir():
        return set()
    return {p.name for p in Path(cache_dir).glob("*.blob")}


@functools.lru_cache(maxsize=1)
def _onnx_frontend():
    from openvino.frontend import FrontEndManager

    return FrontEndManager().load_by_framework("onnx")


def _first_line(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (they open with source-location lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '", "FrontEnd API failed"))]
    return (useful or lines or [type(exc).__name__])[0]
