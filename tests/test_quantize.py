"""int8 quantization calibrated on real CFP crops, and its accuracy against fp32 on a CFP-FP subset."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from sfpn_edge import models
from sfpn_edge.converters import calibration_data
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ModelError

quantize = pytest.importorskip("sfpn_edge.converters.quantize")
pytest.importorskip("onnx")

CALIBRATION = 32  # images: enough for stable MinMax ranges, quick in CI


@pytest.fixture(scope="module")
def calibration(cfp_root, model_dir):
    samples = calibration_data.cfp_calibration_samples(cfp_root, CALIBRATION)
    return samples, calibration_data.calibration_crops(samples, 113, models.load_manifest(model_dir)["mean"])


@pytest.fixture(scope="module")
def int8_dir(model_dir, calibration, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(model_dir, out)
    quantize.quantize_model_dir(out, calibration[1], f"CFP test subset, {CALIBRATION} images")
    return out


@pytest.fixture(scope="module")
def fp_subset(cfp_root):
    """Every 4th pair of CFP-FP fold 1 (175 pairs, both labels) and the images they need."""
    from sfpn_edge.evaluate.protocols import load_cfp

    proto = load_cfp(cfp_root, "FP", folds=[1])
    pairs, labels = proto.pairs[::4], proto.labels[::4]
    used, inverse = np.unique(pairs, return_inverse=True)
    return [proto.samples[i] for i in used], inverse.reshape(pairs.shape), labels


def test_calibration_samples_are_real_cfp_faces(calibration):
    samples, crops = calibration
    assert len(samples) == CALIBRATION == len({s.path for s in samples})
    assert all(s.path.is_file() and s.landmarks is not None and s.landmarks.is_file() for s in samples)
    profiles = sum("profile" in s.path.parts for s in samples)
    assert 0.2 < profiles / CALIBRATION < 0.4  # CFP-FP proportion
    assert crops.shape == (CALIBRATION, 3, 113, 113) and crops.dtype == np.float32
    assert 20 < crops.std() < 120  # real images minus the mean, not noise or zeros


def test_int8_files_and_manifest(int8_dir):
    import onnx

    manifest = models.load_manifest(int8_dir)
    assert manifest["files"]["onnxruntime"]["int8"] == "model_int8.onnx"
    assert manifest["files"]["openvino"]["int8"] == "model_int8.xml"
    assert manifest["files"]["litert"]["int8"] == "model_int8.tflite"
    assert "full-integer" in manifest["calibration"]["litert"]
    assert (int8_dir / "model_int8.bin").is_file()
    record = manifest["calibration"]
    assert record["count"] == CALIBRATION and "CFP" in record["source"]
    assert manifest["files"]["native"] == {"int8": "model_native_int8.npz"} and "max over 32" in record["native"]
    assert models.model_file(int8_dir, "native", "int8").stat().st_mode & 0o777 == 0o644
    ops = {n.op_type for n in onnx.load(str(int8_dir / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [init for init in onnx.load(str(int8_dir / "model_int8.onnx")).graph.initializer
               if init.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 26  # every conv's weights are int8
    ranges = {init.name: int(np.abs(onnx.numpy_helper.to_array(init)).max()) for init in weights}
    assert ranges.pop("conv1/W_quantized") == 64  # 7 bits: no int16 saturation on x86 without VNNI
    assert max(ranges.values()) == 127  # 8 bits elsewhere
    assert not list(int8_dir.glob(".quantize-*"))  # the work dir is gone
    size = (int8_dir / "model_int8.onnx").stat().st_size
    assert size < 0.4 * (int8_dir / "model.onnx").stat().st_size


@pytest.mark.parametrize("backend, min_cos", [("onnxruntime", 0.97), ("openvino", 0.98), ("native", 0.98),
                                              ("litert", 0.98)])
def test_int8_accuracy_on_cfp_fp_subset(int8_dir, fp_subset, backend, min_cos):
    """int8 descriptors stay close to fp32 and verification decisions barely change."""
    if backend == "litert":
        pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    from sfpn_edge.evaluate.runner import embed_samples
    from sfpn_edge.score import cosine_pairs

    samples, pairs, labels = fp_subset
    fp32 = "onnxruntime" if backend == "native" else backend   # the native backend runs int8 only
    ref = embed_samples(samples, FaceEmbedder(int8_dir, fp32, "fp32"), crop="fiducials").vectors
    got = embed_samples(samples, FaceEmbedder(int8_dir, backend, "int8"), crop="fiducials").vectors
    assert np.median((ref * got).sum(1)) > 0.99 and (ref * got).sum(1).min() > min_cos
    s_ref, s_got = cosine_pairs(ref[pairs[:, 0]], ref[pairs[:, 1]]), cosine_pairs(got[pairs[:, 0]], got[pairs[:, 1]])
    threshold = np.median(s_ref)  # a decision threshold in the thick of the scores
    agree = ((s_ref > threshold) == (s_got > threshold)).mean()
    assert agree > 0.95
    acc = lambda s: max(((s > t) == labels).mean() for t in np.unique(s_ref))  # noqa: E731
    assert abs(acc(s_got) - acc(s_ref)) < 0.02  # 175 pairs: ~3 pairs


def test_ort_int8_kernels_match_the_simulated_qdq(int8_dir, calibration):
    """The int8 kernels of this CPU compute what the QDQ graph means (no saturation: x86 without
    VNNI sums pairs of u8 x s8 products in int16); with graph optimizations off ORT runs it in float."""
    import onnxruntime as ort

    crops = calibration[1][:16]
    def run(level):
        options = ort.SessionOptions()
        options.graph_optimization_level, options.intra_op_num_threads = level, 1
        session = ort.InferenceSession(str(int8_dir / "model_int8.onnx"), options, providers=["CPUExecutionProvider"])
        out = np.concatenate([session.run(None, {session.get_inputs()[0].name: c[None]})[0] for c in crops])
        return out / np.linalg.norm(out, axis=1, keepdims=True)
    kernels, simulated = run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert (kernels * simulated).sum(1).min() > 0.999


def test_qdq_onnx_route_for_openvino(int8_dir, calibration, tmp_path):
    """Without NNCF, OpenVINO int8 comes from the QDQ ONNX (OpenVINO keeps it int8)."""
    xml = tmp_path / "qdq.xml"
    how = quantize.quantize_openvino(int8_dir / "model.xml", xml, calibration[1][:4], qdq_onnx=int8_dir / "model_int8.onnx",
                                     use_nncf=False)
    assert how == "qdq-onnx" and xml.with_suffix(".bin").is_file()
    assert "FakeQuantize" in xml.read_text()
    fp32 = FaceEmbedder(int8_dir, "openvino", "fp32").embed(calibration[1][:8], normalize=True)
    from sfpn_edge.backends import open_model

    (got,) = open_model(xml, "openvino", precision="int8").run(calibration[1][:8])
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    assert (fp32 * got).sum(1).min() > 0.97


def test_nncf_route(int8_dir):
    pytest.importorskip("nncf")
    assert "NNCF" in models.load_manifest(int8_dir)["calibration"]["openvino"]


def test_bad_calibration_input(model_dir, tmp_path):
    with pytest.raises(ValueError, match="non-empty float32"):
        quantize.quantize_onnx(model_dir / "model.onnx", tmp_path / "q.onnx", np.zeros((0, 3, 113, 113), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        quantize.quantize_onnx(model_dir / "model.onnx", tmp_path / "q.onnx", np.full((2, 3, 113, 113), np.nan, np.float32))
    with pytest.raises(ModelError, match="constant"):
        quantize.quantize_onnx(model_dir / "model.onnx", tmp_path / "q.onnx", np.zeros((2, 3, 113, 113), np.float32))
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    with pytest.raises(ValueError, match=r"must be \[N, 3, 113, 113\]"):
        quantize.quantize_model_dir(copy, np.ones((2, 3, 96, 96), np.float32) * np.arange(96, dtype=np.float32), "x")
    assert "int8" not in models.load_manifest(copy)["files"]["onnxruntime"]
    with pytest.raises(Exception, match="no calibration images"):
        calibration_data.calibration_crops([], 113, (0, 0, 0))
