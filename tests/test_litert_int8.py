"""model_int8.tflite: full-integer form, agreement with fp32, XNNPACK vs TFLite's builtin kernels."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="the litert extra (ai-edge-litert) is not installed")
pytest.importorskip("onnx")

from sfpn_edge import models
from sfpn_edge.backends import open_model
from sfpn_edge.converters import tflite_export, tflite_format, tflite_quantize
from sfpn_edge.converters.calibration_data import calibration_crops, cfp_calibration_samples
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ModelError

CALIBRATION = 32


@pytest.fixture(scope="module")
def int8_dir(model_dir, cfp_root, tmp_path_factory):
    """A copy of the converted model with model_int8.tflite calibrated on 32 CFP crops (float pool)
    and model_int8_pool.tflite (int8 pool) beside it."""
    out = tmp_path_factory.mktemp("litert-int8") / "model"
    shutil.copytree(model_dir, out)
    manifest = models.load_manifest(out)
    crops = calibration_crops(cfp_calibration_samples(cfp_root, CALIBRATION), 113, manifest["mean"])
    lowered = tflite_export.read_layers(out / "model.tflite")
    ranges = tflite_quantize.calibrate(lowered, out / "model.onnx", crops)
    for pool, name in (("float", tflite_quantize.INT8_FILE), ("int8", "model_int8_pool.tflite")):
        (out / name).write_bytes(tflite_quantize.to_tflite_int8(lowered, ranges, pool=pool))
    manifest["files"]["litert"]["int8"] = tflite_quantize.INT8_FILE
    models.write_manifest(out, manifest)
    return out


@pytest.fixture(scope="module")
def faces(cfp_root, int8_dir):
    """12 CFP crops not used for calibration."""
    mean = models.load_manifest(int8_dir)["mean"]
    return calibration_crops(cfp_calibration_samples(cfp_root, 300)[200:212], 113, mean)


@pytest.fixture(scope="module")
def fp32(int8_dir, faces):
    return FaceEmbedder(int8_dir, "onnxruntime", "fp32", threads=1).embed(faces, normalize=True)


def test_int8_file_is_full_integer(int8_dir):
    model = tflite_format.decode((int8_dir / tflite_quantize.INT8_FILE).read_bytes())
    t = model.tensors
    kinds = [op.kind for op in model.ops]
    assert kinds[0] == "QUANTIZE" and kinds[-2:] == ["DEQUANTIZE", "MEAN"]      # float pool
    assert t[model.inputs[0]].dtype == t[model.outputs[0]].dtype == tflite_format.FLOAT32
    convs = [op for op in model.ops if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 26
    for op in convs:
        x, w, b = (t[i] for i in op.inputs)
        assert x.dtype == w.dtype == t[op.outputs[0]].dtype == tflite_format.INT8 and b.dtype == tflite_format.INT32
        axis = 0 if op.kind == "CONV_2D" else 3
        assert w.quant.axis == axis and len(w.quant.scale) == w.shape[axis] and not w.quant.zero_point.any()
        assert np.abs(w.data.astype(int)).max() == 127                   # 8 bits everywhere, the first conv too
        np.testing.assert_allclose(b.quant.scale, x.quant.scale[0] * w.quant.scale, rtol=1e-6)
    for op in model.ops:
        if op.kind == "CONCATENATION":       # one scale through a concat: XNNPACK's rule, a plain copy
            params = {(float(t[i].quant.scale[0]), int(t[i].quant.zero_point[0])) for i in op.inputs + op.outputs}
            assert len(params) == 1
    assert (int8_dir / tflite_quantize.INT8_FILE).stat().st_size < 0.3 * (int8_dir / "model.tflite").stat().st_size


@pytest.mark.parametrize("name", [tflite_quantize.INT8_FILE, "model_int8_pool.tflite"])
def test_int8_follows_fp32(int8_dir, faces, fp32, name):
    net = open_model(int8_dir / name, "litert", precision="int8", threads=1)
    (out,) = net.run(faces)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    cos = (out * fp32).sum(1)
    assert cos.min() > 0.995 and np.median(cos) > 0.998, cos
    assert net.describe()["xnnpack"] == "on (1 delegated partition)"      # every op runs in XNNPACK


def test_xnnpack_matches_builtin_kernels(int8_dir, faces):
    """XNNPACK's int8 kernels against TFLite's builtin ones on the whole network: both accumulate
    exactly in int32 and differ only in requantization rounding (+-1 step, layer after layer)."""
    path = int8_dir / tflite_quantize.INT8_FILE
    (xnn,) = open_model(path, "litert", precision="int8", xnnpack=True).run(faces)
    (ref,) = open_model(path, "litert", precision="int8", xnnpack=False).run(faces)
    cos = (xnn * ref).sum(1) / np.linalg.norm(xnn, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999, cos


def test_first_conv_does_not_saturate(int8_dir, faces):
    """The first conv alone with 8-bit weights (its output averaged per channel, in float): XNNPACK
    and the builtin kernels agree to a fraction of one quantization step, where a kernel
    saturating pair sums (vpmaddubsw-style, the reason for 7-bit weights on ORT/OpenVINO) would
    be off by many steps on the bright, high-contrast pixels."""
    lowered = tflite_export.read_layers(int8_dir / "model.tflite")
    ranges = tflite_quantize.calibrate(lowered, int8_dir / "model.onnx", faces)
    conv1 = lowered.layers[0]
    pool = tflite_export.Layer("mean", "conv1/mean", [conv1.name], (1, 1, conv1.shape[2]), attrs={"keep_dims": 0})
    path = int8_dir.parent / "conv1_int8.tflite"
    path.write_bytes(tflite_quantize.to_tflite_int8(tflite_export.Lowered(lowered.input_shape, [conv1, pool]),
                                                    {**ranges, pool.name: (0.0, 1.0)}))
    (xnn,) = open_model(path, "litert", precision="int8", xnnpack=True).run(faces)
    (ref,) = open_model(path, "litert", precision="int8", xnnpack=False).run(faces)
    step = ranges[conv1.name][1] / 255
    assert np.abs(xnn - ref).max() < 0.2 * step and ref.max() > 5 * step     # measured: 0.06 step


def test_embedder_int8_and_threads(int8_dir, faces):
    one = FaceEmbedder(int8_dir, "litert", "int8", threads=1).embed(faces)
    two = FaceEmbedder(int8_dir, "litert", "int8", threads=2).embed(faces)
    np.testing.assert_array_equal(one, two)


def test_signed_activations_are_refused(int8_dir, faces):
    lowered = tflite_export.read_layers(int8_dir / "model.tflite")
    lowered.layers[0].attrs["relu"] = 0
    with pytest.raises(ModelError, match="layer 'relu_conv1' may be negative"):
        tflite_quantize.calibrate(lowered, int8_dir / "model.onnx", faces)
