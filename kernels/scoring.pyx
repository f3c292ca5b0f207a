"""Scoring kernels over descriptors: L2 normalisation, cosine pairs, dot-score blocks, and
streaming top-k over fp32 / fp16 / int8 galleries (loops in scoring_c.h, GIL released).

Every entry point checks dtype, shape and contiguity and raises ValueError. Galleries are not
scanned for NaN/inf up front (that would double the cost of a query): the top-k loop checks
every score it computes and reports the first non-finite gallery row instead.
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t
from libc.string cimport memset

cnp.import_array()

cdef extern from "scoring_c.h" nogil:
    int sfpn_scoring_portable
    int SFPN_F32, SFPN_F16, SFPN_I8
    ctypedef struct sfpn_topk_args:
        int storage
        const void *gallery
        const float *gscale
        const int32_t *growsum
        int normalize
        const void *probes
        const float *pscale
        const float *gbias
        const float *pbias
    void sfpn_l2_normalize_rows(const float *x, float *out, size_t n, size_t d)
    void sfpn_cosine_pairs(const float *a, const float *b, float *out, size_t n, size_t d)
    void sfpn_dots_block_f32(const float *a, size_t na, const float *b, size_t nb, size_t d,
                             int normalize_b, float *out, size_t out_stride)
    void sfpn_quantize_i8(const float *x, size_t n, size_t d, int8_t *q, float *scale,
                          int32_t *rowsum)
    ptrdiff_t sfpn_topk(const sfpn_topk_args *a, size_t nprobe, size_t d, size_t start, size_t stop,
                        size_t k, int64_t *idx, float *score)
    const char *sfpn_i8_variant()
    const char *sfpn_f16_variant()

# int8 dot products accumulate 255 * 127 * D in int32 (VNNI shifts the probe to uint8).
MAX_INT8_DIM = 65536


def _check(x, str name, dtype, int ndim=2, bint finite=True):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {x.dtype}")
    if x.ndim != ndim:
        shape = "[N, D]" if ndim == 2 else "[N]"
        raise ValueError(f"{name} must be {ndim}-D {shape}, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if finite and x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_dims(a, b, str name_a, str name_b):
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} has D={a.shape[1]} but {name_b} has D={b.shape[1]}")


cdef inline const void *_ptr(cnp.ndarray x):
    return cnp.PyArray_DATA(x)


def l2_normalize(x):
    """Return a copy of float32 ``x`` [N, D] with unit-L2-norm rows (zero rows stay zero)."""
    _check(x, "x", np.float32)
    out = np.empty_like(x)
    cdef size_t n = x.shape[0], d = x.shape[1]
    cdef const float *src = <const float *>_ptr(x)
    cdef float *dst = <float *>_ptr(out)
    if n and d:
        with nogil:
            sfpn_l2_normalize_rows(src, dst, n, d)
    return out


def cosine_pairs(a, b):
    """Row-wise cosine similarity of float32 ``a`` and ``b`` [N, D] -> float32 [N].

    A zero row scores 0 against anything.
    """
    _check(a, "a", np.float32)
    _check(b, "b", np.float32)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a has {a.shape[0]} rows but b has {b.shape[0]}")
    _check_dims(a, b, "a", "b")
    out = np.empty(a.shape[0], np.float32)
    cdef size_t n = a.shape[0], d = a.shape[1]
    cdef const float *pa = <const float *>_ptr(a)
    cdef const float *pb = <const float *>_ptr(b)
    cdef float *po = <float *>_ptr(out)
    with nogil:
        sfpn_cosine_pairs(pa, pb, po, n, d)
    return out


def dot_scores(a, b, bint normalize_b=False):
    """Dot products of every row of float32 ``a`` [N, D] with every row of ``b`` [M, D] -> [N, M].

    With ``normalize_b`` each column is divided by the norm of its ``b`` row, computed in the
    same pass (zero rows score 0). A cache-blocked loop: BLAS wins once N is large (see
    ``sfpn_edge.score``, which picks).
    """
    _check(a, "a", np.float32)
    _check(b, "b", np.float32)
    _check_dims(a, b, "a", "b")
    out = np.empty((a.shape[0], b.shape[0]), np.float32)
    cdef size_t n = a.shape[0], m = b.shape[0], d = a.shape[1]
    cdef const float *pa = <const float *>_ptr(a)
    cdef const float *pb = <const float *>_ptr(b)
    cdef float *po = <float *>_ptr(out)
    with nogil:
        sfpn_dots_block_f32(pa, n, pb, m, d, normalize_b, po, m)
    return out


def quantize_int8(x):
    """Symmetric per-row int8 quantisation of float32 ``x`` [N, D].

    Returns ``(q int8 [N, D], scale float32 [N], rowsum int32 [N])`` with
    ``x ≈ q * scale[:, None]``, ``scale = max|x_row| / 127`` and ``rowsum = q.sum(1)``.
    """
    _check(x, "x", np.float32)
    if x.shape[1] > MAX_INT8_DIM:
        raise ValueError(f"int8 storage supports D <= {MAX_INT8_DIM}, got {x.shape[1]}")
    q = np.empty(x.shape, np.int8)
    scale = np.empty(x.shape[0], np.float32)
    rowsum = np.empty(x.shape[0], np.int32)
    cdef size_t n = x.shape[0], d = x.shape[1]
    cdef const float *px = <const float *>_ptr(x)
    cdef int8_t *pq = <int8_t *>_ptr(q)
    cdef float *ps = <float *>_ptr(scale)
    cdef int32_t *pr = <int32_t *>_ptr(rowsum)
    with nogil:
        sfpn_quantize_i8(px, n, d, pq, ps, pr)
    return q, scale, rowsum


def _range(gallery, k, start, stop):
    n = gallery.shape[0]
    if n == 0:
        raise ValueError("gallery is empty")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k < 1 or k > n:
        raise ValueError(f"k must be in 1..{n} (gallery rows), got {k}")
    stop = n if stop is None else stop
    if not 0 <= start < stop <= n:
        raise ValueError(f"row range [{start}, {stop}) is empty or outside 0..{n}")
    return int(k), int(start), int(stop)


cdef tuple _run_topk(sfpn_topk_args *args, probes, gallery, size_t k, size_t start, size_t stop):
    cdef size_t np_ = probes.shape[0], d = probes.shape[1]
    cdef size_t kk = min(k, stop - start)
    idx = np.empty((np_, k), np.int64)
    score = np.empty((np_, k), np.float32)
    cdef int64_t *pi = <int64_t *>_ptr(idx)
    cdef float *ps = <float *>_ptr(score)
    cdef ptrdiff_t status
    with nogil:
        status = sfpn_topk(args, np_, d, start, stop, k, pi, ps)
    if status == -2:
        raise MemoryError("top-k scratch buffers")
    if status >= 0:
        raise ValueError(f"gallery row {status} gives a non-finite score (NaN/inf in the row, "
                         "or values so large the dot product overflows)")
    return idx[:, :kk], score[:, :kk]


def _topk_float(probes, gallery, dtype, int storage, k, start, stop, bint normalize):
    """Top-k over a float32 or float16 gallery (float32 probes): checks, then the C scan."""
    _check(probes, "probes", np.float32)
    _check(gallery, "gallery", dtype, finite=False)
    _check_dims(probes, gallery, "probes", "gallery")
    k, start, stop = _range(gallery, k, start, stop)
    cdef sfpn_topk_args args
    memset(&args, 0, sizeof(args))
    args.storage = storage
    args.gallery = _ptr(gallery)
    args.probes = _ptr(probes)
    args.normalize = normalize
    return _run_topk(&args, probes, gallery, k, start, stop)


def topk_fp32(probes, gallery, k, start=0, stop=None, bint normalize=False):
    """Best ``k`` rows of float32 ``gallery`` [N, D] for each float32 probe [P, D].

    Scores are ``probe . row`` (divided by ``|row|`` with ``normalize``), best first, ties
    broken by the lower row index. Only rows ``[start, stop)`` are scanned (for splitting a
    gallery across threads); the result has ``min(k, stop - start)`` columns.
    Returns ``(idx int64 [P, k], scores float32 [P, k])``.
    """
    return _topk_float(probes, gallery, np.float32, SFPN_F32, k, start, stop, normalize)


def topk_fp16(probes, gallery, k, start=0, stop=None):
    """Like :func:`topk_fp32` for a float16 gallery (float32 probes, float32 accumulation)."""
    return _topk_float(probes, gallery, np.float16, SFPN_F16, k, start, stop, False)


def topk_int8(probes, probe_scale, gallery, gallery_scale, gallery_rowsum, k, start=0, stop=None,
              gallery_bias=None, probe_bias=None):
    """Like :func:`topk_fp32` for int8 probes and gallery as made by :func:`quantize_int8`.

    Scores are ``float32(dot * (gallery_scale[i] * probe_scale[p]) + gallery_bias[i] +
    probe_bias[p])`` evaluated in float64, with ``dot = q_p . q_i`` exact in int32; the biases are
    optional float32 [N] / [P] offsets (0 when omitted).
    """
    _check(probes, "probes", np.int8)
    _check(gallery, "gallery", np.int8)
    _check(probe_scale, "probe_scale", np.float32, ndim=1)
    _check(gallery_scale, "gallery_scale", np.float32, ndim=1, finite=False)
    _check(gallery_rowsum, "gallery_rowsum", np.int32, ndim=1)
    _check_dims(probes, gallery, "probes", "gallery")
    if gallery.shape[1] > MAX_INT8_DIM:
        raise ValueError(f"int8 storage supports D <= {MAX_INT8_DIM}, got {gallery.shape[1]}")
    if probe_scale.shape[0] != probes.shape[0]:
        raise ValueError(f"probe_scale has {probe_scale.shape[0]} entries for {probes.shape[0]} probes")
    if gallery_scale.shape[0] != gallery.shape[0] or gallery_rowsum.shape[0] != gallery.shape[0]:
        raise ValueError("gallery_scale and gallery_rowsum need one entry per gallery row")
    if gallery_bias is not None:
        _check(gallery_bias, "gallery_bias", np.float32, ndim=1, finite=False)
        if gallery_bias.shape[0] != gallery.shape[0]:
            raise ValueError("gallery_bias needs one entry per gallery row")
    if probe_bias is not None:
        _check(probe_bias, "probe_bias", np.float32, ndim=1)
        if probe_bias.shape[0] != probes.shape[0]:
            raise ValueError(f"probe_bias has {probe_bias.shape[0]} entries for {probes.shape[0]} probes")
    k, start, stop = _range(gallery, k, start, stop)
    cdef sfpn_topk_args args
    memset(&args, 0, sizeof(args))
    args.storage = SFPN_I8
    args.gallery = _ptr(gallery)
    args.gscale = <const float *>_ptr(gallery_scale)
    args.growsum = <const int32_t *>_ptr(gallery_rowsum)
    if gallery_bias is not None:
        args.gbias = <const float *>_ptr(gallery_bias)
    args.probes = _ptr(probes)
    args.pscale = <const float *>_ptr(probe_scale)
    if probe_bias is not None:
        args.pbias = <const float *>_ptr(probe_bias)
    return _run_topk(&args, probes, gallery, k, start, stop)


def variants():
    """The code paths the run-time dispatch picked on this CPU, e.g. ``{"int8": "avx512vnni"}``."""
    return {"int8": sfpn_i8_variant().decode(), "fp16": sfpn_f16_variant().decode()}


def use_portable(bint flag):
    """Bypass (True) or re-enable (False) the explicit ISA variants; for tests and benchmarks."""
    global sfpn_scoring_portable
    sfpn_scoring_portable = 1 if flag else 0
