"""Fold a descriptor calibration into the exported graphs: ``model_cal.onnx`` and ``model_cal.xml``.

The calibrated model's output ``descriptor`` [N, K] is ``l2n((l2n(x) - mean) @ projection)``
of the original 1000-d output ``x``: ReduceL2 -> Max(eps) -> Div -> Sub -> MatMul -> again
normalised. The network stays untouched; a 128-d calibrated model costs a 1000x128 matmul
(0.05 % of the network) and its galleries are 8x smaller. Conversion-only: imports onnx/openvino.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from sfpn_edge import models
from sfpn_edge.calibration import Calibration
from sfpn_edge.converters.onnx_export import IR_VERSION, OUTPUT_NAME
from sfpn_edge.errors import ModelError

ONNX_CAL = "model_cal.onnx"
IR_CAL = "model_cal.xml"
EPS = 1e-12


def _normalise_nodes(helper, src: str, out: str, prefix: str, eps_name: str) -> List:
    return [
        helper.make_node("ReduceL2", [src], [f"{prefix}/norm"], name=f"{prefix}/norm", axes=[1], keepdims=1),
        helper.make_node("Max", [f"{prefix}/norm", eps_name], [f"{prefix}/safe_norm"], name=f"{prefix}/safe_norm"),
        helper.make_node("Div", [src, f"{prefix}/safe_norm"], [out], name=f"{prefix}/div"),
    ]


def bake_onnx(src: Path, dest: Path, calibration: Calibration) -> Path:
    """Write ``src`` (output ``descriptor`` [N, D]) with the calibration appended to ``dest``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    outputs = [o for o in graph.output if o.name == OUTPUT_NAME]
    if len(graph.output) != 1 or not outputs:
        raise ModelError(f"{src}: expected one output named {OUTPUT_NAME!r}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13 or opset >= 18:
        raise ModelError(f"{src}: opset {opset} not supported for baking (13..17)")
    raw = "descriptor_raw"
    for node in graph.node:  # rename the network's output; the calibrated one takes its name
        node.output[:] = [raw if o == OUTPUT_NAME else o for o in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array(EPS, np.float32), "calibration/eps"),
        numpy_helper.from_array(calibration.mean, "calibration/mean"),
    ])
    nodes = _normalise_nodes(helper, raw, "calibration/unit", "calibration/l2n_in", "calibration/eps")
    nodes.append(helper.make_node("Sub", ["calibration/unit", "calibration/mean"], ["calibration/centred"],
                                  name="calibration/sub_mean"))
    last = "calibration/centred"
    if calibration.projection is not None:
        graph.initializer.append(numpy_helper.from_array(calibration.projection, "calibration/projection"))
        nodes.append(helper.make_node("MatMul", [last, "calibration/projection"], ["calibration/projected"],
                                      name="calibration/project"))
        last = "calibration/projected"
    nodes += _normalise_nodes(helper, last, OUTPUT_NAME, "calibration/l2n_out", "calibration/eps")
    graph.node.extend(nodes)
    batch = outputs[0].type.tensor_type.shape.dim[0]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(
        OUTPUT_NAME, TensorProto.FLOAT, [batch.dim_param or batch.dim_value or "N", calibration.dim_out]))
    model.doc_string = (model.doc_string + f"; descriptor calibration {calibration.method} "
                        f"{calibration.dim_in}->{calibration.dim_out} ({calibration.digest[:16]})")
    model.ir_version = min(model.ir_version, IR_VERSION) if model.ir_version else IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(dest))
    return Path(dest)


def bake(model_dir: Path, calibration: Calibration) -> Dict[str, str]:
    """Bake ``calibration`` into ``model_dir``'s fp32 ONNX and IR; returns {backend: file}.

    The files are written beside the model under temporary names and renamed into place.
    """
    import openvino as ov

    model_dir = Path(model_dir)
    calibration.check_model(models.load_manifest(model_dir), "the calibration to bake")
    src = models.model_file(model_dir, "onnxruntime", "fp32")
    tmp_onnx = model_dir / f".{ONNX_CAL}.tmp"
    tmp_xml = model_dir / f".tmp_{IR_CAL}"
    try:
        bake_onnx(src, tmp_onnx, calibration)
        ov.save_model(ov.convert_model(str(tmp_onnx)), str(tmp_xml), compress_to_fp16=False)
        tmp_xml.with_suffix(".bin").replace((model_dir / IR_CAL).with_suffix(".bin"))
        tmp_xml.replace(model_dir / IR_CAL)
        tmp_onnx.replace(model_dir / ONNX_CAL)
    except OSError as exc:
        raise ModelError(f"cannot write baked models to {model_dir}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp_onnx, tmp_xml, tmp_xml.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    return {"onnxruntime": ONNX_CAL, "openvino": IR_CAL}
