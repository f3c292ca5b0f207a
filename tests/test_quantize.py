"""int8 quantization calibrated on real CFP crops, and its accuracy against fp32 on a CFP-FP subset."""
from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import pytest

from sfpn_edge import models
from sfpn_edge.converters import calibration_data
from sfpn_edge.converters.calibration_data import CalibrationSet
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
    log = io.StringIO()
    with contextlib.redirect_stderr(log):  # kept for test_quantization_reports_progress
        quantize.quantize_model_dir(out, CalibrationSet(calibration[1], {"scheme": "cfp", "source": f"CFP test subset, {CALIBRATION} images"}))
    (out.parent / "stderr.txt").write_text(log.getvalue())
    return out


def test_quantization_reports_progress(int8_dir):
    lines = [ln for ln in (int8_dir.parent / "stderr.txt").read_text().splitlines() if ln.startswith("[")]
    assert lines[:2] == [f"[1/4] int8: ONNX Runtime QDQ on {CALIBRATION} calibration crops", "[2/4] int8: native engine plan"]
    assert lines[2:] == ["[3/4] int8: OpenVINO IR", "[4/4] int8: LiteRT"]


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
        quantize.quantize_model_dir(copy, CalibrationSet(np.ones((2, 3, 96, 96), np.float32) * np.arange(96, dtype=np.float32), {"source": "x"}))
    assert "int8" not in models.load_manifest(copy)["files"]["onnxruntime"]
    with pytest.raises(Exception, match="no calibration images"):
        calibration_data.calibration_crops([], 113, (0, 0, 0))


# ----------------------------------------------------------------- dataset-free calibration

@pytest.fixture(scope="module")
def free_dir(model_dir, example_crops, tmp_path_factory):
    """int8 models calibrated on the authors' three example crops plus augmentations (no dataset)."""
    out = tmp_path_factory.mktemp("int8-free") / "model"
    shutil.copytree(model_dir, out)
    quantize.quantize_model_dir(out, calibration_data.example_calibration(example_crops[0].parent, 113,
                                                                          models.load_manifest(out)["mean"]))
    return out


@pytest.fixture(scope="module")
def cfp_fold1(cfp_root):
    """CFP-FF and CFP-FP fold 1 (700 pairs each) and the 1,110 images they need."""
    from sfpn_edge.evaluate.protocols import load_cfp

    protos = [load_cfp(cfp_root, p, folds=[1]) for p in ("FF", "FP")]
    samples = sorted({s.path: s for p in protos for s in p.samples}.values(), key=lambda s: str(s.path))
    index = {s.path: i for i, s in enumerate(samples)}
    pairs = {p.name: (np.array([[index[p.samples[i].path] for i in pair] for pair in p.pairs]), p.labels)
             for p in protos}
    return samples, pairs


def test_augmented_example_crops_are_deterministic_and_varied(example_crops):
    from sfpn_edge.align import MEAN_RGB

    a = calibration_data.example_calibration(example_crops[0].parent, 113, MEAN_RGB, per_image=16)
    b = calibration_data.example_calibration(example_crops[0].parent, 113, MEAN_RGB, per_image=16)
    assert a.crops.shape == (48, 3, 113, 113) and np.array_equal(a.crops, b.crops)
    pixels = a.crops + np.asarray(MEAN_RGB, np.float32)[None, :, None, None]
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    assert a.record["scheme"] == "example-augmented" and a.record["count"] == 48
    assert all(np.abs(f - g).max() > 10 for f, g in zip(a.crops[:-1], a.crops[1:]))  # all distinct
    assert len({round(float(x.mean()), 1) for x in a.crops}) > 40  # brightness varies
    from sfpn_edge import align
    from sfpn_edge.io import read_image

    image = read_image(example_crops[1])  # each image's first crop is the crop itself, as run time frames it
    plain = align.CropSpec(113, MEAN_RGB).crop([image], [align.full_image_matrix(image.shape[1], image.shape[0])])
    assert np.abs(a.crops[16] - plain[0]).max() < 1e-3


def test_example_crops_are_checked(tmp_path, example_crops):
    from sfpn_edge.errors import SfpnError

    with pytest.raises(SfpnError, match="example crop is missing"):
        calibration_data.example_calibration(tmp_path, 113, (0, 0, 0))
    for path in example_crops:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / example_crops[1].name).write_bytes(example_crops[0].read_bytes())
    with pytest.raises(SfpnError, match="sha256 mismatch"):
        calibration_data.example_calibration(tmp_path, 113, (0, 0, 0))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "native"])
