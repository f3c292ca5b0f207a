"""The fused crop kernel against cv2.warpAffine + NumPy, an exact float64 reference, and bad input."""
from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import examples
from sfpn_edge.kernels.warp import warp_batch

MEAN = (131.0912, 103.8827, 91.4953)


def opencv_reference(img, m, size, mean, scale, channel_order):
    """What the kernel replaces: cv2.warpAffine, then RGB, float, mean, scale, CHW."""
    crop = cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    if crop.ndim == 2:
        crop = np.repeat(crop[:, :, None], 3, axis=2)
    elif channel_order == "BGR":
        crop = crop[:, :, ::-1]
    return ((crop.astype(np.float32) - np.float32(mean)) * np.float32(scale)).transpose(2, 0, 1)


def exact_reference(img, m, size, mean, scale, channel_order):
    """Unrounded bilinear sampling with replicated borders in float64."""
    img = img.reshape(img.shape[0], img.shape[1], -1).astype(np.float64)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif channel_order == "BGR":
        img = img[:, :, ::-1]
    inv = cv2.invertAffineTransform(m)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    h, w = img.shape[:2]

    def px(yy, xx):
        return img[np.clip(yy, 0, h - 1).astype(int), np.clip(xx, 0, w - 1).astype(int)]

    top = px(y0, x0) * (1 - fx) + px(y0, x0 + 1) * fx
    bot = px(y0 + 1, x0) * (1 - fx) + px(y0 + 1, x0 + 1) * fx
    v = top * (1 - fy) + bot * fy
    return ((v - np.asarray(mean)) * scale).transpose(2, 0, 1)


def random_matrix(rng, img_shape, size, far=False):
    """Image -> crop similarity/affine centred somewhere on (or far off) the image."""
    h, w = img_shape[:2]
    angle = rng.uniform(-np.pi, np.pi)
    zoom = np.exp(rng.uniform(np.log(0.2), np.log(5.0)))
    shear = rng.uniform(-0.3, 0.3)
    a = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    a = a @ np.array([[1.0, shear], [0.0, 1.0]])
    centre = rng.uniform([-0.3 * w, -0.3 * h], [1.3 * w, 1.3 * h])
    if far:
        centre += rng.choice([-1, 1], 2) * rng.uniform(200, 3000, 2)
    t = np.array([size / 2, size / 2]) - a @ centre
    return np.hstack([a, t[:, None]])


def make_image(rng, h, w, layout):
    """A uint8 image in one of several memory layouts (all views, no copies)."""
    if layout == "grey":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if layout == "grey1":
        return rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    if layout == "contiguous":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if layout == "strided":  # every 2nd row and 3rd column of a bigger image
        return rng.integers(0, 256, (2 * h + 1, 3 * w + 2, 3), dtype=np.uint8)[1::2, 2::3]
    if layout == "cropped":  # a window of a wider image: packed pixels, padded rows
        return rng.integers(0, 256, (h + 4, w + 7, 3), dtype=np.uint8)[2:h + 2, 3:w + 3]
    if layout == "reversed":  # negative strides everywhere, channels too
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)[::-1, ::-1, ::-1]
    if layout == "fortran":
        return np.asfortranarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if layout == "planar":  # CHW memory seen as HWC
        return rng.integers(0, 256, (3, h, w), dtype=np.uint8).transpose(1, 2, 0)
    raise AssertionError(layout)


LAYOUTS = ["grey", "grey1", "contiguous", "strided", "cropped", "reversed", "fortran", "planar"]


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    size=st.integers(1, 48),
    layout=st.sampled_from(LAYOUTS),
    order=st.sampled_from(["BGR", "RGB"]),
    far=st.booleans(),
    scale=st.sampled_from([1.0, 1 / 255.0, 0.5, 2.0, -1.0]),
)
def test_matches_opencv_within_one_grey_level(seed, h, w, size, layout, order, far, scale):
    rng = np.random.default_rng(seed)
    img = make_image(rng, h, w, layout)
    mats = np.stack([random_matrix(rng, img.shape, size, far) for _ in range(3)])
    mean = rng.uniform(0, 255, 3)
    out = warp_batch(img, mats, size=size, mean=mean, scale=scale, channel_order=order)
    assert out.shape == (3, 3, size, size) and out.dtype == np.float32 and out.flags.c_contiguous
    for face, m in zip(out, mats):
        ref = opencv_reference(img, m, size, mean, scale, order)
        assert np.abs(face - ref).max() <= abs(scale) * 1.0 + 1e-4
        exact = exact_reference(img, m, size, mean, scale, order)
        assert np.abs(face - exact).max() <= abs(scale) * 0.02 + 1e-4


