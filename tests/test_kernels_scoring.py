import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzing import examples
from sfpn_edge.kernels import scoring


def test_l2_normalize_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 1000)).astype(np.float32)
    ref = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(scoring.l2_normalize(x), ref, rtol=1e-5, atol=1e-6)


def test_l2_normalize_zero_row_stays_zero():
    x = np.zeros((2, 8), np.float32)
    x[1, 3] = 2.0
    out = scoring.l2_normalize(x)
    assert not out[0].any()
    assert out[1, 3] == 1.0


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((2, 3), np.float64), "float32"),
        (np.ones(3, np.float32), "2-D"),
        (np.ones((3, 4), np.float32)[:, ::2], "contiguous"),
        (np.array([[1.0, np.nan]], np.float32), "NaN"),
        ([[1.0, 2.0]], "numpy array"),
    ],
)
def test_l2_normalize_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        scoring.l2_normalize(bad)


# ---------------------------------------------------------------- helpers

def reference_topk(scores: np.ndarray, k: int):
    """NumPy top-k per row: score descending, ties by the lower index (a full stable sort)."""
    order = np.stack([np.lexsort((np.arange(s.size), -s))[:k] for s in scores])
    return order, np.take_along_axis(scores, order, 1)


@pytest.fixture(params=[False, True], ids=["dispatch", "portable"])
def isa(request):
    """Run a test on the CPU's best variants and on the portable fallbacks."""
    scoring.use_portable(request.param)
    yield request.param
    scoring.use_portable(False)


def int_valued(rng, shape, lo=-3, hi=4):
    """Small integers as float32: every dot product is exact, whatever the summation order."""
    return rng.integers(lo, hi, shape).astype(np.float32)


# ---------------------------------------------------------------- fp32 pieces

def test_l2_normalize_survives_huge_values():
    x = np.full((1, 1000), 1e30, np.float32)
    np.testing.assert_allclose(np.linalg.norm(scoring.l2_normalize(x)), 1.0, rtol=1e-6)


# Rows whose float32 sum of squares underflows: subnormal values (< 1.2e-38), and tiny normal
# ones whose squares are subnormal or zero. Before the double-precision fallback the first two
# scales normalised to all zeros and scored 0.
TINY_SCALES = [1e-43, 1e-30, 1e-22]


@pytest.mark.parametrize("scale", TINY_SCALES)
def test_tiny_and_subnormal_rows_scale_to_unit_length(isa, scale):
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(4, 1000)) * scale).astype(np.float32)
    assert x.any(axis=1).all()
    x64 = x.astype(np.float64)
    unit = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    np.testing.assert_allclose(scoring.l2_normalize(x), unit, atol=1e-6)
    np.testing.assert_allclose(scoring.cosine_pairs(x, x[::-1].copy()), (unit * unit[::-1]).sum(1), atol=1e-6)
    probes = scoring.l2_normalize(rng.normal(size=(3, 1000)).astype(np.float32))
    np.testing.assert_allclose(scoring.dot_scores(probes, x, normalize_b=True), probes @ unit.T, atol=1e-6)
    idx, best = scoring.topk_fp32(probes, x, 2, normalize=True)
    ref_i, ref_s = reference_topk((probes @ unit.T).astype(np.float32), 2)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(best, ref_s, atol=1e-6)


@pytest.mark.parametrize("scale", TINY_SCALES)
def test_quantize_int8_of_tiny_rows(scale):
    x = (np.random.default_rng(12).normal(size=(2, 64)) * scale).astype(np.float32)
    x[:, ::4] = 0  # zeros times an overflowing 127 / max|x| were NaN, cast to int8
    q, qscale, rowsum = scoring.quantize_int8(x)
    x64 = x.astype(np.float64)
    ref = np.clip(np.rint(x64 * (127.0 / np.abs(x64).max(1, keepdims=True))), -127, 127)
    np.testing.assert_array_equal(q, ref)
    assert (q[:, ::4] == 0).all() and np.array_equal(rowsum, q.sum(1))


def _f32(value: float) -> float:
    return float(np.float32(value))


