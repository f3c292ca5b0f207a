"""Fused crop/alignment kernel: uint8 images + affine matrices -> normalised float32 NCHW batch.

``warp_batch`` equals, per face, ``cv2.warpAffine(image, matrix, (size, size),
flags=INTER_LINEAR, borderMode=BORDER_REPLICATE)`` followed by RGB reordering, mean
subtraction, scaling and HWC -> CHW, but in one pass, without the intermediate 8-bit
rounding, with the GIL released and output rows spread over threads. The hot loops are in
``warp_c.h``.
"""
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from "warp_c.h" nogil:
    ctypedef struct sfpn_image:
        const uint8_t *data
        int32_t row_stride
        int32_t col_stride
        int32_t ch_off[3]
        int32_t height
        int32_t width
        int32_t packed
        int32_t safe_end
        int32_t shift[3]

    ctypedef struct sfpn_face:
        double m[6]
        int32_t image

    ctypedef struct sfpn_warp_job:
        const sfpn_image *images
        const sfpn_face *faces
        float *out
        float bias[3]
        float scale
        int size
        size_t rows
        size_t block
        size_t next
        size_t done

    int sfpn_warp_work(sfpn_warp_job *job)
    void sfpn_warp_wait(sfpn_warp_job *job)

# Below this many output pixels per thread, handing work to another thread costs more than it saves.
MIN_PIXELS_PER_THREAD = 16384
# Output rows a thread claims at a time (one 113-pixel face is ~7 claims).
BLOCK_ROWS = 16
# Largest byte span of one image (offsets are 32-bit in the hot loop).
MAX_IMAGE_BYTES = 2**31 - 1
# Largest crop side (keeps every index of the hot loop well inside 32 bits).
MAX_SIZE = 16384
# An inverse matrix entry beyond this means a (numerically) singular map.
MAX_INVERSE_ENTRY = 1e100

_CHANNELS = {"BGR": (2, 1, 0), "RGB": (0, 1, 2)}


cdef class _WarpJob:
    """Validated C descriptors for one batch; ``work`` warps row blocks without the GIL."""
    cdef sfpn_image *images
    cdef sfpn_face *faces
    cdef sfpn_warp_job job
    cdef object keep  # the arrays the descriptors point into (images and output)

    def __dealloc__(self):
        free(self.images)
        free(self.faces)

    def work(self):
        """Warp blocks of rows until none are left; False if scratch memory ran out."""
        cdef int rc
        with nogil:
            rc = sfpn_warp_work(&self.job)
        return rc == 0

    def wait(self):
        with nogil:
            sfpn_warp_wait(&self.job)

    def finished(self):
        return self.job.done == self.job.rows


def _as_image_list(images):
    if isinstance(images, np.ndarray):
        return [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty")
        return list(images)
    raise ValueError(f"images must be a numpy array or a list of them, got {type(images).__name__}")


cdef void _describe_image(sfpn_image *d, img, int k, tuple channels) except *:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"images[{k}] must be a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"images[{k}] must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] not in (1, 3):
        raise ValueError(f"images[{k}] must have 1 or 3 channels, got shape {img.shape}")
    if img.ndim not in (2, 3):
        raise ValueError(f"images[{k}] must be HxW or HxWx3, got shape {img.shape}")
    h, w = img.shape[0], img.shape[1]
    if h < 1 or w < 1:
        raise ValueError(f"images[{k}] is empty (shape {img.shape})")
    grey = img.ndim == 2 or img.shape[2] == 1
    # a stride along an axis of length 1 is never used (and may be anything)
    rs = img.strides[0] if h > 1 else 0
    cs = img.strides[1] if w > 1 else 0
    chs = 0 if grey else img.strides[2]
    span = abs(rs) * (h - 1) + abs(cs) * (w - 1) + abs(chs) * 2 + 1
    if span > MAX_IMAGE_BYTES:
        raise ValueError(f"images[{k}] spans {span} bytes; at most {MAX_IMAGE_BYTES} are supported")
    d.data = <const uint8_t *> cnp.PyArray_DATA(img)
    d.row_stride = rs
    d.col_stride = cs
    d.height = h
    d.width = w
    for c in range(3):
        d.ch_off[c] = channels[c] * chs
        d.shift[c] = 8 * channels[c]
    d.packed = (not grey) and chs == 1 and cs == 3 and rs >= 3 * w
    d.safe_end = (h - 1) * rs + 3 * w - 8 if d.packed else -1  # 8-byte loads stay inside


