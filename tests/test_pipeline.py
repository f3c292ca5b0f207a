"""FaceVerifier on real CFP photos: decisions, thresholds by FAR, face policy, input forms, bad input."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from sfpn_edge.errors import ImageError, ModelError, SfpnError
from sfpn_edge import thresholds
from sfpn_edge.pipeline import DEFAULT_FAR, STAGES, FaceVerifier, OperatingPoint, crop_faces


def photo(cfp_root, person: int, kind: str = "frontal", n: int = 1):
    return cfp_root / "Data" / "Images" / f"{person:03d}" / kind / f"{n:02d}.jpg"


@pytest.fixture(scope="module")
def verifier(model_dir, mtcnn_dir):
    from sfpn_edge.detect.mtcnn import MTCNN

    return FaceVerifier(model_dir, detector=MTCNN(mtcnn_dir), threads=1)


def test_verify_same_and_different_people(verifier, cfp_root):
    same = verifier.verify(photo(cfp_root, 1, n=1), photo(cfp_root, 1, n=2))
    diff = verifier.verify(photo(cfp_root, 1, n=1), photo(cfp_root, 2, n=1))
    assert same.same and not diff.same
    assert same.score > same.threshold > diff.score
    assert same.far == DEFAULT_FAR and "CFP-FP" in same.threshold_source
    assert set(same.timings_ms) == set(STAGES) | {"total"}
    assert all(v >= 0 for v in same.timings_ms.values())
    assert same.timings_ms["total"] >= sum(same.timings_ms[s] for s in STAGES) * 0.99
    for n, found in zip((1, 2), same.faces):
        h, w = cv2.imread(str(photo(cfp_root, 1, n=n))).shape[:2]
        x0, y0, x1, y1 = found.face.box
        assert 0.3 * w < x1 - x0 < 1.5 * w and x0 < w / 2 < x1 and y0 < h / 2 < y1
        assert found.n_faces >= 1 and found.how in ("detected", "padded")
    record = json.loads(json.dumps(same.to_dict()))
    assert record["same"] is True and len(record["faces"]) == 2 and record["far"] == DEFAULT_FAR


def test_frontal_to_profile_pairs_rank_above_impostors(verifier, cfp_root):
    genuine = [verifier.verify(photo(cfp_root, p, n=1), photo(cfp_root, p, "profile", 1)).score
               for p in (3, 4, 5, 6)]
    impostor = [verifier.verify(photo(cfp_root, p, n=1), photo(cfp_root, p + 1, "profile", 1)).score
                for p in (3, 4, 5, 6)]
    assert min(genuine) > max(impostor)


def test_inputs_as_path_bytes_or_array_agree(verifier, cfp_root):
    path = photo(cfp_root, 7)
    by_path, face = verifier.embed_image(path)
    by_bytes, _ = verifier.embed_image(path.read_bytes())
    by_array, _ = verifier.embed_image(cv2.imread(str(path)))
    assert by_path.shape == (verifier.descriptor_dim,) and by_path.dtype == np.float32
    assert abs(float(np.linalg.norm(by_path)) - 1.0) < 1e-5
    np.testing.assert_allclose(by_bytes, by_path, atol=1e-6)
    np.testing.assert_allclose(by_array, by_path, atol=1e-6)
    # The evaluation's path (faces from the detector, then embed_faces) is the same computation.
    image = cv2.imread(str(path))
    np.testing.assert_allclose(verifier.embed_faces([image], [face.face])[0], by_path, atol=1e-6)


def test_crop_faces_geometry(verifier, cfp_root):
    image = cv2.imread(str(photo(cfp_root, 8)))
    face = verifier.embed_image(image)[1].face
    mean = verifier.embedder.mean
    crops = crop_faces([image, image], [face, face], margin=0.1, size=113, mean=mean, flip=True)
    assert crops.shape == (4, 3, 113, 113) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops[0], crops[1])
    np.testing.assert_allclose(crops[2], crops[0][:, :, ::-1], atol=1.0)  # mirrored copy follows
    # Reference: square of side max(w, h) * 1.1 around the box centre (continuous coordinates,
    # pixel i covers [i, i + 1)), cv2 bilinear warp with replicated border, RGB minus mean.
    x0, y0, x1, y1 = face.box
    s = 113 / (max(x1 - x0, y1 - y0) * 1.1)
    m = np.array([[s, 0, s * (0.5 - (x0 + x1) / 2) + 56.0], [0, s, s * (0.5 - (y0 + y1) / 2) + 56.0]])
    ref = cv2.warpAffine(image, m, (113, 113), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ref = ref[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) - np.array(mean, np.float32)[:, None, None]
    assert np.abs(crops[0] - ref).max() <= 1.01  # within one grey level everywhere
    with pytest.raises(ValueError):
        crop_faces([image], [face, face], margin=0.1, size=113, mean=mean)


def test_flip_averaging_changes_the_descriptor_a_little(model_dir, verifier, cfp_root):
    assert verifier.flip                                       # on by default
    unflipped = FaceVerifier(model_dir, detector=verifier.detector, flip=False, threshold=0.5)
    a, _ = verifier.embed_image(photo(cfp_root, 9))
    b, _ = unflipped.embed_image(photo(cfp_root, 9))
    assert 0.9 < float(a @ b) < 0.99999


def test_several_faces_largest_or_error(model_dir, verifier, cfp_root):
    big = cv2.imread(str(photo(cfp_root, 10)))
    small = cv2.resize(cv2.imread(str(photo(cfp_root, 11))), None, fx=0.6, fy=0.6)
    h = big.shape[0]
    canvas = np.full((h + 80, big.shape[1] + small.shape[1] + 120, 3), 200, np.uint8)
    canvas[40:40 + h, 40:40 + big.shape[1]] = big
    canvas[40:40 + small.shape[0], 80 + big.shape[1]:80 + big.shape[1] + small.shape[1]] = small
    desc, found = verifier.embed_image(canvas)
    assert found.n_faces == 2 and found.face.box[2] < 40 + big.shape[1] + 20  # the big (left) one
    alone, _ = verifier.embed_image(big)
    assert float(desc @ alone) > 0.95
    strict = FaceVerifier(model_dir, detector=verifier.detector, face_policy="error")
    with pytest.raises(ImageError, match="2 faces found"):
        strict.embed_image(canvas)
    with pytest.raises(SfpnError, match="face_policy"):
        FaceVerifier(model_dir, detector=verifier.detector, face_policy="first")


def test_no_face_and_bad_images(verifier, cfp_root, tmp_path):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8))
    for path in (blank, noise):
        with pytest.raises(ImageError, match=f"{path}: no face found"):
            verifier.verify(photo(cfp_root, 1), path)
    good = photo(cfp_root, 12).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(good[:200] + bytes(1000) + good[1200:])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "adir.jpg").mkdir()
    for name in ("truncated.jpg", "text.jpg", "adir.jpg", "missing.jpg"):
        with pytest.raises(ImageError, match=name):
            verifier.embed_image(tmp_path / name)
    try:  # corrupt scan data: either refused or decoded to something (never a crash)
        verifier.embed_image(tmp_path / "corrupt.jpg")
    except ImageError:
        pass
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "x" * 0):
        with pytest.raises(ImageError):
            verifier.embed_image(bad)


def test_grey_rgba_and_16bit_png_photos(verifier, cfp_root, tmp_path):
    image = cv2.imread(str(photo(cfp_root, 13)))
    colour, _ = verifier.embed_image(image)
    cv2.imwrite(str(tmp_path / "grey.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "deep.png"), image.astype(np.uint16) * 257)
    for name, min_cos in (("grey.png", 0.85), ("rgba.png", 0.9999), ("deep.png", 0.9999)):
        desc, _ = verifier.embed_image(tmp_path / name)
        assert float(desc @ colour) > min_cos, name


def test_threshold_choice_by_far_or_score(model_dir, verifier, cfp_root):
    detector = verifier.detector
    at_1e2 = FaceVerifier(model_dir, detector=detector, far=1e-2).operating_point
    at_1e3 = verifier.operating_point
    assert at_1e2.far == 1e-2 and at_1e2.threshold < at_1e3.threshold
    between = FaceVerifier(model_dir, detector=detector, far=3e-3).operating_point
    assert at_1e2.threshold > between.threshold > at_1e3.threshold or \
        at_1e2.threshold < between.threshold < at_1e3.threshold
    assert "interpolated" in between.source
    raw = FaceVerifier(model_dir, detector=detector, threshold=0.99)
    result = raw.verify(photo(cfp_root, 1, n=1), photo(cfp_root, 1, n=2))
    assert result.threshold == 0.99 and result.far is None and result.threshold_source == "given threshold"
    assert result.same == (result.score >= 0.99)
    for kw in ({"far": 0.0}, {"far": 1.5}, {"far": True}, {"threshold": 2.0}, {"threshold": 0.5, "far": 1e-3}):
        with pytest.raises(SfpnError):
            FaceVerifier(model_dir, detector=detector, **kw)
    with pytest.raises(SfpnError, match="outside the measured"):
        FaceVerifier(model_dir, detector=detector, far=1e-7).operating_point


def test_manifest_operating_points_win_and_are_validated(model_dir, verifier, tmp_path):
    from sfpn_edge import models

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = models.load_manifest(copy)
    manifest["thresholds"] = {"operating_points": [
        {"far": 1e-3, "threshold": 0.9, "flip": False, "crop": "detect", "protocol": "CFP-FP"},
        {"far": 1e-2, "threshold": 0.8, "flip": False, "crop": "detect", "protocol": "CFP-FP"},
        {"far": 1e-3, "threshold": 0.1, "flip": False, "crop": "fiducials", "protocol": "CFP-FP"},
        {"far": 1e-3, "threshold": 0.95, "flip": True, "crop": "detect", "protocol": "CFP-FP"},
        {"far": 1e-3, "threshold": 0.5, "flip": False, "crop": "detect", "detector": "other", "protocol": "X"},
    ]}
    models.write_manifest(copy, manifest)
    plain = FaceVerifier(copy, detector=verifier.detector, flip=False)
    assert plain.operating_point == OperatingPoint(0.9, 1e-3, "manifest (CFP-FP), FAR 0.001")
    assert FaceVerifier(copy, detector=verifier.detector).threshold == 0.95      # flip on by default
    mid = FaceVerifier(copy, detector=verifier.detector, flip=False, far=10 ** -2.5).threshold
    assert mid == pytest.approx(0.85)
    assert thresholds.for_model(manifest, detector="other").at(1e-3).threshold == 0.5  # keyed by detector
    for bad in ({"far": "often"}, {"far": 1e-3, "threshold": float("nan")}, {"far": 0.0, "threshold": 0.8},
                {"far": 1e-3, "threshold": 2.5}):
        manifest["thresholds"] = {"operating_points": [bad]}
        with pytest.raises(ModelError, match="operating point"):
            thresholds.for_model(manifest, detector="mtcnn", flip=False)
    # Another model without measured points: a clear error, unless a raw threshold is given.
    manifest["thresholds"], manifest["source_sha256"] = {}, "0" * 64
    models.write_manifest(copy, manifest)
    with pytest.raises(ModelError, match="--threshold"):
        FaceVerifier(copy, detector=verifier.detector).operating_point
    assert FaceVerifier(copy, detector=verifier.detector, threshold=0.7).threshold == 0.7
