"""Post-training int8 quantization, calibrated on real face crops.

* ONNX Runtime: static QDQ quantization (per-channel int8 weights, 7-bit in the first conv,
  uint8 activations, MinMax ranges) of the fp32 ``model.onnx`` -> ``model_int8.onnx``.
* OpenVINO: NNCF post-training quantization of the fp32 model -> ``model_int8.xml`` when the
  ``quantize`` extra (nncf) is installed; otherwise the QDQ ONNX is converted to IR, which
  OpenVINO also runs as int8 (its FakeQuantize ops come from the Q/DQ pairs).
* native engine: an int8 plan -> ``model_native_int8.npz`` (``converters.native_export``).
* LiteRT: full-integer ``model_int8.tflite`` (``converters.tflite_quantize``), same crops and
  MinMax rule, when the model directory has ``model.tflite``.

A model is quantized once and run on any CPU. x86 CPUs without VNNI (AVX2, AVX-512 without
VNNI) multiply uint8 x int8 with vpmaddubsw (ONNX Runtime's MLAS, oneDNN in OpenVINO), which
saturates each sum of two products to int16. The first conv reads the image as uint8 around a
zero point of ~128, so its sums reach 2 * 255 * 127 and saturate (-4 points of CFP-FP accuracy on
such a CPU): its weights are 7-bit (|w| <= 64: 2 * 255 * 64 fits), as in NNCF's default overflow
fix. Later convs read sparse post-ReLU activations and do not saturate (the int8 kernels match the
float-simulated QDQ graph; tested); 7 bits in every conv (``reduce_range``) cost 0.7 point of
CFP-FP. VNNI (vpdpbusd) and ARM SDOT/UDOT accumulate in int32: no such saturation.

Calibration crops are a ``calibration_data.CalibrationSet``: by default the authors' three example
crops with deterministic augmentations (no dataset; what ``fetch-weights`` and ``convert`` use),
else the user's photos or CFP. Every int8 file is calibrated on the same set; its scheme, source
and count and how each file was made are recorded in the manifest under ``calibration``. Conversion-only
dependencies (onnx, onnxruntime.quantization, nncf) are imported inside the functions.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from sfpn_edge import models
from sfpn_edge.converters import int8_gate, native_export, tflite_quantize
from sfpn_edge.converters.calibration_data import (CalibrationSet, calibration_crops, cfp_calibration_samples,
                                                   check_crops, example_calibration)
from sfpn_edge.errors import SfpnError
from sfpn_edge.progress import Progress

ORT_INT8 = "model_int8.onnx"
OV_INT8 = "model_int8.xml"


class _Reader:
    """onnxruntime CalibrationDataReader over a crop array, one face per call."""

    def __init__(self, input_name: str, crops: np.ndarray):
        self.input_name = input_name
        self.crops = crops
        self.index = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.index >= len(self.crops):
            return None
        self.index += 1
        return {self.input_name: self.crops[self.index - 1:self.index]}

    def rewind(self) -> None:
        self.index = 0


def quantize_onnx(fp32_onnx: Path, out: Path, crops: np.ndarray, *, per_channel: bool = True,
                  quant_format: str = "QDQ") -> Path:
    """Static int8 quantization of ``fp32_onnx`` calibrated on ``crops`` float32 [N, 3, h, w]."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_crops(crops)
    import onnx

    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    input_name = graph.input[0].name
    first = {"reduce_range": True, **({"axis": 0} if per_channel else {})}  # 7 bits (module docstring)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Reader(input_name, crops),
            quant_format=QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                           "TensorQuantOverrides": {w: [first] for w in input_conv_weights(graph)}},
            nodes_to_exclude=output_tail(graph),
        )
    return Path(out)


def input_conv_weights(graph) -> list:
    """Weight names of the convs that read the graph input (through no other conv)."""
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights, frontier, seen = set(), [graph.input[0].name], set()
    while frontier:
        tensor = frontier.pop()
        seen.add(tensor)
        for node in consumers.get(tensor, []):
            if node.op_type == "Conv":
                weights.update(node.input[1:2] if node.input[0] == tensor else [])
            else:
                frontier.extend(o for o in node.output if o not in seen)
    return sorted(weights)


def output_tail(graph) -> list:
    """Names of the nodes from the last compute op (the global pool) to the graph outputs.

    They stay float: a uint8 descriptor (one scale for 1000 values) zeroes its small entries
    and costs ~1 % cosine, while pooling dequantized conv outputs keeps full resolution.
    """
    producer = {out: node for node in graph.node for out in node.output}
    tail, frontier = [], [o.name for o in graph.output]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in tail:
            continue
        tail.append(node.name)
        if node.op_type in ("Flatten", "Reshape", "Squeeze", "Identity"):
            frontier.extend(node.input[:1])
    return tail


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_openvino(fp32_model: Path, out_xml: Path, crops: np.ndarray, *,
                      qdq_onnx: Optional[Path] = None, use_nncf: Optional[bool] = None) -> str:
    """int8 IR at ``out_xml``: NNCF PTQ of ``fp32_model`` (returns "nncf"), or the QDQ ONNX
    ``qdq_onnx`` converted to IR (returns "qdq-onnx"). ``use_nncf`` None: NNCF when installed."""
    import openvino as ov

    check_crops(crops)
    if use_nncf is None:
        use_nncf = nncf_available()
    if use_nncf:
        import nncf

        model = ov.Core().read_model(str(fp32_model))
        dataset = nncf.Dataset(list(crops), lambda crop: crop[None])
        # FIRST_LAYER (NNCF's default, explicit): 7-bit weights in the first conv (module docstring)
        fix = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.FIRST_LAYER)
        quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=len(crops), advanced_parameters=fix)
        ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
        return "nncf"
    if qdq_onnx is None:
        raise SfpnError("OpenVINO int8 needs nncf (pip install 'sfpn-edge[quantize]') or a QDQ ONNX model")
    ov.save_model(ov.convert_model(str(qdq_onnx)), str(out_xml), compress_to_fp16=False)
    return "qdq-onnx"


