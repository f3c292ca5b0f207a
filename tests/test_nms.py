import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzing import examples
from sfpn_edge.kernels.nms import nms


def nms_reference(boxes: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """The classic MTCNN NumPy loop (inclusive corners, +1), with a stable score order."""
    x0, y0, x1, y1, s = (boxes[:, c] for c in range(5))
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-s, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, np.int64)


@st.composite
def box_sets(draw):
    n = draw(st.integers(0, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # integer pixel boxes: many exact ties in overlap and score
        xy = rng.integers(0, 40, (n, 2)).astype(np.float32)
        wh = rng.integers(0, 20, (n, 2)).astype(np.float32)
        score = rng.integers(0, 4, n).astype(np.float32)
    else:
        xy = rng.uniform(-50, 300, (n, 2)).astype(np.float32)
        wh = rng.uniform(0, 80, (n, 2)).astype(np.float32)
        score = rng.random(n, dtype=np.float32)
    return np.ascontiguousarray(np.column_stack([xy, xy + wh, score]), dtype=np.float32)


@settings(max_examples=examples(300), deadline=None)
@given(box_sets(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(0, 1, width=32),
       st.sampled_from(["union", "min"]))
def test_nms_matches_numpy_reference(boxes, threshold, mode):
    kept = nms(boxes, threshold, mode)
    assert kept.dtype == np.int64
    np.testing.assert_array_equal(kept, nms_reference(boxes, threshold, mode))


def test_nms_known_case():
    boxes = np.array([
        [0, 0, 9, 9, 0.9],     # area 100
        [0, 0, 9, 4, 0.8],     # inside box 0: IoU 0.5, min-overlap 1.0
        [20, 20, 29, 29, 0.7],  # disjoint
        [1, 0, 10, 9, 0.95],   # vs box 0: IoU 90 / 110, min-overlap 0.9
    ], np.float32)
    np.testing.assert_array_equal(nms(boxes, 0.5, "union"), [3, 1, 2])
    np.testing.assert_array_equal(nms(boxes, 0.4, "union"), [3, 2])
    np.testing.assert_array_equal(nms(boxes, 0.9, "min"), [3, 0, 2])  # 0.9 is not above 0.9
    np.testing.assert_array_equal(nms(boxes, 0.85, "min"), [3, 2])
    np.testing.assert_array_equal(nms(boxes, 1.0, "min"), [3, 0, 1, 2])


def test_nms_equal_scores_keep_lower_index():
    boxes = np.array([[0, 0, 9, 9, 0.5], [0, 0, 9, 9, 0.5]], np.float32)
    np.testing.assert_array_equal(nms(boxes, 0.5), [0])


def test_nms_empty():
    kept = nms(np.zeros((0, 5), np.float32), 0.5)
    assert kept.shape == (0,) and kept.dtype == np.int64


@pytest.mark.parametrize(
    "boxes, threshold, mode, match",
    [
        (np.zeros((3, 5), np.float64), 0.5, "union", "float32"),
        (np.zeros((3, 4), np.float32), 0.5, "union", r"\[N, 5\]"),
        (np.zeros(5, np.float32), 0.5, "union", r"\[N, 5\]"),
        (np.zeros((3, 10), np.float32)[:, ::2], 0.5, "union", "contiguous"),
        (np.array([[0, 0, 1, 1, np.nan]], np.float32), 0.5, "union", "NaN"),
        (np.array([[0, 0, np.inf, 1, 1]], np.float32), 0.5, "union", "NaN or inf"),
        (np.array([[5, 0, 1, 1, 1]], np.float32), 0.5, "union", "x1 < x0"),
        (np.zeros((2, 5), np.float32), 1.5, "union", r"\[0, 1\]"),
        (np.zeros((2, 5), np.float32), -0.1, "union", r"\[0, 1\]"),
        (np.zeros((2, 5), np.float32), "0.5", "union", "number"),
        (np.zeros((2, 5), np.float32), 0.5, "iou", "mode"),
        ([[0, 0, 1, 1, 1]], 0.5, "union", "numpy array"),
    ],
)
def test_nms_rejects_bad_input(boxes, threshold, mode, match):
    with pytest.raises(ValueError, match=match):
        nms(boxes, threshold, mode)
