"""Face quality measures (pose from landmarks, blur of the crop) and the gates' verdicts."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sfpn_edge.align import TEMPLATE_113
from sfpn_edge.detect import Face
from sfpn_edge.quality import GATES, QualityGate, assess, blur, face_pose, gate, pose


def rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (points - points.mean(0)) @ r.T + 300


def test_pose_of_an_upright_frontal_face_is_zero():
    yaw, roll = pose(TEMPLATE_113)
    assert abs(yaw) < 0.5 and abs(roll) < 1e-6


@pytest.mark.parametrize("degrees", [-35.0, 12.0, 60.0])
def test_roll_follows_the_eye_line_and_leaves_yaw_alone(degrees):
    yaw, roll = pose(rotated(TEMPLATE_113, degrees))
    assert roll == pytest.approx(degrees, abs=1e-6) and abs(yaw) < 0.5


def test_yaw_is_the_atan_of_the_nose_offset_in_half_widths():
    marks = TEMPLATE_113.copy()
    half_width = ((marks[1, 0] - marks[0, 0]) + (marks[4, 0] - marks[3, 0])) / 4
    marks[2, 0] = (marks[[0, 1, 3, 4], 0].mean()) + half_width  # nose one half-width to the right
    yaw, _ = pose(rotated(marks, 25.0))
    assert yaw == pytest.approx(45.0, abs=0.1)
    mirrored = marks.copy()
    mirrored[:, 0] = 113 - marks[:, 0]
    assert pose(mirrored[[1, 0, 2, 4, 3]])[0] == pytest.approx(-45.0, abs=0.1)


BLAZEFACE_POINTS = ("eye_left", "eye_right", "nose", "mouth", "ear_left", "ear_right")


def blazeface_face(marks: np.ndarray) -> Face:
    """A face with BlazeFace-style keypoints made from 5 landmarks (mouth centre; ears beside the eyes)."""
    mouth = marks[[3, 4]].mean(0)
    ears = marks[[0, 1]] + np.array([[-20.0, 5.0], [20.0, 5.0]])
    points = np.vstack([marks[:3], mouth, ears]).astype(np.float32)
    return Face((0.0, 0.0, 113.0, 113.0), 0.9, None, points, BLAZEFACE_POINTS)


def test_pose_from_blazeface_keypoints_uses_the_eyes_half_distance():
    upright = face_pose(blazeface_face(rotated(TEMPLATE_113, 0.0)))
    assert abs(upright[0]) < 1.0 and abs(upright[1]) < 1e-3
    marks = TEMPLATE_113.copy()
    eye_half = (marks[1, 0] - marks[0, 0]) / 2
    marks[2, 0] = (marks[[0, 1], 0].mean() + marks[[3, 4], 0].mean()) / 2 + eye_half
    yaw, roll = face_pose(blazeface_face(rotated(marks, -20.0)))
    assert yaw == pytest.approx(45.0, abs=0.1) and roll == pytest.approx(-20.0, abs=1e-3)
    assert face_pose(Face((0.0, 0.0, 9.0, 9.0), 0.5)) == (None, None)


def test_real_blazeface_faces_get_a_yaw_that_tells_frontal_from_profile(blazeface_dir, cfp_root):
    from sfpn_edge.detect.blazeface import BlazeFace
    from sfpn_edge.io import read_image

    detector = BlazeFace(blazeface_dir, threads=1)
    images = cfp_root / "Data" / "Images"
    yaw = {name: face_pose(detector.detect(read_image(images / name))[0])[0]
           for name in ("001/frontal/01.jpg", "003/frontal/01.jpg", "001/profile/02.jpg", "003/profile/01.jpg")}
    assert abs(yaw["001/frontal/01.jpg"]) < 10 and abs(yaw["003/frontal/01.jpg"]) < 10, yaw
    assert abs(yaw["001/profile/02.jpg"]) > 25 and abs(yaw["003/profile/01.jpg"]) > 25, yaw


def test_blur_drops_on_a_blurred_crop_and_ignores_the_mean():
    rng = np.random.default_rng(0)
    sharp = rng.uniform(-100, 100, (3, 113, 113)).astype(np.float32)
    soft = np.stack([cv2.GaussianBlur(p, (0, 0), 2.0) for p in sharp])
    assert blur(soft) < blur(sharp) / 20
    assert blur(sharp + 120.0) == pytest.approx(blur(sharp), rel=1e-4)
    assert blur(np.zeros((3, 113, 113), np.float32)) == 0.0


def test_gates_judge_size_blur_roll_and_only_frontal_judges_yaw():
    crop = np.random.default_rng(1).uniform(-100, 100, (3, 113, 113)).astype(np.float32)
    profile = TEMPLATE_113.copy()
    profile[2, 0] += 40  # nose far to the right: a strong yaw
    face = Face((0, 0, 200, 220), 0.99, profile.astype(np.float32))
    standard, frontal = assess(face, crop), assess(face, crop, "frontal")
    assert standard.passed and standard.yaw_deg > 60
    assert not frontal.passed and frontal.reasons[0].startswith("yaw +")
    tilted = Face((0, 0, 20, 25), 0.9, rotated(TEMPLATE_113, 50.0).astype(np.float32))
    small = assess(tilted, crop * 0)
    assert [r.split()[0] for r in small.reasons] == ["face", "blur"]  # roll: profiles' eye lines are steep
    assert [r.split()[0] for r in assess(tilted, crop * 0, "frontal").reasons] == ["face", "blur", "roll"]
    record = small.to_dict()
    assert record["passed"] is False and record["gate"] == "standard" and len(record["reasons"]) == 2
    no_marks = assess(Face((0, 0, 200, 200), 0.9, None), crop, "frontal")
    assert no_marks.passed and no_marks.yaw_deg is None and no_marks.to_dict()["roll_deg"] is None


def test_gate_lookup():
    assert gate("standard") is GATES["standard"] and GATES["standard"].max_yaw_deg is None
    custom = QualityGate("strict", 100, 500, 10, 10)
    assert gate(custom) is custom
    with pytest.raises(ValueError, match="quality gate must be one of"):
        gate("best")
