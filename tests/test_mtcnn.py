"""MTCNN detector on real faces (example crops, CFP), blank/noise images, bad input; face policy."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sfpn_edge.detect import LANDMARKS, Detector, Face, check_image, pad_image
from sfpn_edge.detect.mtcnn import MTCNN
from sfpn_edge.detect.policy import count_sources, find_face
from sfpn_edge.errors import ImageError, ModelError, SfpnError
from sfpn_edge.io import read_image

# CFP frontal fiducials cover half the face, profile ones the visible side: a correct box covers
# most of the fiducial box (median 0.95) with IoU around 0.39 (frontal) / 0.66 (profile).
CFP_FRONTAL = ["001/frontal/01", "002/frontal/03", "100/frontal/05", "250/frontal/07"]
CFP_PROFILE = ["001/profile/01", "002/profile/02", "050/profile/04", "300/profile/03"]


@pytest.fixture(scope="module")
def detector(mtcnn_dir) -> MTCNN:
    return MTCNN(mtcnn_dir, threads=1)


def _iou_and_cover(box, ref) -> tuple:
    iw = max(0.0, min(box[2], ref[2]) - max(box[0], ref[0]))
    ih = max(0.0, min(box[3], ref[3]) - max(box[1], ref[1]))
    inter, a, b = iw * ih, (box[2] - box[0]) * (box[3] - box[1]), (ref[2] - ref[0]) * (ref[3] - ref[1])
    return inter / (a + b - inter), inter / b


def _check_landmarks(face: Face, frontal: bool) -> None:
    pts = face.landmarks
    assert pts.shape == (5, 2) and pts.dtype == np.float32 and len(LANDMARKS) == 5
    x0, y0, x1, y1 = face.box
    assert np.all((pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1))
    eye_l, eye_r, nose, mouth_l, mouth_r = pts
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])  # eyes, nose, mouth downwards
    if frontal:
        assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]


def test_detector_protocol(detector):
    assert isinstance(detector, Detector)


def test_example_crops(detector, example_crops):
    for path in example_crops:
        image = read_image(path)
        faces = detector.detect(image)
        assert len(faces) == 1, path
        face = faces[0]
        assert face.score > 0.95
        # The crops are the VGGFace2 tight box + 30 %: the face fills the central ~1/1.3 of the image.
        h, w = image.shape[:2]
        centre = (w * 0.12, h * 0.12, w * 0.88, h * 0.88)
        assert _iou_and_cover(face.box, centre)[0] > 0.6, (path, face.box)
        _check_landmarks(face, frontal=True)


@pytest.mark.parametrize("rel", CFP_FRONTAL + CFP_PROFILE)
def test_cfp_box_overlaps_fiducials(detector, cfp_root, rel):
    from sfpn_edge.samples import read_cfp_landmarks

    image = read_image(cfp_root / "Data" / "Images" / f"{rel}.jpg")
    points = read_cfp_landmarks(cfp_root / "Data" / "Fiducials" / f"{rel}.txt")
    found = find_face(detector, image, fallback="error")
    iou, cover = _iou_and_cover(found.face.box, (*points.min(0), *points.max(0)))
    frontal = "/frontal/" in rel
    assert cover > 0.8 and iou > (0.3 if frontal else 0.45), (rel, found.source, iou, cover)
    _check_landmarks(found.face, frontal=frontal)


def test_translation_and_aspect(detector, example_crops):
    """A face pasted into a wide canvas is found at the pasted place (catches x/y mix-ups)."""
    crop = read_image(example_crops[0])
    alone = detector.detect(crop)[0]
    canvas = np.full((480, 640, 3), 127, np.uint8)
    canvas[90:90 + crop.shape[0], 400:400 + crop.shape[1]] = crop
    faces = detector.detect(canvas)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, np.add(alone.box, (400, 90, 400, 90)), atol=4)
    np.testing.assert_allclose(faces[0].landmarks, alone.landmarks + (400, 90), atol=4)


def test_several_faces_sorted_and_picked(detector, example_crops):
    small = read_image(example_crops[1])
    large = cv2.resize(read_image(example_crops[2]), None, fx=1.6, fy=1.6)
    canvas = np.full((400, 640, 3), 200, np.uint8)
    canvas[250:250 + small.shape[0], 20:20 + small.shape[1]] = small
    canvas[20:20 + large.shape[0], 300:300 + large.shape[1]] = large
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    chosen = find_face(detector, canvas, pick="largest")
    assert chosen.n_faces == 2 and chosen.source == "detected" and chosen.face.box[0] > 250


@pytest.mark.parametrize("image", [
    np.zeros((240, 320, 3), np.uint8),
    np.full((300, 200, 3), 255, np.uint8),
    np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8),
    np.zeros((8, 8, 3), np.uint8),  # smaller than the smallest face
])
def test_no_face(detector, image):
    assert detector.detect(image) == []
    with pytest.raises(ImageError, match="no face"):
        find_face(detector, image, fallback="error")
    found = find_face(detector, image)
    assert found.source == "whole-image" and found.n_faces == 0
    assert found.face.box == (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))


@pytest.mark.parametrize("bad", [
    np.zeros((100, 100, 3), np.float32),
    np.zeros((100, 100), np.uint8),
    np.zeros((100, 100, 4), np.uint8),
    np.zeros((0, 100, 3), np.uint8),
    [[0, 0, 0]],
])
def test_bad_images_are_refused(detector, bad):
    with pytest.raises(ImageError):
        detector.detect(bad)
    with pytest.raises(ImageError):
        check_image(bad)


@pytest.mark.parametrize("kwargs", [
    {"min_face_size": 0}, {"min_face_size": "20"}, {"thresholds": (0.6, 0.7)}, {"thresholds": (0.6, 0.7, 1.5)},
    {"scale_factor": 1.0}, {"pad": -0.1}, {"pad_mode": "mirror"},
])
def test_bad_settings(mtcnn_dir, kwargs):
    with pytest.raises(SfpnError):
        MTCNN(mtcnn_dir, **kwargs)


@pytest.mark.parametrize("kwargs", [{"fallback": "guess"}, {"pick": "first"}, {"pad_mode": "wrap"},
                                    {"retry_pad": -0.5}])
def test_bad_policy_settings(detector, kwargs):
    with pytest.raises(SfpnError):
        find_face(detector, np.zeros((50, 50, 3), np.uint8), **kwargs)


def test_missing_weights(tmp_path):
    with pytest.raises(ModelError, match="fetch-weights --detector mtcnn"):
        MTCNN(tmp_path)


def test_pyramid_scales(detector):
    scales = detector.scales(480, 640)
    assert scales[0] == pytest.approx(12 / 20)
    assert np.allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    assert detector.scales(10, 10) == []


def test_built_in_padding_matches_padded_image(mtcnn_dir, example_crops):
    crop = read_image(example_crops[2])
    padded, (dx, dy) = pad_image(crop, 0.25)
    plain = MTCNN(mtcnn_dir, threads=1).detect(padded)[0]
    built_in = MTCNN(mtcnn_dir, threads=1, pad=0.25).detect(crop)[0]
    np.testing.assert_allclose(built_in.box, np.subtract(plain.box, (dx, dy, dx, dy)), atol=1e-3)


def test_padded_retry_is_counted(detector, cfp_root):
    # This CFP frontal is cropped so tightly that MTCNN only finds the face with a border added.
    image = read_image(cfp_root / "Data" / "Images" / "011" / "frontal" / "09.jpg")
    assert detector.detect(image) == []
    found = find_face(detector, image)
    assert found.source == "padded" and found.face.score > 0.9
    assert count_sources([found]) == {"detected": 0, "padded": 1, "whole-image": 0}
    assert find_face(detector, image, retry_pad=0).source == "whole-image"


def test_openvino_matches_onnxruntime(mtcnn_dir, example_crops):
    crop = read_image(example_crops[0])
    ort_face = MTCNN(mtcnn_dir, "onnxruntime", threads=1).detect(crop)[0]
    ov_face = MTCNN(mtcnn_dir, "openvino", threads=1).detect(crop)[0]
    np.testing.assert_allclose(ov_face.box, ort_face.box, atol=0.5)
    np.testing.assert_allclose(ov_face.landmarks, ort_face.landmarks, atol=0.5)
    assert ov_face.score == pytest.approx(ort_face.score, abs=1e-3)


def test_cfp_protocol_images(cfp_root):
    from sfpn_edge.evaluate.detection_survey import cfp_images

    images = cfp_images(cfp_root)
    assert (len(images["frontal"]), len(images["profile"])) == (4944, 1961)  # the 6,905 the protocols use
    assert all("/frontal/" in p.as_posix() for p in images["frontal"])


def test_survey_counts_each_source(detector, cfp_root, example_crops, tmp_path):
    from sfpn_edge.evaluate.detection_survey import survey

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((120, 100, 3), np.uint8))
    paths = [example_crops[0], cfp_root / "Data" / "Images" / "011" / "frontal" / "09.jpg", blank]
    result = survey(detector, paths, workers=2)
    assert [d.source for d in result.detections] == ["detected", "padded", "whole-image"]
    summary = result.summary()
    assert summary["images"] == 3 and summary["whole-image"] == 1 and summary["found_rate"] == pytest.approx(2 / 3, abs=1e-4)


def test_survey_command(mtcnn_dir, cfp_root, capsys, tmp_path):
    from sfpn_edge.evaluate.detection_survey import main

    saved = tmp_path / "boxes.npz"
    assert main(["--cfp", str(cfp_root), "--model-dir", str(mtcnn_dir), "--limit", "2", "--json",
                 "--save", str(saved)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frontal"]["images"] == 2 and result["profile"]["images"] == 2
    with np.load(saved) as data:
        assert data["profile_boxes"].shape == (2, 4) and data["frontal_landmarks"].shape == (2, 5, 2)
        assert list(data["frontal_sources"]) == ["detected", "detected"]
    assert main(["--cfp", str(cfp_root.parent), "--model-dir", str(mtcnn_dir)]) == 2
    assert "not a CFP root" in capsys.readouterr().err


@pytest.mark.parametrize("tile", [1_000, 3_000])
def test_pnet_strips_give_the_cells_of_one_run(detector, cfp_root, monkeypatch, tile):
    """Strips overlapping by 10 columns, even starts: identical faces to P-Net over whole levels."""
    from sfpn_edge.detect import mtcnn

    images = [read_image(cfp_root / "Data" / "Images" / f"{n}.jpg") for n in CFP_FRONTAL + CFP_PROFILE[:2]]
    whole = [detector.detect(im) for im in images]
    monkeypatch.setattr(mtcnn, "PNET_TILE_PIXELS", tile)
    for im, ref in zip(images, whole):
        assert im.shape[0] * im.shape[1] * 0.36 > 2 * tile  # the first levels really are split
        got = detector.detect(im)
        assert len(got) == len(ref) > 0
        for a, b in zip(got, ref):
            assert a.box == b.box and a.score == b.score and np.array_equal(a.landmarks, b.landmarks)


def test_huge_photos_are_detected_on_a_shrunk_copy(detector, cfp_root, monkeypatch):
    """Above DETECT_MAX_PIXELS the boxes found on the shrunk copy come back in the photo's pixels."""
    from sfpn_edge.detect import policy

    image = read_image(cfp_root / "Data" / "Images" / "001" / "frontal" / "01.jpg")
    big = cv2.resize(image, None, fx=3.0, fy=3.0, interpolation=cv2.INTER_CUBIC)
    ref = find_face(detector, image).face
    calls = []
    real = detector.detect
    monkeypatch.setattr(detector, "detect", lambda im: calls.append(im.shape) or real(im))
    monkeypatch.setattr(policy, "DETECT_MAX_PIXELS", image.shape[0] * image.shape[1])
    found = find_face(detector, big)
    assert calls and calls[0][0] * calls[0][1] <= image.shape[0] * image.shape[1]
    np.testing.assert_allclose(found.face.box, np.multiply(ref.box, 3.0), rtol=0, atol=12.0)
    np.testing.assert_allclose(found.face.landmarks, ref.landmarks * 3.0, atol=12.0)


