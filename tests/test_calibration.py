"""Descriptor calibration: fitting, storage, the per-fold protocol, baking into ONNX / IR, pipeline use."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sfpn_edge import calibration as C
from sfpn_edge.errors import ModelError
from sfpn_edge.evaluate import calibrate_fit as cf

SHA = "ab" * 32


def synthetic(identities=40, per_identity=8, dim=64, noise=0.6, seed=0):
    """Non-negative descriptors sharing a big common component (like GAP outputs), by identity."""
    rng = np.random.default_rng(seed)
    common = rng.uniform(2.0, 3.0, dim)
    centres = rng.normal(0, 1, (identities, dim))
    nuisance = rng.normal(0, 1, (4, dim))  # shared "pose" directions: within-identity noise
    y = np.repeat(np.arange(identities), per_identity)
    x = common + centres[y] + noise * rng.normal(0, 1, (len(y), dim)) + rng.normal(0, 1.5, (len(y), 4)) @ nuisance
    return np.maximum(x, 0).astype(np.float32), y


def separation(desc, y):
    """Mean genuine minus mean impostor cosine, in units of the impostor spread."""
    z = C.l2n(desc)
    s = z @ z.T
    iu = np.triu_indices(len(z), 1)
    same = y[iu[0]] == y[iu[1]]
    g, i = s[iu][same], s[iu][~same]
    return (g.mean() - i.mean()) / i.std()


@pytest.mark.parametrize("method,dim,out", [("center", None, 64), ("pca", 16, 16), ("wccn", None, 32),
                                            ("lda", 12, 12)])
def test_fit_apply_shapes_and_norms(method, dim, out):
    x, y = synthetic()
    cal = cf.fit(x, y, method, dim, pca_dim=32, shrinkage=0.1)
    z = cal.apply(x)
    assert z.shape == (len(x), out) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert cal.info["images"] == len(x)
    assert cal.apply(x[0]).shape == (out,)


def test_labelled_methods_separate_identities_better():
    x, y = synthetic(seed=1)
    raw = separation(x, y)
    centred = separation(cf.fit(x, None, "center").apply(x), y)
    lda = separation(cf.fit(x, y, "lda", 16, pca_dim=32).apply(x), y)
    assert raw < centred < lda
    # held-out identities: LDA fitted on others still beats centring
    xa, ya = synthetic(identities=60, seed=2)
    train, test = ya < 40, ya >= 40
    held_lda = separation(cf.fit(xa[train], ya[train], "lda", 16, pca_dim=32).apply(xa[test]), ya[test])
    held_center = separation(cf.fit(xa[train], None, "center").apply(xa[test]), ya[test])
    assert held_lda > held_center


def test_too_little_data_is_refused_with_counts():
    x, y = synthetic(identities=10, per_identity=3, dim=300)
    with pytest.raises(cf.CalibrationError, match="at least 257 face images, got 30"):
        cf.fit(x, y, "pca")
    with pytest.raises(cf.CalibrationError, match="at least 17 identities, got 10"):
        cf.fit(x, y, "lda", 16, pca_dim=20)
    with pytest.raises(cf.CalibrationError, match="needs identity labels"):
        cf.fit(x, None, "wccn", pca_dim=8)
    with pytest.raises(cf.CalibrationError, match="2 identities with 2 or more images"):
        cf.fit(x[:10:3], np.arange(4), "wccn", pca_dim=2)
    with pytest.raises(cf.CalibrationError, match="at least 2 face images"):
        cf.fit(x[:1], None, "center")
    with pytest.raises(cf.CalibrationError, match="--dim does not apply"):
        cf.fit(x, None, "center", 8)
    with pytest.raises(cf.CalibrationError, match="shrinkage"):
        cf.fit(x, y, "wccn", pca_dim=8, shrinkage=1.5)
    with pytest.raises(cf.CalibrationError, match="NaN"):
        cf.fit(np.full((4, 8), np.nan), None, "center")


@pytest.mark.parametrize("shrinkage", [0.0, 0.1])
def test_singular_within_covariance_stays_finite(shrinkage):
    # 2 images per identity in 64-d: within-identity covariance of rank 30 < 48 PCA dims
    x, y = synthetic(identities=30, per_identity=2)
    cal = cf.fit(x, y, "lda", 20, pca_dim=48, shrinkage=shrinkage)
    assert np.isfinite(cal.projection).all()
    assert np.isfinite(cal.apply(x)).all()


def test_thresholds_are_cross_fitted_and_ordered():
    x, y = synthetic(identities=60, per_identity=10, noise=1.0)
    points, counts = cf.operating_points(x, y, method="lda", dim=16, pca_dim=32)
    fars = [p["far"] for p in points]
    assert fars == sorted(fars, reverse=True) and fars[0] == 1e-2
    thresholds = [p["threshold"] for p in points]
    assert thresholds == sorted(thresholds)  # stricter FAR -> higher threshold
    assert counts["impostor_pairs"] > 10_000 or 1e-4 not in fars
    # the in-sample fit would be optimistic: genuine scores of held-out groups are what we measure
    assert all(0.0 < p["tar"] <= 1.0 for p in points)
    with pytest.raises(cf.CalibrationError, match="at least 10 identities"):
        cf.operating_points(x[:40], y[:40], method="center")


def test_threshold_at_far_counts_ties_as_accepted():
    imp = np.array([0.9, 0.5, 0.5, 0.1] + [0.0] * 96)
    t = cf.threshold_at_far(imp, 0.02)
    assert (imp >= t).mean() <= 0.02 and t > 0.5 and t <= np.nextafter(0.5, 1) + 1e-12


def standalone(tmp_path, cal):
    out = tmp_path / "cal"
    C.save_calibration(cal, out)
    return out


def test_save_load_round_trip_and_provenance(tmp_path):
    x, y = synthetic()
    cal = cf.fit(x, y, "lda", 8, pca_dim=16, info={"model_sha256": SHA, "source": "unit"})
    out = standalone(tmp_path, cal)
    entry = json.loads((out / C.STANDALONE).read_text())
    assert entry["method"] == "lda" and entry["dim_out"] == 8 and entry["identities"] == 40
    assert entry["shrinkage"] == 0.5 and entry["source"] == "unit" and entry["created"]
    back = C.load_calibration(out, {"source_sha256": SHA, "descriptor_dim": 64})
    np.testing.assert_array_equal(back.projection, cal.projection)
    np.testing.assert_allclose(back.apply(x), cal.apply(x), atol=1e-6)
    assert back.digest == cal.digest


def test_load_refuses_other_model_tampering_and_pickles(tmp_path):
    x, _ = synthetic()
    cal = cf.fit(x, None, "pca", 8, info={"model_sha256": SHA})
    out = standalone(tmp_path, cal)
    with pytest.raises(ModelError, match="another model"):
        C.load_calibration(out, {"source_sha256": "cd" * 32, "descriptor_dim": 64})
    with pytest.raises(ModelError, match="expects 64-d"):
        C.load_calibration(out, {"source_sha256": SHA, "descriptor_dim": 1000})
    np.save(out / C.PROJECTION_FILE, np.zeros((64, 8), np.float32))
    with pytest.raises(ModelError, match="digest differs"):
        C.load_calibration(out)
    np.save(out / C.PROJECTION_FILE, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelError, match="cannot read"):
        C.load_calibration(out)
    (out / C.MEAN_FILE).unlink()
    with pytest.raises(ModelError, match="missing"):
        C.load_calibration(out)
    assert C.load_calibration(tmp_path) is None  # a directory without any calibration
    with pytest.raises(ModelError, match="no such"):
        C.load_calibration(tmp_path / "nowhere")


def test_apply_rejects_bad_input():
    x, _ = synthetic()
    cal = cf.fit(x, None, "center")
    with pytest.raises(ValueError, match="expected descriptors"):
        cal.apply(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        cal.apply(np.full((1, 64), np.nan, np.float32))


def test_per_fold_protocol_never_fits_on_test_identities(monkeypatch):
    from sfpn_edge.evaluate.protocols import PairProtocol, Sample
    from sfpn_edge.evaluate.runner import Embeddings

    x, y = synthetic(identities=60, per_identity=6, seed=3)
    fold_of = y // 20 + 1  # 3 identity-disjoint folds of 20 identities
    rng = np.random.default_rng(0)
    pairs, labels, folds = [], [], []
    for f in (1, 2, 3):
        idx = np.flatnonzero(fold_of == f)
        for _ in range(60):
            a, b = rng.choice(idx, 2, replace=False)
            pairs.append((a, b)); labels.append(y[a] == y[b]); folds.append(f)
        for i in idx[::6]:
            pairs.append((i, i + 1)); labels.append(True); folds.append(f)
    proto = PairProtocol("synthetic", [Sample(f"{i}.jpg") for i in range(len(x))], np.array(pairs),
                         np.array(labels), np.array(folds))
    emb = Embeddings(proto.samples, C.l2n(x), {}, {}, 0.0)
    seen = []
    real_fit = cf.fit

    def spy(desc, labels=None, *args, **kwargs):
        seen.append(set(np.unique(labels).tolist()))
        return real_fit(desc, labels, *args, **kwargs)

    monkeypatch.setattr(cf, "fit", spy)
    (result,) = cf.evaluate_per_fold([proto], [proto.pairs], emb, y, method="lda", dim=8, pca_dim=16)
    assert len(seen) == 3
    for fold, train_ids in zip((1, 2, 3), seen):
        assert not train_ids & set(np.unique(y[fold_of == fold]).tolist())
        assert len(train_ids) == 40
    acc = result.metrics["accuracy"]
    assert acc["folds"] == [1, 2, 3] and len(acc["per_fold"]) == 3
    assert result.metrics["calibration_fits"]["dim_out"] == 8


# ---------------------------------------------------------------- with the real model


@pytest.fixture()
def own_model(model_dir, tmp_path):
    """A private copy of the session model (calibrating writes into the model directory)."""
    return shutil.copytree(model_dir, tmp_path / "model")


def crops(n=6, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 40, (1, 3, 113, 113))
    return (base + rng.normal(0, 25, (n, 3, 113, 113))).astype(np.float32)


def test_bake_parity_onnx_and_openvino(own_model):
    from sfpn_edge.backends import open_model
    from sfpn_edge.converters.bake import bake
    from sfpn_edge.embed import FaceEmbedder
    from sfpn_edge.models import load_manifest

    embedder = FaceEmbedder(own_model)
    train = embedder.embed(crops(60, seed=1), normalize=True)
    cal = cf.fit(train, None, "pca", 32, info={"model_sha256": load_manifest(own_model)["source_sha256"]})
    baked = bake(own_model, cal)
    C.save_calibration(cal, own_model, baked=baked)
    test = crops(5, seed=2)
    want = cal.apply(embedder.embed(test))
    for backend in ("onnxruntime", "openvino"):
        path = C.baked_file(own_model, backend)
        assert path is not None and path.name == baked[backend]
        model = open_model(path, backend, precision="fp32")
        (got,) = model.run(test)
        assert got.shape == (5, 32)
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=backend)
    # the manifest records the calibration and still validates; the raw model is untouched
    assert load_manifest(own_model)[C.MANIFEST_KEY]["baked"] == baked
    assert C.load_calibration(own_model, load_manifest(own_model)).digest == cal.digest
    # a new calibration without baking removes the graphs baked with the old one
    C.save_calibration(cf.fit(train, None, "center", info=cal.info), own_model)
    assert not (own_model / baked["onnxruntime"]).exists() and not (own_model / "model_cal.bin").exists()
    assert C.baked_file(own_model, "onnxruntime") is None and (own_model / "model.onnx").is_file()


def test_bake_and_save_refuse_a_calibration_for_other_weights(own_model):
    from sfpn_edge.converters.bake import bake

    x, _ = synthetic(dim=1000, identities=4, per_identity=3)
    cal = cf.fit(x, None, "center", info={"model_sha256": SHA})
    with pytest.raises(ModelError, match="another model"):
        bake(own_model, cal)
    with pytest.raises(ModelError, match="another model"):
        C.save_calibration(cal, own_model)
    assert not (own_model / C.MEAN_FILE).exists()


def test_pipeline_uses_calibrated_descriptors_and_thresholds(own_model, mtcnn_dir, example_crops):
    from sfpn_edge.detect.mtcnn import MTCNN
    from sfpn_edge.models import load_manifest
    from sfpn_edge.pipeline import FaceVerifier

    manifest = load_manifest(own_model)
    assert FaceVerifier(own_model, detector=MTCNN(mtcnn_dir), threshold=0.5).flip   # flip on by default
    raw = FaceVerifier(own_model, detector=MTCNN(mtcnn_dir), threshold=0.5, flip=False)
    assert raw.calibration is None and raw.describe()["calibration"] is None
    desc = raw.embedder.embed(crops(40, seed=3), normalize=True)
    cal = cf.fit(desc, None, "pca", 24, info={"model_sha256": manifest["source_sha256"]})
    cal.operating_points.extend([{"far": 1e-2, "threshold": 0.3, "flip": False, "crop": "detect"},
                                 {"far": 1e-3, "threshold": 0.5, "flip": False, "crop": "detect"}])
    C.save_calibration(cal, own_model)
    verifier = FaceVerifier(own_model, detector=MTCNN(mtcnn_dir))
    assert verifier.descriptor_dim == 24 and verifier.calibration_info["method"] == "pca"
    assert not verifier.flip      # follows the calibration: made without flip (it does not say)
    assert verifier.model_sha256 != raw.model_sha256  # galleries of raw and calibrated descriptors differ
    assert verifier.operating_point.threshold == 0.5 and "calibration" in verifier.operating_point.source
    image = example_crops[0]
    got, _ = verifier.embed_image(image)
    want = cal.apply(raw.embed_image(image)[0])
    np.testing.assert_allclose(got, want, atol=1e-5)
    off = FaceVerifier(own_model, detector=MTCNN(mtcnn_dir), calibration=False, threshold=0.5)
    assert off.descriptor_dim == 1000
    flipped = FaceVerifier(own_model, detector=MTCNN(mtcnn_dir), flip=True)
    with pytest.raises(ModelError, match="calibrate --thresholds"):
        flipped.operating_point


def test_verifier_flip_follows_the_calibration():
    from sfpn_edge.pipeline import default_flip

    x = np.abs(np.random.default_rng(5).standard_normal((30, 16)))
    assert default_flip(None) is True                              # raw descriptors: flip on
    assert default_flip(cf.fit(x, None, "center", info={"model_sha256": SHA, "flip": True})) is True
    assert default_flip(cf.fit(x, None, "center", info={"model_sha256": SHA, "flip": False})) is False
    assert default_flip(cf.fit(x, None, "center", info={"model_sha256": SHA})) is False   # older: made unflipped
