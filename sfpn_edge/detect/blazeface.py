"""BlazeFace (Bazarevsky et al. 2019), MediaPipe's face detector, on the LiteRT backend.

    detector = BlazeFace()                    # short range (128 x 128), cached by fetch-weights
    detector = BlazeFace(model="full")        # full range (192 x 192): small or far faces
    faces = detector.detect(image)            # boxes + 6 keypoints, image coordinates

One pass of a ~0.2 MB SSD net over the whole image, letterboxed to the net's square input: a
photo costs the same whatever its size, unlike MTCNN's pyramid. Decoding follows MediaPipe's
face_detection graphs (``SsdAnchorsCalculator`` and ``TensorsToDetectionsCalculator`` options):
regressors are (x_centre, y_centre, w, h, 6 x (x, y)) in input pixels relative to unit-size
anchors at the cell centres, scores are sigmoid logits clipped to +-100, and overlapping
detections are blended, weighted by score (weighted NMS, IoU > 0.3, in the NMS kernel).

Keypoints (``Face.keypoints``, ``KEYPOINTS`` order, left/right as seen in the image, like
``sfpn_edge.detect.LANDMARKS``): eyes, nose tip, mouth centre, ear tragions. BlazeFace has no
mouth corners, so ``Face.landmarks`` (the 5-point set) is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from sfpn_edge.detect import Face, check_image
from sfpn_edge.detect.blazeface_weights import model_path
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.kernels.nms import nms_clusters
from sfpn_edge.runtime import Runtime

KEYPOINTS = ("eye_left", "eye_right", "nose", "mouth", "ear_left", "ear_right")


@dataclass(frozen=True)
class Variant:
    """One BlazeFace net: input side, SSD feature-map strides with anchors per cell, score cut."""

    size: int
    layers: Tuple[Tuple[int, int], ...]  # (stride, anchors per cell)
    min_score: float

    def anchors(self) -> np.ndarray:
        """Anchor centres [N, 2] (x, y) in [0, 1], in the order the net's outputs use."""
        out = []
        for stride, per_cell in self.layers:
            cells = self.size // stride
            grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
            ys, xs = np.meshgrid(grid, grid, indexing="ij")
            centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
            out.append(np.repeat(centres, per_cell, axis=0))
        return np.concatenate(out)


VARIANTS: Dict[str, Variant] = {
    # face_detection_short_range: strides 8, 16, 16, 16 with 2 anchors each -> 16x16x2 + 8x8x6.
    "short": Variant(128, ((8, 2), (16, 6)), 0.5),
    # face_detection_full_range: one 48x48 map (stride 4), one anchor per cell.
    "full": Variant(192, ((4, 1),), 0.6),
}
NMS_IOU = 0.3
SCORE_CLIP = 100.0


