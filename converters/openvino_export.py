"""ONNX -> OpenVINO IR: fp32, fp16-compressed weights, and a static batch-1 variant for NPUs."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from sfpn_edge.backends.registry import pip_hint
from sfpn_edge.errors import SfpnError

FP32_XML = "model.xml"
FP16_XML = "model_fp16.xml"
STATIC_XML = "model_static.xml"   # batch 1, fp32 weights: NPU plugins need static shapes


def export_openvino(onnx_path: Path, out_dir: Path) -> Dict[str, str]:
    """Write the three IR variants next to each other; returns {variant: xml file name}."""
    try:
        import openvino as ov
    except ImportError:
        raise SfpnError(f"writing the OpenVINO IR needs OpenVINO: {pip_hint('openvino')}") from None

    out_dir = Path(out_dir)
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(out_dir / FP32_XML), compress_to_fp16=False)
    ov.save_model(model, str(out_dir / FP16_XML), compress_to_fp16=True)
    static = model.clone()
    static.reshape([1, *static.inputs[0].get_partial_shape()[1:].to_shape()])
    ov.save_model(static, str(out_dir / STATIC_XML), compress_to_fp16=False)
    return {"fp32": FP32_XML, "fp16": FP16_XML, "static_fp32": STATIC_XML}
