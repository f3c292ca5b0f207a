"""Greedy non-maximum suppression over [N, 5] float32 boxes (x0, y0, x1, y1, score).

``nms`` is MTCNN's: corners are inclusive pixels, so a box is x1 - x0 + 1 wide and y1 - y0 + 1
high. ``nms_clusters`` is the same greedy pass on continuous coordinates (width x1 - x0) that also
says which kept box suppressed each box, for weighted NMS (BlazeFace blends each cluster). Boxes are visited by score, best first (equal scores: lower index first); a box
is dropped when its overlap with an already kept box exceeds ``threshold``. Overlap is
intersection / union (``mode="union"``, IoU) or intersection / smaller area (``mode="min"``).
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

cdef extern from "nms_c.h" nogil:
    size_t sfpn_nms_sorted(const float *b, size_t n, float threshold, int use_min, float edge,
                           float *area, unsigned char *dead, int64_t *keep, int64_t *owner)

MODES = ("union", "min")


def nms(boxes, threshold, mode="union"):
    """Indices (int64, best score first) of the boxes greedy NMS keeps.

    ``boxes``: float32 [N, 5] C-contiguous, finite, with x1 >= x0 and y1 >= y0; N may be 0.
    ``threshold``: overlap in [0, 1] above which a lower-scored box is suppressed.
    """
    return _greedy(boxes, threshold, mode, 1.0, False)[0]


def nms_clusters(boxes, threshold, mode="union"):
    """(kept, owner): the indices NMS keeps (best score first) and, for every box, the index of
    the kept box that suppressed it (its own index when kept), on continuous coordinates.

    Same input rules as :func:`nms`; owner[i] is the first kept box overlapping box i above
    ``threshold``, i.e. the cluster weighted NMS merges it into.
    """
    return _greedy(boxes, threshold, mode, 0.0, True)


def _greedy(boxes, threshold, mode, float edge, bint with_owner):
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
    owner = np.empty(n, np.int64)
    cdef cnp.float32_t[:, ::1] b = ranked
    cdef cnp.float32_t[::1] a = area
    cdef unsigned char[::1] dd = dead
    cdef int64_t[::1] kp = keep
    cdef int64_t[::1] ow = owner
    cdef float thr = threshold
    cdef int use_min = mode == "min"
    cdef int64_t *owner_ptr = NULL
    if n:
        if with_owner:
            owner_ptr = &ow[0]
        with nogil:
            kept = sfpn_nms_sorted(&b[0, 0], n, thr, use_min, edge, &a[0], &dd[0], &kp[0], owner_ptr)
    kept_index = order[keep[:kept]].astype(np.int64)
    if not with_owner:
        return kept_index, None
    owners = np.empty(n, np.int64)
    owners[order] = order[owner]
    return kept_index, owners
