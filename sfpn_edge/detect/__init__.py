"""Face detectors behind one small protocol.

    detector = MTCNN()                       # sfpn_edge.detect.mtcnn
    faces = detector.detect(read_image("photo.jpg"))
    faces[0].box, faces[0].score, faces[0].landmarks

A detector takes a uint8 BGR image (H, W, 3), as ``sfpn_edge.io.read_image`` returns, and gives
the faces it found, best score first. Any object with such a ``detect`` method can be used
where sfpn-edge asks for a detector (e.g. the YuNet adapter in ``sfpn_edge.detect.yunet``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Protocol, Tuple, runtime_checkable

import cv2
import numpy as np

from sfpn_edge.errors import ImageError

PAD_MODES = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
LANDMARKS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
"""Order of ``Face.landmarks``; left/right as seen in the image (``eye_left`` has the smaller x)."""


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in image pixel coordinates.

    ``box`` is (x0, y0, x1, y1) with x1/y1 exclusive edges (so width = x1 - x0) and may reach
    outside the image; ``landmarks`` is float32 (5, 2) x, y in ``LANDMARKS`` order, or None for
    detectors without those five points; ``keypoints`` float32 (K, 2) are a detector's own points,
    named by ``keypoint_names`` (BlazeFace: eyes, nose, mouth centre, ears); ``found_by`` names
    the detector of a fallback chain that found it (``sfpn_edge.detect.chain``), "" outside one.
    """

    box: Tuple[float, float, float, float]
    score: float
    landmarks: Optional[np.ndarray] = None
    keypoints: Optional[np.ndarray] = None
    keypoint_names: Tuple[str, ...] = ()
    found_by: str = ""

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def points(self) -> dict:
        """Every named point: ``landmarks`` under ``LANDMARKS`` names, then the ``keypoints``."""
        named = {} if self.landmarks is None else dict(zip(LANDMARKS, self.landmarks))
        if self.keypoints is not None:
            named.update(zip(self.keypoint_names, self.keypoints))
        return named

    def map_points(self, fn) -> "Face":
        """This face with ``fn`` ([K, 2] -> [K, 2]) applied to the box corners and every point."""
        corners = fn(np.array(self.box, np.float64).reshape(2, 2)).ravel()
        marks = None if self.landmarks is None else fn(self.landmarks).astype(np.float32)
        keys = None if self.keypoints is None else fn(self.keypoints).astype(np.float32)
        return replace(self, box=tuple(float(v) for v in corners), landmarks=marks, keypoints=keys)

    def to_dict(self) -> dict:
        out = {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": None if self.landmarks is None
            else [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }
        if self.keypoints is not None:
            out["keypoints"] = {name: [round(float(x), 2), round(float(y), 2)]
                                for name, (x, y) in zip(self.keypoint_names, self.keypoints)}
        if self.found_by:
            out["found_by"] = self.found_by
        return out


@runtime_checkable
class Detector(Protocol):
    """Anything that finds faces: ``detect(bgr_uint8_image) -> [Face, ...]``, best score first."""

    def detect(self, image: np.ndarray) -> List[Face]: ...


@runtime_checkable
class SizedDetector(Protocol):
    """A detector that can skip faces smaller than ``min_face`` pixels (box side) to save time,
    e.g. when only the largest face is wanted (``sfpn_edge.detect.policy.find_faces``)."""

    def detect(self, image: np.ndarray) -> List[Face]: ...

    def detect_sized(self, image: np.ndarray, min_face: float) -> List[Face]: ...


def check_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` if it is a non-empty uint8 (H, W, 3) BGR array, else raise ImageError."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy image array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got dtype {image.dtype} (decode with sfpn_edge.io.read_image)")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"expected a BGR image of shape (H, W, 3), got {image.shape}")
    return image


def pad_image(image: np.ndarray, fraction: float, mode: str = "replicate") -> tuple:
    """Add ``fraction`` of the height/width on each side; return (padded, (dx, dy))."""
    dy, dx = round(fraction * image.shape[0]), round(fraction * image.shape[1])
    return cv2.copyMakeBorder(image, dy, dy, dx, dx, PAD_MODES[mode], value=0), (dx, dy)


def shrink_image(image: np.ndarray, max_pixels: float) -> tuple:
    """``image`` shrunk (area interpolation) to at most ``max_pixels``; return (image, factor), where
    coordinates in the shrunk image times ``factor`` are coordinates in ``image`` (1.0: unchanged)."""
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image, 1.0
    factor = (h * w / max_pixels) ** 0.5
    size = (max(1, int(w / factor)), max(1, int(h / factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), w / size[0]


def scale_face(face: Face, factor: float) -> Face:
    """``face`` with its box and points multiplied by ``factor`` (shrunk image -> original)."""
    return face if factor == 1.0 else face.map_points(lambda p: p * factor)


def shift_face(face: Face, dx: float, dy: float) -> Face:
    """``face`` moved by (-dx, -dy): from padded-image back to original-image coordinates."""
    return face.map_points(lambda p: p - np.array([dx, dy], np.float32))
