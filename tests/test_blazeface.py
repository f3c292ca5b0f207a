"""BlazeFace: decoding on real photos, letterbox geometry, weighted NMS, pinned weights, bad files."""
from __future__ import annotations

import json
import shutil
import zipfile

import cv2
import numpy as np
import pytest

from sfpn_edge.cli import main as cli_main
from sfpn_edge.detect import blazeface_weights
from sfpn_edge.detect.blazeface import KEYPOINTS, VARIANTS, BlazeFace, BlazeFaceFull
from sfpn_edge.detect.registry import make_detector
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.io import read_image
from sfpn_edge.kernels.nms import nms_clusters


@pytest.fixture(scope="module")
def detector(blazeface_dir):
    return BlazeFace(blazeface_dir, threads=1)


@pytest.fixture(scope="module")
def frontal(cfp_root):
    return read_image(cfp_root / "Data" / "Images" / "001" / "frontal" / "01.jpg")


def test_anchor_layout_matches_the_nets_outputs():
    short, full = VARIANTS["short"].anchors(), VARIANTS["full"].anchors()
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    np.testing.assert_allclose(short[:2], [[1 / 32, 1 / 32]] * 2)      # 16x16 map, 2 per cell
    np.testing.assert_allclose(short[512:518], [[1 / 16, 1 / 16]] * 6)  # 8x8 map, 6 per cell
    np.testing.assert_allclose(full[1], [3 / 96, 1 / 96])                # 48x48 map, 1 per cell, x fastest


def test_one_face_with_keypoints_where_a_face_has_them(detector, frontal):
    faces = detector.detect(frontal)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert 0.5 < face.score <= 1.0 and face.landmarks is None
    assert face.keypoint_names == KEYPOINTS and face.keypoints.shape == (6, 2)
    p = face.points()
    assert x0 < p["ear_left"][0] < p["eye_left"][0] < p["nose"][0] < p["eye_right"][0] < p["ear_right"][0] < x1
    assert y0 < p["eye_left"][1] < p["nose"][1] < p["mouth"][1] < y1
    assert 0.5 * frontal.shape[1] < x1 - x0 < 1.2 * frontal.shape[1]   # CFP crops: the face fills the frame
    assert set(face.to_dict()["keypoints"]) == set(KEYPOINTS)


def test_boxes_follow_the_image_through_padding_and_scaling(detector, frontal):
    """Letterbox arithmetic: the photo squared with black bars beforehand (what the letterbox does
    inside) gives the same face, offset by the bars; twice the size gives twice the box."""
    box = np.array(detector.detect(frontal)[0].box)
    h, w = frontal.shape[:2]
    left, top = (h - w) // 2 + 7, 0                     # off-centre bars: a wrong offset would show
    square = cv2.copyMakeBorder(frontal, top, 0, left, h - w - left, cv2.BORDER_CONSTANT, value=0)
    moved = np.array(detector.detect(square)[0].box)
    np.testing.assert_allclose(moved - [left, top, left, top], box, atol=0.03 * w)
    big = cv2.resize(frontal, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(np.array(detector.detect(big)[0].box) / 2, box, atol=0.03 * w)


def test_no_face_and_tiny_images(detector):
    assert detector.detect(np.full((240, 320, 3), 127, np.uint8)) == []
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []
    with pytest.raises(Exception, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))


def test_full_range_variant_finds_a_face_short_range_misses(detector, blazeface_dir, frontal):
    small = cv2.resize(frontal, (frontal.shape[1] * 2 // 3, frontal.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    scene = np.full((480, 640, 3), 100, np.uint8)
    scene[200:200 + small.shape[0], 300:300 + small.shape[1]] = small       # a ~100 px face far off-centre
    assert detector.detect(scene) == []
    faces = BlazeFaceFull(blazeface_dir, threads=1).detect(scene)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 300 < (x0 + x1) / 2 < 300 + small.shape[1] and 200 < (y0 + y1) / 2 < 200 + small.shape[0]


def test_weighted_nms_owner_is_the_first_kept_overlapping_box():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (60, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (60, 2)).astype(np.float32),
                            rng.uniform(0, 1, (60, 1)).astype(np.float32)], axis=1)
    kept, owner = nms_clusters(boxes, 0.3)
    order = np.argsort(-boxes[:, 4], kind="stable")
    alive, expected = [], {}
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    for i in order:
        for k in alive:
            a, b = boxes[k], boxes[i]
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            if inter / (area(a) + area(b) - inter) > 0.3:
                expected[i] = k
                break
        else:
            alive.append(i)
            expected[i] = i
    assert list(kept) == alive
    assert [expected[i] for i in range(60)] == list(owner)


