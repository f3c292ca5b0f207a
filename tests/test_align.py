"""sfpn_edge.align: matrix builders (box, Umeyama, landmarks, flip) and crop_batch."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzing import examples
from sfpn_edge import align


def apply(m, points):
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def linear_lstsq_similarity(src, dst):
    """Independent float64 reference: a 2-D similarity is linear in (a, b, tx, ty)."""
    k = len(src)
    rows = np.zeros((2 * k, 4))
    rows[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(k), np.zeros(k)]
    rows[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(k), np.ones(k)]
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def test_points_box():
    assert align.points_box([[3, 9], [1.5, 4], [7, 5]]) == (1.5, 4.0, 7.0, 9.0)
    for bad in ([], [[1, 2, 3]], [[np.nan, 1]], "ab"):
        with pytest.raises(ValueError):
            align.points_box(bad)


def test_box_matrix_geometry():
    m = align.box_matrix((100, 50, 160, 130), 0.25, size=113)  # 60 x 80 box -> 100 px square
    assert m.dtype == np.float64 and m.shape == (2, 3)
    s = 113 / 100.0
    np.testing.assert_allclose(m[:, :2], np.eye(2) * s)
    # continuous corners of the square (80, 40) .. (180, 140) land on the crop's outer edges
    corners = np.array([[80.0, 40.0], [180.0, 140.0]])
    np.testing.assert_allclose(apply(m, corners - 0.5) + 0.5, [[0, 0], [113, 113]], atol=1e-9)


def test_full_image_box_equals_cv2_resize():
    img = np.random.default_rng(0).integers(0, 256, (90, 90, 3), dtype=np.uint8)
    for size in (113, 40):
        out = align.crop_batch(img, align.box_matrix((0, 0, 90, 90), 0.0, size), size=size, mean=(0, 0, 0))
        ref = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].transpose(2, 0, 1)
        assert np.abs(out[0] - ref).max() <= 1.0


@pytest.mark.parametrize("box, margin", [((0, 0, 0, 5), 0.1), ((5, 0, 1, 5), 0.1), ((0, 0, 5, 5), -1.0),
                                         ((0, 0, np.inf, 5), 0.1), ((0, 0, 5), 0.1), ("abcd", 0.1)])
def test_box_matrix_rejects_bad_boxes(box, margin):
    with pytest.raises(ValueError):
        align.box_matrix(box, margin)


@settings(max_examples=examples(200), deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 12), noise=st.sampled_from([0.0, 0.01, 1.0, 30.0]))
def test_similarity_matches_float64_least_squares(seed, k, noise):
    rng = np.random.default_rng(seed)
    src = rng.uniform(-200, 800, (k, 2))
    angle, scale = rng.uniform(-np.pi, np.pi), np.exp(rng.uniform(-3, 3))
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ a.T + rng.uniform(-500, 500, 2) + rng.normal(0, noise, (k, 2))
    m = align.similarity_matrix(src, dst)
    ref = linear_lstsq_similarity(src, dst)
    np.testing.assert_allclose(m, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))
    if noise == 0.0:
        np.testing.assert_allclose(apply(m, src), dst, atol=1e-6)


def test_similarity_never_reflects():
    src = np.array([[0.0, 0], [10, 0], [0, 5], [7, 9]])
    mirrored = src * [-1, 1]
    m = align.similarity_matrix(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    np.testing.assert_allclose(m, linear_lstsq_similarity(src, mirrored), atol=1e-9)


@pytest.mark.parametrize("src, dst", [
    (np.zeros((3, 2)), np.ones((3, 2))),            # coincident source points
    (np.ones((1, 2)), np.ones((1, 2))),             # one pair
    (np.ones((3, 2)), np.ones((4, 2))),             # shape mismatch
    ([[0, 0], [1, np.nan]], [[0, 0], [1, 1]]),      # NaN
    (np.ones((3, 3)), np.ones((3, 3))),             # not 2-D points
])
def test_similarity_rejects_bad_points(src, dst):
    with pytest.raises(ValueError):
        align.similarity_matrix(src, dst)


def test_template_is_upright_symmetric_and_inside_the_crop():
    t = align.TEMPLATE_113
    assert t.shape == (5, 2)
    np.testing.assert_allclose(t[0, 1], t[1, 1])                  # eyes level
    np.testing.assert_allclose(t[[0, 3], 0] + t[[1, 4], 0], 113.0)  # mirror-symmetric about the centre
    assert t[0, 0] < t[2, 0] < t[1, 0] and t[1, 1] < t[2, 1] < t[3, 1]
    assert (t > 10).all() and (t < 103).all()


def test_landmark_matrix_recovers_a_known_pose():
    assert np.allclose(align.landmark_matrix(align.TEMPLATE_113), [[1, 0, 0], [0, 1, 0]])
    # landmarks of a face that was rotated, scaled and moved in the photo
    angle, s, t = 0.4, 2.5, np.array([300.0, 120.0])
    rot = s * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    photo_points = align.TEMPLATE_113 @ rot.T + t
    m = align.landmark_matrix(photo_points, size=226)
    # continuous -> index convention: the point p (continuous) sits at index p - 0.5
    np.testing.assert_allclose(apply(m, photo_points - 0.5) + 0.5, align.TEMPLATE_113 * 2, atol=1e-9)
    with pytest.raises(ValueError):
        align.landmark_matrix(photo_points, size=0)


def test_hflip_matrix_mirrors_the_crop():
    rng = np.random.default_rng(8)
    img = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    m = align.similarity_matrix([[40, 50], [90, 45], [70, 100]], [[30, 40], [80, 40], [56, 90]])
    out = align.crop_batch(img, np.stack([m, align.hflip_matrix(m, 113)]), image_index=[0, 0])
    # equal up to float32 source coordinates (~1e-5 pixel on a noise image: < 0.01 grey level)
    np.testing.assert_allclose(out[1], out[0][:, :, ::-1], atol=1e-2)
    np.testing.assert_allclose(align.hflip_matrix(align.hflip_matrix(m, 113), 113), m, atol=1e-12)
    with pytest.raises(ValueError):
        align.hflip_matrix(np.eye(3), 113)


def test_crop_batch_defaults_to_model_input():
    img = np.full((60, 80, 3), (10, 100, 200), np.uint8)  # BGR
    out = align.crop_batch(img, align.box_matrix((10, 10, 50, 50), 0.1))
    assert out.shape == (1, 3, 113, 113) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 0], np.float32([200, 100, 10]) - np.float32(align.MEAN_RGB))
    rgb = align.crop_batch(img[:, :, ::-1], align.box_matrix((10, 10, 50, 50), 0.1), channel_order="RGB")
    np.testing.assert_array_equal(rgb, out)
    from sfpn_edge import threads

    assert 1 <= threads.default_threads() <= threads.MAX_DEFAULT_THREADS


def test_crop_batch_bad_input_is_value_error():
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError):
        align.crop_batch(img.astype(np.float64), np.eye(2, 3))
    with pytest.raises(ValueError):
        align.crop_batch(img, np.eye(3))
    with pytest.raises(ValueError):
        align.crop_batch(img, np.eye(2, 3), threads=-1)


def test_example_crop_identity_box_reproduces_pixels(example_crops):
    """The authors' 113x113 examples are already model input: box (0,0,113,113) copies them."""
    for path in example_crops:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        m = align.box_matrix((0, 0, 113, 113), 0.0)
        np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
        out = align.crop_batch(img, m)
        want = img[:, :, ::-1].astype(np.float32) - np.float32(align.MEAN_RGB)
        np.testing.assert_array_equal(out[0], want.transpose(2, 0, 1))
