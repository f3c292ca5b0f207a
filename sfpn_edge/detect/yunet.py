"""Adapter for OpenCV's YuNet detector (``cv2.FaceDetectorYN``) when you have its ``.onnx`` file.

    detector = YuNet("face_detection_yunet_2023mar.onnx")
    faces = detector.detect(image)   # same Face results as MTCNN

sfpn-edge does not ship or fetch YuNet weights; bring the model file (OpenCV model zoo).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import List, Union

import cv2
import numpy as np

from sfpn_edge.detect import Face, check_image
from sfpn_edge.errors import ModelError, SfpnError


class YuNet:
    """``cv2.FaceDetectorYN`` behind the ``Detector`` protocol.

    YuNet rows are (x, y, w, h, right eye, left eye, nose tip, right and left mouth corner,
    score), "right" being the subject's right, i.e. the image-left point: this is the
    ``LANDMARKS`` order of ``sfpn_edge.detect`` (image-left first), so the points map directly.
    """

    name = "yunet"

    def __init__(self, model_path: Union[str, Path], runtime=None, *, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, top_k: int = 5000):
        """``runtime`` is accepted for the detector registry's factory; OpenCV's DNN module runs YuNet."""
        if model_path is None:
            raise ModelError("YuNet needs its .onnx file (sfpn-edge does not ship or fetch it)")
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"YuNet model file not found: {path}")
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0 or top_k < 1:
            raise SfpnError("score_threshold and nms_threshold must be in [0, 1], top_k >= 1")
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold,
                                                  nms_threshold, top_k)
        except cv2.error as exc:
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
            raise ModelError(f"OpenCV cannot load {path.name} as a YuNet model: {message}") from None
        self._lock = threading.Lock()  # the OpenCV object keeps the input size as state

    def detect(self, image: np.ndarray) -> List[Face]:
        """Faces in a uint8 BGR (H, W, 3) image, best score first."""
        image = check_image(image)
        with self._lock:
            self._net.setInputSize((image.shape[1], image.shape[0]))
            _, rows = self._net.detect(np.ascontiguousarray(image))
        if rows is None:
            return []
        faces = [
            Face((float(r[0]), float(r[1]), float(r[0] + r[2]), float(r[1] + r[3])), float(r[14]),
                 np.asarray(r[4:14], np.float32).reshape(5, 2))
            for r in rows
        ]
        return sorted(faces, key=lambda f: -f.score)