def test_dataset_free_int8_matches_cfp_calibrated_and_fp32(free_dir, int8_dir, cfp_fold1, backend):
    """The gate on a subset (CFP-FF and CFP-FP fold 1, fiducial crops): dataset-free int8 at most
    1 point (7 pairs) below fp32 and below the CFP-calibrated int8 on each protocol (full CFP: README)."""
    from sfpn_edge.evaluate.metrics import best_threshold, accuracy
    from sfpn_edge.evaluate.runner import embed_samples
    from sfpn_edge.score import cosine_pairs

    samples = cfp_fold1[0]
    def vectors(model, b, precision):
        return embed_samples(samples, FaceEmbedder(model, b, precision), crop="fiducials").vectors
    ref = vectors(free_dir, "onnxruntime", "fp32")
    free, cfp = vectors(free_dir, backend, "int8"), vectors(int8_dir, backend, "int8")
    assert np.median((ref * free).sum(1)) > 0.99
    for protocol, (pairs, labels) in cfp_fold1[1].items():
        acc = {}
        for name, v in (("fp32", ref), ("free", free), ("cfp", cfp)):
            scores = cosine_pairs(v[pairs[:, 0]], v[pairs[:, 1]])
            acc[name] = 100 * accuracy(scores, labels, best_threshold(scores, labels))
        assert acc["free"] >= max(acc["fp32"], acc["cfp"]) - 1.0, (protocol, acc)


def test_dataset_free_native_plan_is_exact_on_the_portable_path(free_dir, calibration):
    """ARM boards run the portable loops: the same int8 results as the VNNI kernels, bit for bit."""
    from sfpn_edge.backends import open_model

    path = models.model_file(free_dir, "native", "int8")
    crops = calibration[1][:16]
    (fast,) = open_model(path, "native", precision="int8").run(crops)
    (portable,) = open_model(path, "native", precision="int8", portable=True).run(crops)
    assert np.array_equal(fast, portable)


def test_int8_gate_recorded_per_backend(free_dir):
    """Every int8 file written is measured against fp32, and --precision auto may use it."""
    from sfpn_edge.converters import int8_gate
    from sfpn_edge.model_dir import ModelDir

    gate = models.load_manifest(free_dir)[int8_gate.KEY]
    assert "mean cosine" in gate["rule"]
    for backend in ("onnxruntime", "openvino", "native"):
        entry = gate["backends"][backend]
        assert entry["passed"] and int8_gate.MIN_MEAN_COSINE <= entry["mean_cosine"] <= 1.0
        assert entry["min_cosine"] <= entry["mean_cosine"]
    assert {b: why for b, why in ModelDir(free_dir).int8_gate().items() if b != "litert"} == \
        {"onnxruntime": "", "openvino": "", "native": ""}


def test_int8_gate_fails_a_broken_file_and_notices_a_changed_one(free_dir, example_crops, tmp_path):
    from sfpn_edge import platform_info
    from sfpn_edge.converters import int8_gate
    from sfpn_edge.model_dir import ModelDir

    broken = tmp_path / "model"
    shutil.copytree(free_dir, broken)
    npz = broken / "model_native_int8.npz"
    with np.load(npz, allow_pickle=False) as plan:
        arrays = dict(plan)
    first = next(k for k, v in arrays.items() if v.dtype == np.int8)
    arrays[first] = -arrays[first]                          # the first conv's weights negated
    np.savez(npz, **arrays)
    models.write_manifest(broken, models.load_manifest(broken))
    assert "changed after its accuracy gate" in ModelDir(broken).int8_gate()["native"]

    crops = calibration_data.example_calibration(example_crops[0].parent, 113, models.load_manifest(free_dir)["mean"],
                                                 per_image=8).crops
    entry = int8_gate.record(broken, crops)["backends"]["native"]
    assert not entry["passed"] and entry["mean_cosine"] < int8_gate.MIN_MEAN_COSINE
    assert "failed its accuracy gate" in ModelDir(broken).int8_gate()["native"]
    rt = FaceEmbedder(broken, threads=1).runtime
    assert rt.backend != "native"                           # auto never runs a failed int8 file
    if platform_info.detect().int8_dot:                     # the next int8 path whose file passed
        assert rt.precision == "int8" and "passed its accuracy gate" in rt.reason
    else:
        assert rt.precision == "fp32" and "no int8 dot-product" in rt.reason