def test_photo_sized_batch_matches_opencv_and_exact_reference():
    rng = np.random.default_rng(3)
    images = [cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 1.5)
              for _ in range(3)]
    mats = np.stack([random_matrix(rng, (480, 640), 113, far=i % 9 == 0) for i in range(24)])
    index = np.arange(24) % 3
    out = warp_batch(images, mats, index, mean=MEAN)
    for face, m, i in zip(out, mats, index):
        assert np.abs(face - opencv_reference(images[i], m, 113, MEAN, 1.0, "BGR")).max() <= 1.0
        # float32 source coordinates cost at most ~1e-4 pixel here
        assert np.abs(face - exact_reference(images[i], m, 113, MEAN, 1.0, "BGR")).max() < 0.01


def test_identity_copies_pixels_exactly():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = warp_batch(img, np.array([[[1.0, 0, -5], [0, 1, -3]]]), size=30, mean=(1, 2, 3), scale=0.5)
    want = (img[3:33, 5:35, ::-1].astype(np.float32) - np.float32([1, 2, 3])) * 0.5
    np.testing.assert_array_equal(out[0], want.transpose(2, 0, 1))


def test_fast_and_generic_gathers_agree_bitwise():
    """A packed image (64-bit gathers, with the per-row fallback near its last bytes) and the same
    pixels in a strided layout (byte gathers) must give identical floats, borders included."""
    rng = np.random.default_rng(5)
    for h, w in [(1, 1), (1, 9), (9, 1), (2, 2), (31, 17), (120, 160)]:
        packed = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        strided = np.zeros((h, w, 6), np.uint8)[:, :, ::2]
        strided[...] = packed
        mats = [random_matrix(rng, packed.shape, 24) for _ in range(12)]
        # crops over the bottom-right corner, where the fast path must fall back
        mats.append(np.array([[1.0, 0, 12 - w], [0, 1, 12 - h]]))
        mats.append(np.array([[0.5, 0, 12 - w / 2], [0, 0.5, 12 - h / 2]]))
        a = warp_batch(packed, np.stack(mats), size=24)
        b = warp_batch(strided, np.stack(mats), size=24)
        np.testing.assert_array_equal(a, b)


def test_threads_give_identical_results():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (100, 120, 3), dtype=np.uint8) for _ in range(2)]
    mats = np.stack([random_matrix(rng, (100, 120), 64) for _ in range(13)])
    index = rng.integers(0, 2, 13)
    one = warp_batch(images, mats, index, size=64, threads=1)
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(warp_batch(images, mats, index, size=64, threads=threads), one)