def test_sized_pyramid_is_a_subset_without_the_small_face_levels(detector):
    full = detector.scales(480, 640)
    sized = detector.scales(480, 640, min_face=100)
    assert sized and set(sized) < set(full) and sized == full[len(full) - len(sized):]
    assert min(12 / s for s in sized) >= 100 * detector.scale_factor
    assert max(12 / s for s in full if s not in sized) < 100 * detector.scale_factor
    assert detector.scales(480, 640, min_face=10) == full  # below min_face_size: the full pyramid


def test_detect_sized_keeps_the_big_face_and_find_face_falls_back(detector, example_crops):
    small = cv2.resize(read_image(example_crops[1]), None, fx=0.6, fy=0.6)
    large = cv2.resize(read_image(example_crops[2]), None, fx=2.5, fy=2.5)
    canvas = np.full((480, 720, 3), 200, np.uint8)
    canvas[300:300 + small.shape[0], 20:20 + small.shape[1]] = small
    canvas[20:20 + large.shape[0], 330:330 + large.shape[1]] = large
    every = detector.detect(canvas)
    big = detector.detect_sized(canvas, 0.45 * 480)
    assert len(every) == 2 and len(big) == 1 and big[0].box[0] > 300
    largest = max(every, key=lambda f: f.area)
    assert _iou_and_cover(big[0].box, largest.box)[0] > 0.9  # fewer candidates: nearly the same box
    adaptive = find_face(detector, canvas, min_face_fraction=0.45)
    assert adaptive.n_faces == 1 and adaptive.face.box[0] > 300
    lone = np.full((480, 720, 3), 200, np.uint8)  # only a face below the fraction: the full pyramid finds it
    lone[300:300 + small.shape[0], 20:20 + small.shape[1]] = small
    assert detector.detect_sized(lone, 0.45 * 480) == []
    found = find_face(detector, lone, min_face_fraction=0.45, fallback="error")
    assert found.source == "detected" and found.face.box[2] < 200
    with pytest.raises(SfpnError, match="min_face_fraction"):
        find_face(detector, canvas, min_face_fraction=1.5)
