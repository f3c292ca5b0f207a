"""Face quality: size, blur, yaw and roll of one detected face, and the gate that judges them.

    q = assess(face, crop)             # crop: that face's model-ready crop [3, S, S]
    q.passed, q.reasons, q.to_dict()   # judged by GATES["standard"] unless another gate is given

Measures (all cheap: one 3x3 filter on the 113 px crop, a few landmark operations):

- ``size_px``: the detector box's longer side in image pixels (what the crop is cut from).
- ``blur``: variance of the Laplacian (cv2, 3x3) of the crop's luma, in the model's own framing
  and resolution; low = little detail (defocus, motion, a tiny face upscaled).
- ``roll_deg``: angle of the eye line (positive: the right eye is lower in the image).
- ``yaw_deg``: from the 5 landmarks, after undoing roll: the nose's offset from the face's centre
  line (midpoint of the eye and mouth midpoints) in units of the mean half-width of the eyes and
  of the mouth corners, r, gives yaw = atan(r). The model behind it: a head turned by t puts the
  eyes at +-e cos t and the nose tip, sitting about e in front of them, at e sin t, so r = tan t.
  Coarse (landmarks on profiles are guesses); positive: the nose points to the image's right.
  BlazeFace gives eyes, nose and one mouth point: the same model with the eyes' half distance
  as the unit. ``None`` (and not gated) for detectors with neither.

Gates: ``standard`` gates size and blur only, because profiles are legitimate (the model is
pose-robust, CFP-FP is half its job) and on profiles the landmarks' eye line is no roll: MTCNN's
profile landmarks put it beyond 40 deg on 30 % of CFP-FP's images. ``frontal`` adds roll and yaw
limits, for cameras that should only see people facing them.

Thresholds chosen on CFP (MTCNN e2e, fp32, pair quality = worse image; "worst" = the genuine
pairs in the lowest 1 % of genuine scores), measured by
``python benchmarks/measure_quality.py --cfp ../shared/data/cfp --model DIR --cache /tmp/q.npz``:

- size < 40 px: removes 8.6 % of CFP-FP's worst genuine pairs for 0.17 % of its genuine pairs
  (0.05 % of images); 30 px the same; 80 px 14.3 % for 3.6 %. No CFP-FF pair is that small.
- blur < 20: removes 11.4 % of CFP-FP's worst for 0.29 % of genuine pairs (0.07 % of images);
  20-75 remove no more of the worst and cost up to 1.9 %; CFP-FF: nothing below 50.
- frontal gate: roll > 25 deg and yaw > 30 deg remove 0 % and 0.06 % of CFP-FF's genuine pairs.
  The two detectors' yaw scales differ (300 random CFP images of each kind): |yaw| 99th percentile
  on frontals MTCNN 16.5 / BlazeFace 11.8 deg, median on profiles 53 / 33 deg; so the 30 deg limit
  turns away 99 % of MTCNN's profiles but 63 % of BlazeFace's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from sfpn_edge.detect import Face

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # R, G, B weights (crop planes are RGB)


@dataclass(frozen=True)
class QualityGate:
    """Limits a face must meet; a ``max_*`` of None leaves that angle ungated."""

    name: str
    min_size_px: float
    min_blur: float
    max_roll_deg: Optional[float] = None
    max_yaw_deg: Optional[float] = None

    def reasons(self, size_px: float, blur: float, yaw: Optional[float], roll: Optional[float]) -> Tuple[str, ...]:
        out = []
        if size_px < self.min_size_px:
            out.append(f"face {size_px:.0f} px < {self.min_size_px:g} px")
        if blur < self.min_blur:
            out.append(f"blur {blur:.0f} < {self.min_blur:g} (too little detail)")
        if roll is not None and self.max_roll_deg is not None and abs(roll) > self.max_roll_deg:
            out.append(f"roll {roll:+.0f} deg beyond +-{self.max_roll_deg:g}")
        if yaw is not None and self.max_yaw_deg is not None and abs(yaw) > self.max_yaw_deg:
            out.append(f"yaw {yaw:+.0f} deg beyond +-{self.max_yaw_deg:g}")
        return tuple(out)


GATES: Dict[str, QualityGate] = {  # thresholds: see the module docs
    "standard": QualityGate("standard", min_size_px=40.0, min_blur=20.0),
    "frontal": QualityGate("frontal", min_size_px=40.0, min_blur=20.0, max_roll_deg=25.0, max_yaw_deg=30.0),
}
DEFAULT_GATE = "standard"


@dataclass(frozen=True)
class Quality:
    """The measured values of one face and the verdict of ``gate`` (no reasons: passed)."""

    size_px: float
    blur: float
    yaw_deg: Optional[float]
    roll_deg: Optional[float]
    gate: str
    reasons: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        def r(v):
            return None if v is None else round(float(v), 1)
        return {"size_px": r(self.size_px), "blur": r(self.blur), "yaw_deg": r(self.yaw_deg),
                "roll_deg": r(self.roll_deg), "gate": self.gate, "passed": self.passed,
                "reasons": list(self.reasons)}


def gate(name_or_gate) -> QualityGate:
    """A gate by name (``GATES``) or the gate itself; ValueError for an unknown name."""
    if isinstance(name_or_gate, QualityGate):
        return name_or_gate
    if name_or_gate not in GATES:
        raise ValueError(f"quality gate must be one of {sorted(GATES)}, got {name_or_gate!r}")
    return GATES[name_or_gate]


def blur(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the luma of a model crop [3, S, S] (RGB planes, any offset)."""
    luma = np.tensordot(LUMA, np.asarray(crop, np.float32), axes=1)
    return float(cv2.Laplacian(luma, cv2.CV_32F).var())