def test_strided_view_is_read_in_place():
    big = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    view = big[::2, 1::2]  # 6 MB of pixels; a copy would show up in tracemalloc
    mats = np.array([[[0.1, 0, 0], [0, 0.1, 0]]])
    tracemalloc.start()
    try:
        out = warp_batch(view, mats, size=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200_000
    assert np.abs(out[0] - opencv_reference(view, mats[0], 16, (0, 0, 0), 1.0, "BGR")).max() <= 1.0


def test_broadcast_image_without_memory():
    img = np.broadcast_to(np.array([10, 20, 30], np.uint8), (50, 60, 3))
    out = warp_batch(img, np.array([[[0.7, 0.2, 3], [-0.2, 0.7, 9]]]), size=20)
    np.testing.assert_array_equal(out[0], np.broadcast_to(np.float32([30, 20, 10])[:, None, None], (3, 20, 20)))


def test_image_index_defaults_and_routing():
    rng = np.random.default_rng(4)
    a, b = (rng.integers(0, 256, (30, 30, 3), dtype=np.uint8) for _ in range(2))
    m = np.array([[[1.0, 0, 0], [0, 1, 0]]] * 2)
    pair = warp_batch([a, b], m, size=30)  # one face per image when the counts match
    np.testing.assert_array_equal(pair[0], warp_batch(a, m[:1], size=30)[0])
    np.testing.assert_array_equal(pair[1], warp_batch(b, m[:1], size=30)[0])
    np.testing.assert_array_equal(warp_batch([a, b], m, [1, 1], size=30)[0], pair[1])
    with pytest.raises(ValueError, match="image_index is required"):
        warp_batch([a, b, a], m, size=30)


GOOD_IMG = np.zeros((10, 10, 3), np.uint8)
GOOD_M = np.array([[[1.0, 0, 0], [0, 1, 0]]])


@pytest.mark.parametrize(
    "images, matrices, kwargs, message",
    [
        (GOOD_IMG.astype(np.float32), GOOD_M, {}, "uint8"),
        (GOOD_IMG.astype(np.uint16), GOOD_M, {}, "uint8"),
        (np.zeros(10, np.uint8), GOOD_M, {}, "HxW"),
        (np.zeros((2, 10, 10, 3), np.uint8), GOOD_M, {}, "HxW"),
        (np.zeros((10, 10, 4), np.uint8), GOOD_M, {}, "channels"),
        (np.zeros((10, 10, 2), np.uint8), GOOD_M, {}, "channels"),
        (np.zeros((0, 10, 3), np.uint8), GOOD_M, {}, "empty"),
        (np.zeros((10, 0), np.uint8), GOOD_M, {}, "empty"),
        ([], GOOD_M, {}, "empty"),
        ([[1, 2], [3, 4]], GOOD_M, {}, "numpy array"),
        ("image.png", GOOD_M, {}, "numpy array"),
        (GOOD_IMG, np.zeros((1, 3, 3)), {}, r"\[N, 2, 3\]"),
        (GOOD_IMG, np.zeros((2, 3)), {}, r"\[N, 2, 3\]"),
        (GOOD_IMG, np.zeros((0, 2, 3)), {}, "no faces"),
        (GOOD_IMG, [[["a", 0, 0], [0, 1, 0]]], {}, "numeric"),
        (GOOD_IMG, GOOD_M * np.nan, {}, "NaN"),
        (GOOD_IMG, GOOD_M + np.array([0, 0, np.inf]), {}, "NaN or inf"),
        (GOOD_IMG, np.array([[[1.0, 2, 0], [2, 4, 0]]]), {}, "singular"),
        (GOOD_IMG, np.array([[[1e-200, 0, 0], [0, 1e-200, 0]]]), {}, "singular"),
        (GOOD_IMG, GOOD_M, {"image_index": [1]}, r"\[0, 1\)"),
        (GOOD_IMG, GOOD_M, {"image_index": [-1]}, r"\[0, 1\)"),
        (GOOD_IMG, GOOD_M, {"image_index": [0, 0]}, "1 integers"),
        (GOOD_IMG, GOOD_M, {"image_index": [0.0]}, "integers"),
        (GOOD_IMG, GOOD_M, {"size": 0}, "size"),
        (GOOD_IMG, GOOD_M, {"size": -5}, "size"),
        (GOOD_IMG, GOOD_M, {"size": 11.5}, "size"),
        (GOOD_IMG, GOOD_M, {"size": True}, "size"),
        (GOOD_IMG, GOOD_M, {"size": 10**9}, "size"),
        (GOOD_IMG, GOOD_M, {"mean": (1, 2)}, "3 numbers"),
        (GOOD_IMG, GOOD_M, {"mean": 5.0}, "3 numbers"),
        (GOOD_IMG, GOOD_M, {"mean": (1, 2, float("nan"))}, "finite"),
        (GOOD_IMG, GOOD_M, {"scale": float("inf")}, "finite"),
        (GOOD_IMG, GOOD_M, {"scale": "x"}, "number"),
        (GOOD_IMG, GOOD_M, {"channel_order": "BRG"}, "channel_order"),
        (GOOD_IMG, GOOD_M, {"threads": 0}, "threads"),
        (GOOD_IMG, GOOD_M, {"threads": 1.5}, "threads"),
    ],
)
def test_bad_input_raises_value_error(images, matrices, kwargs, message):
    with pytest.raises(ValueError, match=message):
        warp_batch(images, matrices, **kwargs)


def test_bad_image_in_list_is_named():
    with pytest.raises(ValueError, match=r"images\[1\]"):
        warp_batch([GOOD_IMG, GOOD_IMG.astype(np.int8)], np.concatenate([GOOD_M, GOOD_M]))