# Any finite float32, with extra weight on tiny, subnormal and huge magnitudes.
extreme = (st.floats(width=32, allow_nan=False, allow_infinity=False)
           | st.floats(_f32(-1e-30), _f32(1e-30), width=32)
           | st.floats(_f32(-1e-38), _f32(1e-38), width=32)
           | st.floats(_f32(1e36), _f32(3e38), width=32))


@given(st.integers(1, 5), st.integers(1, 70), st.data())
@settings(max_examples=examples(80), deadline=None)
def test_fuzz_norms_of_any_magnitude(n, d, data):
    """Every non-zero row normalises to unit length and cosines match float64, at any magnitude."""
    x = np.array(data.draw(st.lists(extreme, min_size=n * d, max_size=n * d)), np.float32).reshape(n, d)
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    out = scoring.l2_normalize(x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), (norms > 0).astype(float),
                               atol=1e-5)
    b = np.ascontiguousarray(x[::-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = (x64 * b.astype(np.float64)).sum(1) / (norms * norms[::-1])
    ref[(norms == 0) | (norms[::-1] == 0)] = 0
    np.testing.assert_allclose(scoring.cosine_pairs(x, b), ref, atol=1e-5)


def test_cosine_pairs_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 9, 1000)).astype(np.float32)
    a[3] = 0  # a zero row scores 0
    b[5] = 1e30  # overflowing float32 dot product: redone in double
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        ref = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    ref[3] = 0
    np.testing.assert_allclose(scoring.cosine_pairs(a, b), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [1, 31, 32, 33, 1000])
def test_dot_scores_matches_numpy(d):
    rng = np.random.default_rng(d)
    a, b = int_valued(rng, (5, d)), int_valued(rng, (130, d))
    np.testing.assert_array_equal(scoring.dot_scores(a, b), a @ b.T)
    b[7] = 0
    norms = np.linalg.norm(b.astype(np.float64), axis=1)
    ref = np.divide(a @ b.T, norms, out=np.zeros((5, 130)), where=norms > 0)
    np.testing.assert_allclose(scoring.dot_scores(a, b, normalize_b=True), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- top-k, exact

@pytest.mark.parametrize("p, n, d, k", [(1, 1, 7, 1), (1, 500, 64, 10), (3, 129, 100, 129), (7, 300, 1000, 5)])
def test_topk_fp32_identical_to_numpy(p, n, d, k):
    rng = np.random.default_rng(n + d)
    q, g = int_valued(rng, (p, d)), int_valued(rng, (n, d), 0, 2)  # many tied scores
    idx, s = scoring.topk_fp32(q, g, k)
    ref_i, ref_s = reference_topk(q @ g.T, k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(s, ref_s)


def test_topk_fp32_row_range():
    rng = np.random.default_rng(2)
    q, g = int_valued(rng, (2, 40)), int_valued(rng, (300, 40))
    idx, s = scoring.topk_fp32(q, g, 10, 100, 105)  # only 5 rows in range: 5 columns
    ref_i, ref_s = reference_topk(q @ g[100:105].T, 5)
    np.testing.assert_array_equal(idx, ref_i + 100)
    np.testing.assert_array_equal(s, ref_s)


@given(st.integers(1, 4), st.integers(1, 300), st.integers(1, 130), st.integers(0, 2**32 - 1), st.data())
@settings(max_examples=examples(60), deadline=None)
def test_topk_int8_exact_on_every_path(p, n, d, seed, data):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + p, d)).astype(np.float32)
    x[rng.random(n + p) < 0.1] = 0  # zero rows: scale 0
    qg, sg, rg = scoring.quantize_int8(x[:n])
    qp, sp, _ = scoring.quantize_int8(x[n:])
    dots = qp.astype(np.int64) @ qg.T.astype(np.int64)
    ref = (dots * (sp[:, None].astype(np.float64) * sg[None, :].astype(np.float64))).astype(np.float32)
    ref_i, ref_s = reference_topk(ref, k)
    for portable in (False, True):
        scoring.use_portable(portable)
        try:
            idx, s = scoring.topk_int8(qp, sp, qg, sg, rg, k)
        finally:
            scoring.use_portable(False)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(s, ref_s)


