"""ONNX Runtime backend: CPU execution provider (plus XNNPACK where the installed build has it).

Precision is a property of the ONNX file (fp32 or a quantized int8 graph); ORT on CPU has no
fp16/bf16 compute path worth offering, so those are refused with the reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from sfpn_edge import platform_info
from sfpn_edge.backends.base import BackendBase, TensorSpec, check_model_file, check_precision
from sfpn_edge.cache import sha256_file
from sfpn_edge.errors import ModelError, SfpnError

DEVICES = {"CPU": "CPUExecutionProvider", "XNNPACK": "XnnpackExecutionProvider"}

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def available_devices() -> list:
    providers = ort.get_available_providers()
    return [dev for dev, provider in DEVICES.items() if provider in providers]


class OnnxRuntimeBackend(BackendBase):
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "CPU",
        precision: str = "fp32",
        threads: int = 1,
        cache_dir: Optional[Path] = None,
        spinning: bool = False,
    ):
        path = check_model_file(path, (".onnx", ".ort"))
        device = device.upper()
        if device not in DEVICES:
            raise SfpnError(f"onnxruntime has no device {device!r}; choose from {sorted(DEVICES)}")
        if device not in available_devices():
            raise SfpnError(
                f"this onnxruntime build has no {DEVICES[device]}; available: {ort.get_available_providers()}"
            )
        check_precision(self.name, precision, ": its CPU kernels compute fp16/bf16 graphs in fp32 behind Cast "
                        "nodes (slower, no gain); use backend='openvino' for fp16/bf16, or int8 for speed")
        super().__init__(path, device, precision, threads)
        self.spinning = spinning
        options = self._session_options()
        providers = self._providers()
        self.session = self._create_session(options, providers, cache_dir)
        self.inputs = [
            TensorSpec(i.name, np.dtype(_ORT_DTYPES.get(i.type, np.float32)), _shape(i.shape))
            for i in self.session.get_inputs()
        ]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._check_io()

    def _session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        # XNNPACK runs its own pool; the ORT pool then only handles the ops it leaves behind.
        options.intra_op_num_threads = 1 if self.device == "XNNPACK" else self.threads
        spin = "1" if self.spinning else "0"  # spinning workers steal the CPU from other work
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.log_severity_level = 3
        return options

    def _providers(self) -> list:
        if self.device == "XNNPACK":
            return [("XnnpackExecutionProvider", {"intra_op_num_threads": self.threads}),
                    "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _create_session(self, options, providers, cache_dir) -> ort.InferenceSession:
        if cache_dir is None:
            return _session(self.path, options, providers)
        cached = Path(cache_dir) / f"ort-{self._cache_key(providers)}.onnx"
        if cached.is_file():
            # Already optimized for this CPU/ORT/options: skip the optimizer.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                session = _session(cached, options, providers)
                self.cache_hit = True
                return session
            except ModelError:  # a damaged cache entry is rebuilt, never fatal
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.cache_hit = False
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".ort-", suffix=".onnx", dir=cached.parent)
            os.close(fd)
        except OSError as exc:
            raise SfpnError(f"cannot write the model cache in {cached.parent}: {exc.strerror or exc}") from None
        options.optimized_model_filepath = tmp
        try:
            session = _session(self.path, options, providers)
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return session

    def _cache_key(self, providers) -> str:
        # Optimized graphs may hold layout-specific (NCHWc) kernels: key on the CPU features too.
        plat = platform_info.detect()
        parts = {
            "model": sha256_file(self.path),
            "ort": ort.__version__,
            "providers": json.dumps(providers, sort_keys=True),
            "arch": plat.arch,
            "features": plat.features,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def run(self, *inputs: np.ndarray) -> list:
        arrays = self.check_inputs(inputs)
        feed = {spec.name: a for spec, a in zip(self.inputs, arrays)}
        return self.session.run(self.output_names, feed)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "providers": self.session.get_providers(),
            "version": ort.__version__,
            "spinning": self.spinning,
        }


def _shape(dims) -> tuple:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


def _session(path: Path, options, providers) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load {path.name}: {message}") from None
