"""Face alignment: affine matrices from boxes or landmarks, and the fused crop into model batches.

Coordinates: boxes and points are continuous image coordinates in which the image covers
[0, W] x [0, H] (pixel (i, j) spans [i, i+1) x [j, j+1); a box's x1/y1 are exclusive edges).
The matrices returned here map image pixel indices to crop pixel indices, the convention of
``cv2.warpAffine`` and of ``crop_batch``, so ``box_matrix((0, 0, W, H), 0, size)`` samples a square
image exactly like ``cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)``.

Typical use::

    m = box_matrix(face.box, margin=0.1)               # or landmark_matrix(face.landmarks)
    batch = crop_batch([image], np.stack([m, hflip_matrix(m, 113)]), image_index=[0, 0])
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from sfpn_edge.kernels.warp import warp_batch
from sfpn_edge.threads import default_threads

SIZE = 113
"""Side of SqueezeFacePoseNet's input crop."""
MEAN_RGB = (131.0912, 103.8827, 91.4953)
"""Per-channel mean (R, G, B) the model was trained with; the crop is not scaled."""
# Five landmarks (eye_left, eye_right, nose, mouth_left, mouth_right; left = smaller x) of an
# upright face in the model's own framing, in continuous coordinates of a 113 x 113 crop.
# Derived from the authors' three example crops (image_example1..3.png, the framing the net was
# trained on: VGGFace2 box + 30 %, square): MTCNN (sfpn_edge.detect) landmarks on each crop,
# upscaled 2x, 3x and 4x; the 9 shapes plus their mirror images (x -> 113 - x, left/right swapped)
# were Procrustes-averaged (similarity_matrix, 20 iterations), the mean shape turned upright
# (eye line horizontal), centred on x = 56.5 (the examples' centroid: x 56.9, y 67.1) and given
# the examples' mean centroid height and RMS size (23.7 px). Three faces are few: the framing
# (size, position) is what matters for the model and is the examples' own; the shape is their
# symmetric Procrustes mean.
TEMPLATE_113 = np.array(
    [
        [38.26, 46.07],
        [74.74, 46.07],
        [56.50, 70.38],
        [40.69, 86.41],
        [72.31, 86.41],
    ],
    dtype=np.float64,
)


def _points(points, name: str) -> np.ndarray:
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric [K, 2]: {exc}") from None
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1:
        raise ValueError(f"{name} must have shape [K, 2] with K >= 1, got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or inf")
    return p


def points_box(points) -> Tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) around points [K, 2] (e.g. CFP fiducials), same coordinates."""
    p = _points(points, "points")
    x0, y0 = p.min(axis=0)
    x1, y1 = p.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _continuous_to_index(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Matrix on pixel indices equivalent to ``u -> a @ u + t`` on continuous coordinates."""
    return np.hstack([a, (a @ np.full(2, 0.5) + t - 0.5)[:, None]])


def box_matrix(box: Sequence[float], margin: float, size: int = SIZE, shift: float = 0.0) -> np.ndarray:
    """Image -> crop matrix (2, 3) float64: the square of side max(w, h) * (1 + margin) centred on
    ``box`` = (x0, y0, x1, y1), moved down by ``shift`` times its side, becomes the ``size`` x ``size`` crop."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
        margin, shift = float(margin), float(shift)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), margin and shift numbers, got {box!r}, "
                         f"{margin!r}, {shift!r}") from None
    if not np.isfinite([x0, y0, x1, y1, margin, shift]).all():
        raise ValueError(f"box, margin and shift must be finite, got {box!r}, {margin!r}, {shift!r}")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box!r}")
    if margin <= -1.0:
        raise ValueError(f"margin must be > -1, got {margin}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    s = size / side
    left, top = (x0 + x1 - side) / 2.0, (y0 + y1 - side) / 2.0 + shift * side
    return _continuous_to_index(np.eye(2) * s, np.array([-s * left, -s * top]))


def full_image_matrix(width: int, height: int, size: int = SIZE) -> np.ndarray:
    """Image -> crop matrix (2, 3) that resizes the whole image to size x size (as cv2.resize, bilinear)."""
    sx, sy = size / width, size / height
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def similarity_matrix(src, dst) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    points ``src`` [K, 2] onto ``dst`` [K, 2], as a float64 (2, 3) matrix (Umeyama 1991)."""
    s = _points(src, "src")
    d = _points(dst, "dst")
    if s.shape != d.shape:
        raise ValueError(f"src and dst must have the same shape, got {s.shape} and {d.shape}")
    if s.shape[0] < 2:
        raise ValueError("a similarity needs at least 2 point pairs")
    mu_s, mu_d = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc ** 2).sum() / len(s)
    if not var_s > 0.0:
        raise ValueError("src points all coincide: no similarity is defined")
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    e = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1] = -1.0  # the best orthogonal map would reflect: take the best rotation instead
    r = (u * e) @ vt
    scale = (sig * e).sum() / var_s
    a = scale * r
    return np.hstack([a, (mu_d - a @ mu_s)[:, None]])