def _inverse(m):
    """Inverse affine maps (crop -> image) of forward maps m [N, 2, 3], like cv2.invertAffineTransform."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv_det = 1.0 / det
        ia, ib, id_, ie = e * inv_det, -b * inv_det, -d * inv_det, a * inv_det
        inv = np.stack([ia, ib, -ia * c - ib * f, id_, ie, -id_ * c - ie * f], axis=1)
    bad = (det == 0) | ~np.isfinite(inv).all(axis=1) | (np.abs(inv) > MAX_INVERSE_ENTRY).any(axis=1)
    if bad.any():
        raise ValueError(f"matrices[{int(np.argmax(bad))}] is singular (not invertible)")
    return inv


def _check_matrices(matrices):
    try:
        m = np.asarray(matrices, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"matrices must be numeric [N, 2, 3]: {exc}") from None
    if m.ndim != 3 or m.shape[1:] != (2, 3):
        raise ValueError(f"matrices must have shape [N, 2, 3], got {m.shape}")
    if m.shape[0] == 0:
        raise ValueError("matrices is empty (no faces)")
    if not np.isfinite(m).all():
        raise ValueError("matrices contain NaN or inf")
    return m


def _check_index(image_index, size_t n_faces, size_t n_images):
    if image_index is None:
        if n_images == 1:
            return np.zeros(n_faces, dtype=np.int64)
        if n_images == n_faces:
            return np.arange(n_faces, dtype=np.int64)
        raise ValueError(f"image_index is required: {n_images} images for {n_faces} faces")
    idx = np.asarray(image_index)
    if idx.shape != (n_faces,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"image_index must be {n_faces} integers, got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= <long long> n_images:
        raise ValueError(f"image_index values must be in [0, {n_images}), got {idx.min()}..{idx.max()}")
    return idx.astype(np.int64)


def _check_number(x, str name):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return v


def _check_int(x, str name, int lo):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {x!r}")
    return int(x)


_pool = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _executor(int workers):
    """A shared pool with at least ``workers`` threads (grown on demand; a replaced pool's
    threads exit once no caller holds it any more)."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sfpn-warp")
            _pool_workers = workers
        return _pool


def warp_batch(images, matrices, image_index=None, *, size=113, mean=(0.0, 0.0, 0.0),
               scale=1.0, channel_order="BGR", threads=1):
    """Crop faces out of uint8 images into one float32 batch [N, 3, size, size] (RGB planes).

    images: one HxWx3 / HxW / HxWx1 uint8 array or a list of them (any strides, no copy);
    matrices: [N, 2, 3] affine maps image -> crop (as for cv2.warpAffine); image_index: [N]
    source image of each face (default: all image 0, or face i from image i when the counts
    match); mean: subtracted per output channel (R, G, B); scale: multiplies after the mean;
    channel_order: "BGR" or "RGB" order of the 3-channel inputs; threads: worker threads.
    Sampling is bilinear with replicated borders. Raises ValueError on any bad input.
    """
    imgs = _as_image_list(images)
    if channel_order not in _CHANNELS:
        raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {channel_order!r}")
    cdef _WarpJob job = _WarpJob()
    job.images = <sfpn_image *> malloc(len(imgs) * sizeof(sfpn_image))
    if job.images == NULL:
        raise MemoryError()
    channels = _CHANNELS[channel_order]
    for k, img in enumerate(imgs):
        _describe_image(&job.images[k], img, k, channels)
    cdef int isize = min(_check_int(size, "size", 1), MAX_SIZE + 1)
    if isize > MAX_SIZE:
        raise ValueError(f"size must be <= {MAX_SIZE}, got {size!r}")
    m = _check_matrices(matrices)
    cdef size_t n = m.shape[0]
    idx = _check_index(image_index, n, len(imgs))
    try:
        mean_v = [_check_number(v, "mean") for v in mean]
    except TypeError:
        raise ValueError(f"mean must be 3 numbers (R, G, B), got {mean!r}") from None
    if len(mean_v) != 3:
        raise ValueError(f"mean must be 3 numbers (R, G, B), got {mean!r}")
    cdef float fscale = _check_number(scale, "scale")
    cdef int nthreads = _check_int(threads, "threads", 1)
    inv = _inverse(m)

    job.faces = <sfpn_face *> malloc(n * sizeof(sfpn_face))
    if job.faces == NULL:
        raise MemoryError()
    cdef double[:, ::1] inv_v = inv
    cdef long long[::1] idx_v = idx
    cdef size_t i
    cdef int j
    for i in range(n):
        job.faces[i].image = <int32_t> idx_v[i]
        for j in range(6):
            job.faces[i].m[j] = inv_v[i, j]
    job.job.images = job.images
    job.job.faces = job.faces
    job.job.size = isize
    job.job.scale = fscale
    for j in range(3):
        job.job.bias[j] = <float> (-mean_v[j] * fscale)
    out = np.empty((n, 3, isize, isize), dtype=np.float32)
    job.job.out = <float *> cnp.PyArray_DATA(out)
    job.job.rows = n * isize
    job.job.block = BLOCK_ROWS
    job.job.next = 0
    job.job.done = 0
    job.keep = (imgs, out)

    workers = max(1, min(nthreads, (n * isize * isize) // MIN_PIXELS_PER_THREAD))
    futures = []
    if workers > 1:
        pool = _executor(workers - 1)
        futures = [pool.submit(job.work) for _ in range(workers - 1)]
    if job.work():
        job.wait()  # late workers find no rows left and return on their own
    else:
        for fut in futures:
            fut.result()
        if not job.finished():
            raise MemoryError("warp kernel: out of memory for scratch rows")
    return out