def test_fetch_is_pinned_and_atomic(mediapipe_wheel, tmp_path):
    dest = blazeface_weights.fetch_blazeface(tmp_path / "bf", source=mediapipe_wheel)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*blazeface_weights.PINNED, "weights.json"])
    assert json.loads((dest / "weights.json").read_text())["files"] == blazeface_weights.PINNED
    assert set(blazeface_weights.verified_files(dest)) == {"short", "full"}
    data = bytearray(mediapipe_wheel.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "bad.whl"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match mediapipe 0.10.14 wheel"):
        blazeface_weights.fetch_blazeface(tmp_path / "home" / "bf", source=bad)
    assert not (tmp_path / "home").exists() or list((tmp_path / "home").iterdir()) == []


def test_wrong_member_or_corrupt_zip_stores_nothing(tmp_path, monkeypatch):
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as z:
        for name in blazeface_weights.PINNED:
            z.writestr(blazeface_weights.MEMBER_DIR + name, b"not a net")
    with pytest.raises(ModelError, match="has sha256"):
        blazeface_weights.extract_nets(fake, tmp_path)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelError, match="corrupt archive"):
        blazeface_weights.extract_nets(junk, tmp_path)
    monkeypatch.setattr(blazeface_weights, "NET_MAX_BYTES", 4)
    with pytest.raises(ModelError, match="implausibly large"):
        blazeface_weights.extract_nets(fake, tmp_path)


def test_tampered_cache_wrong_tflite_and_corrupt_file(blazeface_dir, model_dir, tmp_path):
    copy = tmp_path / "bf"
    shutil.copytree(blazeface_dir, copy)
    with open(copy / blazeface_weights.NETS["short"]["file"], "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01")
    with pytest.raises(ModelError, match="does not match its pinned sha256"):
        BlazeFace(copy)
    with pytest.raises(ModelError, match="not found"):
        BlazeFace(tmp_path / "nothing.tflite")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="fetch-weights --detector blazeface"):
        BlazeFace(tmp_path / "empty")
    with pytest.raises(ModelError, match="not a BlazeFace short-range model"):
        BlazeFace(model_dir / "model.tflite")           # a real .tflite, the face embedder
    with pytest.raises(ModelError, match="not a BlazeFace full-range model"):
        BlazeFaceFull(blazeface_dir / blazeface_weights.NETS["short"]["file"])
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"TFL3" + bytes(64))
    with pytest.raises(ModelError):
        BlazeFace(junk)
    with pytest.raises(SfpnError, match="model must be one of"):
        BlazeFace(blazeface_dir, model="medium")


def test_cli_fetch_and_verify_with_blazeface(mediapipe_wheel, model_dir, cfp_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SFPN_EDGE_HOME", str(tmp_path))
    assert cli_main(["fetch-weights", "--detector", "blazeface", "--from", str(mediapipe_wheel), "--json"]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert fetched["detector"] == "blazeface" and set(fetched["files"]) == {"short", "full"}
    images = cfp_root / "Data" / "Images" / "001"
    argv = ["verify", str(images / "frontal" / "01.jpg"), str(images / "frontal" / "03.jpg"), "--model",
            str(model_dir), "--threads", "1", "--json"]
    assert cli_main(argv) == 0                                # default detector from the cache
    result = json.loads(capsys.readouterr().out)
    assert result["same"] is True
    assert result["detector"] == "blazeface"
    assert set(result["faces"][0]["keypoints"]) == set(KEYPOINTS)


def test_registry_and_verifier_framing(blazeface_dir, model_dir):
    from sfpn_edge.pipeline import FaceVerifier

    detector = make_detector("blazeface", blazeface_dir)
    verifier = FaceVerifier(model_dir, detector=detector, threads=1)
    assert verifier.crop_spec.margin > 0.1 and verifier.crop_spec.shift < 0   # measured (evaluate.framing)
    assert verifier.operating_point.source.startswith("built-in CFP-FP measurement")