def quantize_model_dir(model_dir: Path, calibration: CalibrationSet, *, use_nncf: Optional[bool] = None,
                       progress: bool = True) -> dict:
    """Add int8 models for ONNX Runtime, OpenVINO, the native engine and LiteRT, all calibrated on
    ``calibration``, to ``model_dir`` and record them in its manifest (``progress``: a bar on a
    terminal, else a line per model, on stderr)."""
    model_dir = Path(model_dir)
    crops, source = calibration.crops, calibration.record["source"]
    manifest = models.load_manifest(model_dir)
    h, w = manifest["input_size"]
    check_crops(crops)
    if crops.shape[1:] != (3, h, w):
        raise ValueError(f"calibration crops must be [N, 3, {h}, {w}], got {crops.shape}")
    fp32_onnx = models.model_file(model_dir, "onnxruntime", "fp32")
    files = manifest["files"]
    record = {**calibration.record, "count": int(len(crops)), "method": "minmax",
              "onnxruntime": "QDQ, per-channel int8 weights (7-bit in the first conv), uint8 activations"}
    steps = 2 + ("openvino" in files) + ("fp32" in files.get("litert", {}))
    report = Progress(steps, "int8 models", enabled=progress)
    # Build in a private temp dir, then move into place: a failure leaves the directory as it was.
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".quantize-") as tmp:
        tmp = Path(tmp)
        report.step(f"int8: ONNX Runtime QDQ on {len(crops)} calibration crops")
        quantize_onnx(fp32_onnx, tmp / ORT_INT8, crops)
        made = [ORT_INT8, native_export.NATIVE_INT8]
        report.step("int8: native engine plan")
        headroom = (native_export.EXAMPLES_HEADROOM if calibration.record.get("scheme") == "example-augmented"
                    else native_export.DEFAULT_HEADROOM)
        plan, arrays = native_export.build_plan(fp32_onnx, crops, manifest["mean"], source, headroom=headroom)
        native_export.save_plan(tmp / native_export.NATIVE_INT8, plan, arrays)
        record["native"] = native_export.describe(plan)
        if "openvino" in files:
            report.step("int8: OpenVINO IR")
            fp32_ov = models.model_file(model_dir, "openvino", "fp32")
            how = quantize_openvino(fp32_ov, tmp / OV_INT8, crops, qdq_onnx=tmp / ORT_INT8, use_nncf=use_nncf)
            made += [OV_INT8, Path(OV_INT8).with_suffix(".bin").name]
            record["openvino"] = ("NNCF post-training quantization (performance preset)" if how == "nncf"
                                  else "QDQ ONNX converted to IR")
        if "fp32" in files.get("litert", {}):
            report.step("int8: LiteRT")
            (tmp / tflite_quantize.INT8_FILE).write_bytes(tflite_quantize.quantize_tflite(
                models.model_file(model_dir, "litert", "fp32"), fp32_onnx, crops, description=source))
            made.append(tflite_quantize.INT8_FILE)
            record["litert"] = tflite_quantize.DESCRIPTION
        report.close()
        for name in made:
            (tmp / name).chmod(0o644)
            os.replace(tmp / name, model_dir / name)
    files["onnxruntime"]["int8"] = ORT_INT8
    files["native"] = {"int8": native_export.NATIVE_INT8}
    if "openvino" in record:
        files["openvino"]["int8"] = OV_INT8
    if "litert" in record:
        files["litert"]["int8"] = tflite_quantize.INT8_FILE
    manifest["calibration"] = record
    models.write_manifest(model_dir, manifest).chmod(0o644)  # a model dir is shared
    manifest[int8_gate.KEY] = int8_gate.record(model_dir, crops)
    return manifest


def cfp_calibration(cfp_root: Path, size: int, mean: Sequence[float], count: int = 200) -> CalibrationSet:
    """``count`` CFP fiducial-box crops (research reference; CFP is never needed at run time)."""
    samples = cfp_calibration_samples(cfp_root, count)
    crops = calibration_crops(samples, size, mean)
    return CalibrationSet(crops, {"scheme": "cfp", "source": f"CFP fiducial-box crops (+30 %), {len(crops)} images "
                                                             f"({sum('profile' in str(s.path) for s in samples)} profile)"})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sfpn_edge.converters.quantize MODEL_DIR (--examples DIR | --cfp CFP_ROOT [--count N])``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sfpn_edge.converters.quantize",
                                     description="Add int8 models to a model directory, calibrated on the authors' "
                                                 "example crops (augmented) or on CFP face crops.")
    parser.add_argument("model_dir", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--examples", type=Path, metavar="DIR", help="folder with the authors' image_example1..3.png")
    source.add_argument("--cfp", type=Path, help="CFP root (Data/, Protocol/)")
    parser.add_argument("--count", type=int, default=200, help="CFP calibration images (default 200)")
    args = parser.parse_args(argv)
    manifest = models.load_manifest(args.model_dir)
    size, mean = manifest["input_size"][0], manifest["mean"]
    calibration = (example_calibration(args.examples, size, mean) if args.examples is not None
                   else cfp_calibration(args.cfp, size, mean, args.count))
    manifest = quantize_model_dir(args.model_dir, calibration)
    print(json.dumps({"files": manifest["files"], "calibration": manifest["calibration"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
