import numpy as np
import pytest

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