class BlazeFace:
    """BlazeFace behind the ``Detector`` protocol.

    ``model`` "short" (faces filling > ~20 % of the frame: portraits, kiosks, doors) or "full";
    ``weights`` a .tflite file, a directory made by ``fetch-weights --detector blazeface`` or None
    (the cache's), the last two checked against the pinned sha256; ``runtime`` gives
    the thread count (the net always runs on LiteRT, whatever the face model's backend).
    ``score_threshold`` None keeps MediaPipe's cut-off for the variant.
    """

    name = "blazeface"

    def __init__(self, weights: Optional[Union[str, Path]] = None, runtime: Union[Runtime, str, None] = None,
                 *, model: str = "short", threads: Optional[int] = None,
                 score_threshold: Optional[float] = None, nms_threshold: float = NMS_IOU):
        if model not in VARIANTS:
            raise SfpnError(f"BlazeFace model must be one of {sorted(VARIANTS)}, got {model!r}")
        self.variant = VARIANTS[model]
        self.model = model
        threshold = self.variant.min_score if score_threshold is None else score_threshold
        if not 0.0 <= threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise SfpnError("score_threshold and nms_threshold must be in [0, 1]")
        self.score_threshold, self.nms_threshold = float(threshold), float(nms_threshold)
        if not isinstance(runtime, Runtime):
            runtime = Runtime.resolve("litert", threads=threads) if runtime is None else \
                Runtime.resolve(runtime, threads=threads)
        from sfpn_edge.backends.litert_backend import LiteRtBackend

        path = Path(weights) if weights is not None and not Path(weights).is_dir() else model_path(model, weights)
        self.backend = LiteRtBackend(path, threads=runtime.threads)
        self._check_io(path)
        self._anchors = self.variant.anchors()

    def _check_io(self, path: Path) -> None:
        side = self.variant.size
        spec = self.backend.inputs
        n = len(self.variant.anchors())
        if len(spec) != 1 or tuple(spec[0].shape[1:]) != (3, side, side) or spec[0].dtype != np.float32:
            raise ModelError(f"{path.name} is not a BlazeFace {self.model}-range model "
                             f"(input {[tuple(s.shape) for s in spec]}, expected 1x{side}x{side}x3 float32)")
        outputs = self.backend.run(np.zeros((1, 3, side, side), np.float32))
        shapes = sorted(tuple(o.shape) for o in outputs)
        if shapes != [(1, n, 1), (1, n, 16)]:
            raise ModelError(f"{path.name} is not a BlazeFace {self.model}-range model (outputs {shapes}, "
                             f"expected 1x{n}x16 and 1x{n}x1)")

    def detect(self, image: np.ndarray) -> List[Face]:
        """Faces in a uint8 BGR (H, W, 3) image, best score first."""
        image = check_image(image)
        tensor, scale, (pad_x, pad_y) = self._letterbox(image)
        outputs = self.backend.run(tensor)
        regress, logits = sorted(outputs, key=lambda o: o.shape[-1], reverse=True)
        raw, logit = regress[0], logits[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logit.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        side = float(self.variant.size)
        anchors = self._anchors[keep]
        values = raw[keep].reshape(-1, 8, 2) / side        # (x, y) pairs: centre, size, 6 keypoints
        centre, size = values[:, 0] + anchors, values[:, 1]
        points = values[:, 2:] + anchors[:, None, :]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        faces = self._blend(boxes, points, scores[keep].astype(np.float32))
        to_image = np.array([pad_x, pad_y], np.float32)
        return [Face(tuple(float(v) for v in ((box.reshape(2, 2) * side - to_image) / scale).ravel()), float(score),
                     None, ((pts * side - to_image) / scale).astype(np.float32), KEYPOINTS)
                for box, pts, score in faces]

    def _letterbox(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
        """The net's input [1, 3, S, S] (RGB in [-1, 1]), the (x, y) scale image -> input and the padding."""
        side = self.variant.size
        h, w = image.shape[:2]
        scale = side / max(h, w)
        size = (max(1, min(side, round(w * scale))), max(1, min(side, round(h * scale))))
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        small = cv2.resize(image, size, interpolation=interp)
        pad_x, pad_y = (side - size[0]) // 2, (side - size[1]) // 2
        square = cv2.copyMakeBorder(small, pad_y, side - size[1] - pad_y, pad_x, side - size[0] - pad_x,
                                    cv2.BORDER_CONSTANT, value=0)
        rgb = square[:, :, ::-1].astype(np.float32) * (1.0 / 127.5) - 1.0
        return rgb.transpose(2, 0, 1)[None], np.array([size[0] / w, size[1] / h], np.float32), (pad_x, pad_y)

    def _blend(self, boxes: np.ndarray, points: np.ndarray, scores: np.ndarray) -> list:
        """Weighted NMS: each kept detection becomes the score-weighted mean of its cluster."""
        rows = np.ascontiguousarray(np.concatenate([boxes, scores[:, None]], axis=1), np.float32)
        rows[:, 2:4] = np.maximum(rows[:, 2:4], rows[:, 0:2])
        kept, owner = nms_clusters(rows, self.nms_threshold)
        out = []
        for k in kept:
            member = owner == k
            weight = scores[member] / scores[member].sum()
            out.append((weight @ boxes[member], np.einsum("n,nkc->kc", weight, points[member]), scores[k]))
        return out


class BlazeFaceFull(BlazeFace):
    """BlazeFace full range (192 x 192 input, one 48 x 48 anchor map): faces down to ~5 % of the frame."""

    name = "blazeface-full"

    def __init__(self, weights: Optional[Union[str, Path]] = None, runtime: Union[Runtime, str, None] = None,
                 **options):
        super().__init__(weights, runtime, **{"model": "full", **options})