def pose(landmarks: np.ndarray) -> Tuple[float, float]:
    """(yaw, roll) in degrees from 5 landmarks (``sfpn_edge.detect.LANDMARKS`` order); see module docs."""
    p = np.asarray(landmarks, np.float64).reshape(5, 2)
    return _pose(p[0], p[1], p[2], p[[3, 4]])


def _pose(eye_left, eye_right, nose, mouth) -> Tuple[float, float]:
    """(yaw, roll) from the eyes, the nose tip and the mouth points (corners, or the centre alone)."""
    eyes = eye_right - eye_left
    roll = math.atan2(eyes[1], eyes[0])
    c, s = math.cos(-roll), math.sin(-roll)

    def x(p):  # x after undoing roll
        return p[..., 0] * c - p[..., 1] * s
    centre = ((x(eye_left) + x(eye_right)) / 2.0 + x(mouth).mean()) / 2.0
    widths = [abs(x(eye_right) - x(eye_left)) / 2.0]
    if len(mouth) == 2:
        widths.append(abs(x(mouth[1]) - x(mouth[0])) / 2.0)
    ratio = (x(nose) - centre) / max(float(np.mean(widths)), 1e-6)
    return math.degrees(math.atan(ratio)), math.degrees(roll)


def face_pose(face: Face) -> Tuple[Optional[float], Optional[float]]:
    """(yaw, roll) from the face's 5 landmarks, else from its eye, nose and mouth-centre keypoints
    (BlazeFace: the eyes' half distance is the width unit), else (None, None)."""
    if face.landmarks is not None:
        return pose(face.landmarks)
    points = face.points()
    if all(k in points for k in ("eye_left", "eye_right", "nose", "mouth")):
        p = {k: np.asarray(v, np.float64) for k, v in points.items()}
        return _pose(p["eye_left"], p["eye_right"], p["nose"], p["mouth"][None])
    return None, None


def assess(face: Face, crop: np.ndarray, with_gate=DEFAULT_GATE) -> Quality:
    """Quality of ``face`` given its model crop [3, S, S], judged by ``with_gate`` (name or gate)."""
    g = gate(with_gate)
    size = float(max(face.width, face.height))
    sharp = blur(crop)
    yaw, roll = face_pose(face)
    return Quality(size, sharp, yaw, roll, g.name, g.reasons(size, sharp, yaw, roll))
