"""FaceEmbedder on the converted model: backend parity, batching, threads and bad input."""
from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from sfpn_edge import models
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ModelError


@pytest.fixture(scope="module")
def crops(example_crops, model_dir) -> np.ndarray:
    """The authors' three example crops plus mirrored and shifted versions: 9 real faces."""
    import cv2

    mean = np.asarray(models.load_manifest(model_dir)["mean"], np.float32)
    faces = [cv2.imread(str(p))[:, :, ::-1].astype(np.float32) - mean for p in example_crops]
    faces += [f[:, ::-1] for f in faces] + [np.roll(f, 3, axis=(0, 1)) for f in faces]
    return np.ascontiguousarray(np.stack(faces).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def reference(model_dir, crops) -> np.ndarray:
    return FaceEmbedder(model_dir, threads=1).embed(crops)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_descriptor_shape_and_meaning(model_dir, crops, reference):
    embedder = FaceEmbedder(model_dir, threads=1)
    assert embedder.input_size == (113, 113) and embedder.mean == pytest.approx((131.0912, 103.8827, 91.4953))
    assert reference.shape == (9, 1000) and reference.dtype == np.float32
    assert (reference >= 0).all()  # average pool of relu outputs
    sims = cosines(reference[:3], reference[3:6])  # a face and its mirror image
    assert sims.min() > 0.8
    other = cosines(reference[:3], np.roll(reference[:3], 1, axis=0))  # different people
    assert sims.min() > other.max()
    unit = embedder.embed(crops, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("backend, precision, min_cos", [
    ("openvino", "fp32", 0.99999), ("openvino", "fp16", 0.9999), ("openvino", "bf16", 0.999),
])
def test_backends_agree_with_onnxruntime_fp32(model_dir, crops, reference, backend, precision, min_cos):
    out = FaceEmbedder(model_dir, backend, precision, threads=1).embed(crops)
    assert cosines(out, reference).min() > min_cos


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_chunking_matches_one_by_one(model_dir, crops, backend):
    big = FaceEmbedder(model_dir, backend, batch_size=4).embed(crops)  # chunks 4 + 4 + 1
    single = FaceEmbedder(model_dir, backend, batch_size=1)
    one_by_one = np.concatenate([single.embed(c[None]) for c in crops])
    np.testing.assert_allclose(big, one_by_one, rtol=1e-4, atol=1e-4)
    assert single.embed(crops[0]).shape == (1, 1000)  # one crop without the batch axis
    assert single.embed(crops[:0]).shape == (0, 1000)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_thread_safe_for_concurrent_callers(model_dir, crops, backend):
    embedder = FaceEmbedder(model_dir, backend, threads=1)
    want = embedder.embed(crops)
    errors = []

    def worker(k):
        try:
            for i in range(6):
                rows = [(k + i + j) % len(crops) for j in range(1 + (k + i) % 3)]
                np.testing.assert_allclose(embedder.embed(crops[rows]), want[rows], rtol=1e-4, atol=1e-4)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[0]


def test_static_batch_model_is_padded(model_dir, crops, reference, tmp_path):
    """An NPU-style static batch-1 IR: chunks are exactly the model batch."""
    static = tmp_path / "static"
    shutil.copytree(model_dir, static)
    manifest = models.load_manifest(static)
    manifest["files"]["openvino"]["fp32"] = manifest["files"]["openvino_static"]["fp32"]
    models.write_manifest(static, manifest)
    embedder = FaceEmbedder(static, "openvino")
    assert embedder.batch_size == 1
    assert cosines(embedder.embed(crops), reference).min() > 0.99999
    with pytest.raises(ValueError, match="static batch of 1"):
        FaceEmbedder(static, "openvino", batch_size=4)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 113, 113), np.float64), "must be float32"),
    (np.zeros((2, 113, 113, 3), np.float32), r"shape \[N, 3, 113, 113\]"),
    (np.zeros((2, 3, 112, 112), np.float32), r"shape \[N, 3, 113, 113\]"),
    (np.zeros((3, 113), np.float32), r"shape \[N, 3, 113, 113\]"),
    ([[0.0]], "numpy array"),
])
def test_bad_batches_are_value_errors(model_dir, bad, message):
    with pytest.raises(ValueError, match=message):
        FaceEmbedder(model_dir).embed(bad)


def test_nan_batch_is_rejected(model_dir, crops):
    bad = crops[:2].copy()
    bad[1, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FaceEmbedder(model_dir).embed(bad)


def test_model_directory_problems_are_model_errors(model_dir, tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        FaceEmbedder(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    with pytest.raises(ModelError, match="no int8 model for onnxruntime"):
        FaceEmbedder(broken, "onnxruntime", precision="int8")
    (broken / "model.onnx").unlink()
    with pytest.raises(ModelError, match="file is missing"):
        FaceEmbedder(broken, "onnxruntime")
    (broken / "model.onnx").write_bytes(b"\x08\x01junk")
    with pytest.raises(ModelError, match="model.onnx: sha256 .* differs from the manifest"):
        FaceEmbedder(broken, "onnxruntime")
    models.write_manifest(broken, models.load_manifest(broken))  # a manifest that vouches for the junk
    with pytest.raises(ModelError, match="cannot load model.onnx"):
        FaceEmbedder(broken, "onnxruntime")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["format_version"] = models.FORMAT_VERSION + 1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="newer than this sfpn-edge understands"):
        FaceEmbedder(broken)


def test_model_and_manifest_mismatch(model_dir, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(model_dir, odd)
    manifest = models.load_manifest(odd)
    manifest["input_size"] = [96, 96]
    models.write_manifest(odd, manifest)
    with pytest.raises(ModelError, match="model file and manifest do not match"):
        FaceEmbedder(odd)
    manifest["input_size"], manifest["descriptor_dim"] = [113, 113], 512
    models.write_manifest(odd, manifest)
    with pytest.raises(ModelError, match="gives 1000-d descriptors, the manifest says 512"):
        FaceEmbedder(odd).embed(np.zeros((1, 3, 113, 113), np.float32))
