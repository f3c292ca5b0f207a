"""Scoring kernels: L2 normalisation and cosine scores over float32 descriptors."""
import numpy as np

cimport numpy as cnp

cnp.import_array()

cdef extern from "scoring_c.h" nogil:
    void sfpn_l2_normalize_rows(const float *x, float *out, size_t n, size_t d)


def _check_matrix(x, str name):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def l2_normalize(x):
    """Return a copy of float32 ``x`` [N, D] with unit-L2-norm rows (zero rows stay zero)."""
    _check_matrix(x, "x")
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] src = x
    out = np.empty_like(x)
    cdef cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] dst = out
    cdef size_t n = src.shape[0], d = src.shape[1]
    if n and d:
        with nogil:
            sfpn_l2_normalize_rows(&src[0, 0], &dst[0, 0], n, d)
    return out
