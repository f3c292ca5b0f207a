"""Inference backends behind one small protocol, declared in one registry.

    model = open_model("model.onnx", backend="onnxruntime", threads=1)
    (descriptor,) = model.run(batch)

``open_model`` loads any ONNX / OpenVINO IR file (the face model, the MTCNN nets ...) and the
native int8 plan of the face model. The built-in backends are registered below; a new one is a
module plus one ``register(BackendSpec(...))`` call (see ``registry``), here or in a plugin module
named in ``$SFPN_EDGE_PLUGINS``. Target selection (which
backend and device suit this machine) lives in ``sfpn_edge.backends.select``.
"""
from __future__ import annotations

from sfpn_edge import plugins
from sfpn_edge.backends.base import Backend, TensorSpec
from sfpn_edge.backends.registry import PRECISIONS, BackendSpec, get, names, open_model, register, specs

__all__ = ["PRECISIONS", "Backend", "BackendSpec", "TensorSpec", "get", "names", "open_model", "register", "specs"]

register(BackendSpec(
    "onnxruntime", "sfpn_edge.backends.onnxruntime_backend:OnnxRuntimeBackend", ("fp32", "int8"),
    summary="ONNX Runtime, CPU provider (XNNPACK where the build has it)"))
register(BackendSpec(
    "openvino", "sfpn_edge.backends.openvino_backend:OpenVinoBackend", ("fp32", "fp16", "bf16", "int8"),
    precision_files={"bf16": "fp32"}, static_files="openvino_static", static_devices=("NPU",), extra="openvino",
    summary="OpenVINO on CPU, GPU, NPU or AUTO (bf16: inference hint on the fp32 IR)"))
register(BackendSpec(
    "native", "sfpn_edge.backends.native_backend:NativeBackend", ("int8",), graph_backend="onnxruntime",
    summary="the int8 plan on sfpn-edge's own kernels (fast with AVX-512 VNNI)"))
register(BackendSpec(
    "litert", "sfpn_edge.backends.litert_backend:LiteRtBackend", ("fp32", "fp16", "int8"),
    graph_backend="onnxruntime", extra="litert",
    summary="LiteRT (TFLite interpreter) with the XNNPACK delegate, .tflite files, CPU"))
plugins.load()
