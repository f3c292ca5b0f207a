"""Greedy non-maximum suppression over [N, 5] float32 boxes (x0, y0, x1, y1, score), as MTCNN uses.

Convention (classic MTCNN): corners are inclusive pixels, so a box is x1 - x0 + 1 wide and
y1 - y0 + 1 high. Boxes are visited by score, best first (equal scores: lower index first); a box
is dropped when its overlap with an already kept box exceeds ``threshold``. Overlap is
intersection / union (``mode="union"``, IoU) or intersection / smaller area (``mode="min"``).
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

cdef extern from "nms_c.h" nogil:
    size_t sfpn_nms_sorted(const float *b, size_t n, float threshold, int use_min, float *area,
                           unsigned char *dead, int64_t *keep)

MODES = ("union", "min")


def nms(boxes, threshold, mode="union"):
    """Indices (int64, best score first) of the boxes greedy NMS keeps.

    ``boxes``: float32 [N, 5] C-contiguous, finite, with x1 >= x0 and y1 >= y0; N may be 0.
    ``threshold``: overlap in [0, 1] above which a lower-scored box is suppressed.
    """
    if not isinstance(boxes, np.ndarray):
        raise ValueError(f"boxes must be a numpy array, got {type(boxes).__name__}")
    if boxes.dtype != np.float32:
        raise ValueError(f"boxes must be float32, got {boxes.dtype}")
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be [N, 5] (x0, y0, x1, y1, score), got shape {boxes.shape}")
    if not boxes.flags.c_contiguous:
        raise ValueError("boxes must be C-contiguous (use np.ascontiguousarray)")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or inf")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(f"box {int(np.argmax(inverted))} has x1 < x0 or y1 < y0")
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    order = np.argsort(-boxes[:, 4], kind="stable")
    ranked = np.ascontiguousarray(boxes[order])
    cdef size_t n = boxes.shape[0], kept = 0
    area = np.empty(n, np.float32)
    dead = np.zeros(n, np.uint8)
    keep = np.empty(n, np.int64)
    cdef cnp.float32_t[:, ::1] b = ranked
    cdef cnp.float32_t[::1] a = area
    cdef unsigned char[::1] dd = dead
    cdef int64_t[::1] kp = keep
    cdef float thr = threshold
    cdef int use_min = mode == "min"
    if n:
        with nogil:
            kept = sfpn_nms_sorted(&b[0, 0], n, thr, use_min, &a[0], &dd[0], &kp[0])
    return order[keep[:kept]].astype(np.int64)