def test_quantize_int8():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 1000)).astype(np.float32)
    x[2] = 0
    q, scale, rowsum = scoring.quantize_int8(x)
    np.testing.assert_allclose(scale, np.abs(x).max(1) / 127, rtol=1e-6)
    assert np.abs(q).max() == 127 and not q[2].any() and scale[2] == 0
    np.testing.assert_array_equal(rowsum, q.sum(1, dtype=np.int64))
    err = np.abs(q * scale[:, None] - x)
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()  # round to nearest


def test_variants_on_this_cpu():
    v = scoring.variants()
    assert v["int8"] in ("avx512vnni", "portable") and v["fp16"] in ("avx512f", "f16c", "portable")
    scoring.use_portable(True)
    try:
        assert scoring.variants() == {"int8": "portable", "fp16": "portable"}
    finally:
        scoring.use_portable(False)


@pytest.mark.parametrize("d", [1, 15, 16, 17, 1000])
def test_topk_fp16_matches_float64(isa, d):
    rng = np.random.default_rng(d)
    g = rng.random((200, d), dtype=np.float32).astype(np.float16)
    q = rng.random((3, d), dtype=np.float32)
    idx, s = scoring.topk_fp16(q, g, 200)  # k = N: the full ranking
    ref = q.astype(np.float64) @ g.astype(np.float64).T
    np.testing.assert_allclose(s, np.take_along_axis(ref, idx, 1), rtol=1e-5)
    assert (np.diff(s, axis=1) <= 0).all()
    np.testing.assert_array_equal(np.sort(idx, 1), np.tile(np.arange(200), (3, 1)))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("storage", ["fp32", "fp16", "int8"])
def test_topk_reports_non_finite_gallery_row(isa, storage):
    g = np.ones((100, 20), np.float32)
    q = np.ones((1, 20), np.float32)
    if storage == "fp32":
        g[42, 3] = np.nan
        call = lambda: scoring.topk_fp32(q, g, 5)  # noqa: E731
    elif storage == "fp16":
        g[42, 3] = np.inf
        call = lambda: scoring.topk_fp16(q, g.astype(np.float16), 5)  # noqa: E731
    else:
        qg, sg, rg = scoring.quantize_int8(g)
        qp, sp, _ = scoring.quantize_int8(q)
        sg[42] = np.inf
        call = lambda: scoring.topk_int8(qp, sp, qg, sg, rg, 5)  # noqa: E731
    with pytest.raises(ValueError, match="gallery row 42"):
        call()


def _f32(*shape):
    return np.ones(shape, np.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 9), 1), "D=8"),
        (lambda: scoring.topk_fp32(_f32(1, 8).astype(np.float64), _f32(10, 8), 1), "float32"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8).astype(np.float16), 1), "float32"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), 0), "1..10"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), -1), "1..10"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), 11), "1..10"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), 2.0), "integer"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), True), "integer"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(0, 8), 1), "empty"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), 1, 5, 5), "range"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 8), 1, 0, 11), "range"),
        (lambda: scoring.topk_fp32(np.full((1, 8), np.inf, np.float32), _f32(10, 8), 1), "NaN"),
        (lambda: scoring.topk_fp32(_f32(1, 8), _f32(10, 16)[:, ::2], 1), "contiguous"),
        (lambda: scoring.topk_fp16(_f32(1, 8), _f32(10, 8), 1), "float16"),
        (lambda: scoring.topk_int8(np.ones((1, 8), np.int8), _f32(2), np.ones((3, 8), np.int8),
                                   _f32(3), np.ones(3, np.int32), 1), "probe_scale"),
        (lambda: scoring.topk_int8(np.ones((1, 8), np.int8), _f32(1), np.ones((3, 8), np.int8),
                                   _f32(2), np.ones(3, np.int32), 1), "one entry per gallery row"),
        (lambda: scoring.topk_int8(_f32(1, 8), _f32(1), np.ones((3, 8), np.int8),
                                   _f32(3), np.ones(3, np.int32), 1), "int8"),
        (lambda: scoring.quantize_int8(_f32(1, scoring.MAX_INT8_DIM + 1)), "D <="),
        (lambda: scoring.cosine_pairs(_f32(2, 8), _f32(3, 8)), "rows"),
        (lambda: scoring.cosine_pairs(_f32(2, 8), _f32(2, 7)), "D=7"),
        (lambda: scoring.dot_scores(_f32(2, 8), _f32(3, 7)), "D=7"),
    ],
)
def test_kernels_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