def landmark_matrix(points, size: int = SIZE, template: Optional[np.ndarray] = None) -> np.ndarray:
    """Image -> crop matrix (2, 3) aligning 5 landmarks [5, 2] (``LANDMARKS`` order of
    ``sfpn_edge.detect``) to ``template`` (default ``TEMPLATE_113``, given for a 113 crop and
    scaled to ``size``)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    dst = TEMPLATE_113 * (size / SIZE) if template is None else _points(template, "template")
    m = similarity_matrix(points, dst)
    return _continuous_to_index(m[:, :2], m[:, 2])


def hflip_matrix(m, size: int) -> np.ndarray:
    """``m`` followed by a horizontal flip of the ``size``-wide crop (for flip test-time
    augmentation): cropping with the result equals cropping with ``m`` and reversing x."""
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3), got {a.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    out = a.copy()
    out[0] = -a[0]
    out[0, 2] += size - 1
    return out


def crop_batch(
    images: Union[np.ndarray, Sequence[np.ndarray]],
    matrices,
    *,
    image_index=None,
    size: int = SIZE,
    mean: Sequence[float] = MEAN_RGB,
    scale: float = 1.0,
    channel_order: str = "BGR",
    threads: Optional[int] = None,
) -> np.ndarray:
    """Model-ready batch float32 [N, 3, size, size] (RGB planes, ``(pixel - mean) * scale``).

    ``images``: one uint8 image (HxWx3 in ``channel_order``, or HxW grey) or a list; any strides.
    ``matrices``: [N, 2, 3] (or one (2, 3)) image -> crop maps; ``image_index``: [N] source image
    of each face (default: image 0 for all, or face i from image i when the counts match).
    Bilinear sampling with replicated borders, in one pass by ``sfpn_edge.kernels.warp``
    (``threads`` workers, default ``sfpn_edge.threads.default_threads()``: a 64-face batch is only
    ~4 ms of work and beyond ~4 threads the output's memory traffic dominates). Raises ValueError
    on bad input.
    """
    m = np.asarray(matrices)
    if m.ndim == 2:
        m = m[None]
    return warp_batch(images, m, image_index, size=size, mean=mean, scale=scale,
                      channel_order=channel_order,
                      threads=default_threads() if threads is None else threads)


@dataclass(frozen=True)
class CropSpec:
    """How a model wants its faces framed: input ``size``, ``mean`` (R, G, B), the box ``margin`` and
    the centre ``shift`` (down, in crop sides).

    The one crop path: a box (detector face, dataset fiducials' bounds, or the whole image) ->
    :func:`box_matrix` -> :func:`crop_batch`. ``ModelDir.crop_spec(detector)`` gives the framing
    measured for that detector.
    """

    size: int = SIZE
    mean: Tuple[float, float, float] = MEAN_RGB
    margin: float = 0.0
    shift: float = 0.0

    def with_margin(self, margin: float) -> "CropSpec":
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin <= 2.0:
            raise ValueError(f"margin must be in [0, 2], got {margin!r}")
        return replace(self, margin=float(margin))

    def with_shift(self, shift: float) -> "CropSpec":
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not -0.5 <= shift <= 0.5:
            raise ValueError(f"shift must be in [-0.5, 0.5], got {shift!r}")
        return replace(self, shift=float(shift))

    def matrix(self, box: Sequence[float]) -> np.ndarray:
        """The image -> crop map for ``box`` (square of side max(w, h) * (1 + margin), centred, shifted)."""
        return box_matrix(box, self.margin, self.size, self.shift)

    def crop(self, images: Sequence[np.ndarray], matrices: Sequence[np.ndarray], *, image_index=None,
             flip: bool = False, threads: Optional[int] = None) -> np.ndarray:
        """Crops float32 [N, 3, size, size] (RGB minus mean) of BGR uint8 ``images`` through
        ``matrices``; with ``flip`` the N mirrored crops follow the N originals ([2N, ...])."""
        m = np.stack([np.asarray(x, np.float64) for x in matrices])
        index = None if image_index is None else np.asarray(image_index, np.int64)
        if flip:
            if index is None:  # crop_batch's default: face i from image i, else all from image 0
                index = np.arange(len(m)) if len(images) == len(m) else np.zeros(len(m), np.int64)
            m = np.concatenate([m, np.stack([hflip_matrix(x, self.size) for x in m])])
            index = np.concatenate([index, index])
        return crop_batch(list(images), m, image_index=index, size=self.size, mean=self.mean,
                          channel_order="BGR", threads=threads)

    def crop_boxes(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]], **kw) -> np.ndarray:
        """:meth:`crop` of ``boxes[i]`` in ``images[i]``, each distinct image passed to the kernel once."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images for {len(boxes)} boxes")
        slots: dict = {}
        distinct = []
        for image in images:
            if id(image) not in slots:
                slots[id(image)] = len(distinct)
                distinct.append(image)
        index = np.array([slots[id(im)] for im in images], np.int64)
        return self.crop(distinct, [self.matrix(b) for b in boxes], image_index=index, **kw)


def whole_image_box(image: np.ndarray) -> Tuple[float, float, float, float]:
    """The box of the whole image (the crop of last resort when no face is found)."""
    return (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
