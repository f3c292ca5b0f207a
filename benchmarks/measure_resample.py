"""CFP accuracy of crop resampling variants on the same faces (same boxes, same framing).

    python benchmarks/measure_resample.py --cfp ../shared/data/cfp --crop detect --detector blazeface \
        --cache /tmp/boxes-blazeface.npz --variants bilinear cubic-aa linear-aa \
        [--backend native --precision int8] [--framing 0.275 -0.045]

The image -> crop matrices come from the evaluation's own cropper (``runner._Cropper``: detector,
its fallback chain, the 25 % padded retry, the whole image last) and are cached in ``--cache``
(outside the repo), so every variant crops exactly the same squares; only the resampling changes:

- ``bilinear``: the warp kernel (one bilinear pass, no low-pass filter: today's crop);
- ``area``: ``cv2.resize(INTER_AREA)`` of the needed source region to ~1 source pixel per crop
  pixel (its grid on the crop's where the crop's pixel edges fall on source pixel edges), then the
  warp kernel with the matrix adjusted to the shrunk region;
- ``gauss``: Gaussian blur, sigma = 0.5 sqrt(s^2 - 1) for s source pixels per crop pixel, then the kernel;
- ``linear`` / ``cubic``: separable resampling in NumPy with the triangle / Keys (a = -0.5) kernel,
  ``-aa``: the kernel widened by s when shrinking (MATLAB ``imresize``'s antialiasing, the
  resize the network was trained with); ``linear`` equals ``bilinear`` (a check of the mapping).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from sfpn_edge import align
from sfpn_edge.detect import registry as detectors
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.evaluate import metrics, runner
from sfpn_edge.evaluate.protocols import load_cfp, merge_samples
from sfpn_edge.io import read_image
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.kernels.warp import warp_batch
from sfpn_edge.runtime import Runtime
from sfpn_edge.score import cosine_pairs

CHUNK = 32
VARIANTS = ("bilinear", "area", "gauss", "linear", "linear-aa", "cubic", "cubic-aa")


def source_scale(m: np.ndarray) -> Tuple[float, float]:
    """Source pixels per crop pixel along the image's x and y axes of an image -> crop matrix
    (2, 3) (inf along an axis the map collapses)."""
    a = np.asarray(m, np.float64)[:, :2]
    norms = np.hypot(a[0], a[1])
    return tuple(float(1.0 / n) if n > 0.0 else np.inf for n in norms)


# Crop pixels of context kept around a shrunk region (bilinear reads 1; area edges blur into 1 more).
_REGION_PAD = 2


def _source_region(m: np.ndarray, size: int, width: int, height: int) -> Tuple[int, int, int, int]:
    """Pixel bounds (x0, y0, x1, y1), clipped to the image, of the source area a ``size`` crop
    through ``m`` covers, with ``_REGION_PAD`` crop pixels around it. For a crop whose pixel edges
    fall on source pixel edges the region's edges do too, so area-averaging it lands on the crop's grid."""
    inv = cv2.invertAffineTransform(m)
    lo, hi = -0.5 - _REGION_PAD, size - 0.5 + _REGION_PAD
    corners = np.array([[lo, lo], [hi, lo], [lo, hi], [hi, hi]])
    src = corners @ inv[:, :2].T + inv[:, 2] + 0.5  # continuous source coordinates
    eps = 1e-6  # float noise must not add a pixel column
    x0, y0 = np.floor(src.min(axis=0) + eps).astype(int)
    x1, y1 = np.ceil(src.max(axis=0) - eps).astype(int)
    x0, x1 = min(max(x0, 0), width - 1), min(max(x1, 1), width)
    y0, y1 = min(max(y0, 0), height - 1), min(max(y1, 1), height)
    return int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))


def _shrink(image: np.ndarray, m: np.ndarray, size: int, cache: Dict[tuple, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The region of ``image`` the crop needs, area-averaged (``cv2.INTER_AREA``) to about one pixel
    per crop pixel along each axis that shrinks, and the matrix that crops it as ``m`` crops
    ``image``; ``cache`` shares one shrunk region between crops of the same region and scale
    (e.g. a crop and its mirror)."""
    sx, sy = source_scale(m)
    x0, y0, x1, y1 = _source_region(m, size, image.shape[1], image.shape[0])
    w = max(1, round((x1 - x0) / sx)) if sx > 1.0 else x1 - x0
    h = max(1, round((y1 - y0) / sy)) if sy > 1.0 else y1 - y0
    key = (id(image), x0, y0, x1, y1, w, h)
    if key not in cache:
        cache[key] = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (w, h), interpolation=cv2.INTER_AREA)
    fx, fy = w / (x1 - x0), h / (y1 - y0)
    back = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5 + x0], [0.0, 1.0 / fy, 0.5 / fy - 0.5 + y0], [0.0, 0.0, 1.0]])
    return cache[key], m @ back


def _antialiased(images: List[np.ndarray], m: np.ndarray, index: np.ndarray,
                 size: int) -> Tuple[List[np.ndarray], np.ndarray, np.ndarray]:
    """Images, matrices and index for the warp kernel in which every face that shrinks its source
    (more than one source pixel per crop pixel) reads an area-averaged copy of its region instead;
    faces that do not shrink, and inputs the kernel will refuse, are passed through unchanged."""
    out_images, out_m, out_index = list(images), m.astype(np.float64, copy=True), index.copy()
    cache: Dict[tuple, np.ndarray] = {}
    for i, k in enumerate(index):
        image = images[k]
        if not (image.dtype == np.uint8 and image.ndim in (2, 3) and min(image.shape[:2]) > 0):
            continue
        if not np.isfinite(m[i]).all() or abs(np.linalg.det(m[i, :, :2])) < 1e-12:
            continue
        if not 1.0 < max(source_scale(m[i])) < np.inf:
            continue
        small, out_m[i] = _shrink(image, m[i], size, cache)
        out_index[i] = len(out_images)
        out_images.append(small)
    return out_images, out_m, out_index


def _kernel(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def triangle(t):
        return np.clip(1.0 - np.abs(t), 0.0, None)

    def keys(t):  # a = -0.5, MATLAB's and PIL's cubic
        t = np.abs(t)
        return np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1,
                        np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0))

    return {"linear": triangle, "cubic": keys}[name]


def _weights(scale: float, offset: float, n_out: int, n_src: int, kernel, support: float,
             aa: bool) -> Tuple[np.ndarray, int]:
    """Resampling matrix [n_out, taps span] and its first source index for crop index x -> source
    index (x - offset) / scale, replicated borders (clamped taps), rows summing to 1."""
    s = 1.0 / abs(scale)
    width = s if aa and s > 1.0 else 1.0
    u = (np.arange(n_out) - offset) / scale
    reach = int(np.ceil(support * width)) + 1
    taps = np.arange(-reach, reach + 1)
    j = np.floor(u)[:, None] + taps[None, :]
    w = kernel((j - u[:, None]) / width)
    w /= w.sum(axis=1, keepdims=True)
    j = np.clip(j, 0, n_src - 1).astype(np.int64)
    first, span = int(j.min()), int(j.max() - j.min() + 1)
    flat = np.repeat(np.arange(n_out), len(taps)) * span + (j - first).ravel()
    return np.bincount(flat, w.ravel(), n_out * span).reshape(n_out, span), first


def separable_crop(image: np.ndarray, m: np.ndarray, size: int, mean, kernel: str, aa: bool) -> np.ndarray:
    """One crop [3, size, size] (RGB minus mean) of an axis-aligned matrix by separable resampling."""
    if abs(m[0, 1]) > 1e-12 or abs(m[1, 0]) > 1e-12:
        raise ValueError("separable variants need an axis-aligned matrix")
    k, support = _kernel(kernel), {"linear": 1.0, "cubic": 2.0}[kernel]
    h, w = image.shape[:2]
    wy, y0 = _weights(m[1, 1], m[1, 2], size, h, k, support, aa)
    wx, x0 = _weights(m[0, 0], m[0, 2], size, w, k, support, aa)
    roi = image[y0:y0 + wy.shape[1], x0:x0 + wx.shape[1], ::-1].astype(np.float32)
    planes = np.ascontiguousarray(roi.transpose(2, 0, 1))                   # [3, h, w]
    out = wy.astype(np.float32) @ planes @ wx.T.astype(np.float32)          # [3, size, size]
    return out - np.asarray(mean, np.float32)[:, None, None]


def gauss_crops(spec: align.CropSpec, images, matrices) -> np.ndarray:
    out = []
    for image, m in zip(images, matrices):
        sx, sy = (0.5 * np.sqrt(max(s * s - 1.0, 0.0)) for s in source_scale(m))
        if sx > 0 or sy > 0:
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=max(sx, 1e-3), sigmaY=max(sy, 1e-3),
                                     borderType=cv2.BORDER_REPLICATE)
        out.append(align.crop_batch([image], m[None], size=spec.size, mean=spec.mean, threads=1))
    return np.concatenate(out)


def variant_crops(variant: str, spec: align.CropSpec, images, matrices) -> np.ndarray:
    """Crops [N, 3, size, size] of ``images[i]`` through ``matrices[i]`` resampled by ``variant``."""
    m = np.stack(matrices)
    index = np.arange(len(images))
    if variant == "bilinear":
        return align.crop_batch(images, m, image_index=index, size=spec.size, mean=spec.mean, threads=1)
    if variant == "area":
        images, m, index = _antialiased(list(images), m, index, spec.size)
        return warp_batch(images, m, index, size=spec.size, mean=spec.mean, channel_order="BGR", threads=1)
    if variant == "gauss":
        return gauss_crops(spec, images, matrices)
    kernel, _, aa = variant.partition("-")
    return np.stack([separable_crop(im, x, spec.size, spec.mean, kernel, aa == "aa") for im, x in zip(images, m)])


def cached_matrices(samples, crop: str, spec: align.CropSpec, detector, cache: Optional[Path]) -> Dict[str, np.ndarray]:
    """Image -> crop matrices [N, 2, 3] and face sources of ``samples`` (read from / written to ``cache``)."""
    keys = np.array([str(s.path) for s in samples])
    framing = np.array([spec.margin, spec.shift])
    if cache and cache.is_file():
        got = dict(np.load(cache))
        if np.array_equal(got["paths"], keys) and np.array_equal(got["framing"], framing):
            return got
    cropper = runner._Cropper(crop, spec, detector)
    matrices, sources = np.zeros((len(samples), 2, 3)), []
    for i, sample in enumerate(samples):
        _, matrices[i], source = cropper(sample)
        sources.append("/".join(source) if source and source[1] else (source[0] if source else crop))
    found = {"paths": keys, "framing": framing, "matrices": matrices, "sources": np.array(sources)}
    if cache:
        np.savez(cache, **found)
    return found


def reframed(matrices: np.ndarray, spec: align.CropSpec, margin: float, shift: float) -> np.ndarray:
    """``matrices`` (``spec``'s framing of square boxes) re-framed with another margin and shift:
    the same boxes (max(w, h) and centre are all ``box_matrix`` uses), cropped differently."""
    out = np.empty_like(matrices)
    for i, m in enumerate(matrices):
        s = m[0, 0]
        side = spec.size / s
        left, top = (0.5 * s - 0.5 - m[0, 2]) / s, (0.5 * s - 0.5 - m[1, 2]) / s
        cx, cy = left + side / 2, top + side / 2 - spec.shift * side
        half = side / (1 + spec.margin) / 2
        out[i] = align.box_matrix((cx - half, cy - half, cx + half, cy + half), margin, spec.size, shift)
    return out


def embed_variant(embedder, variant: str, spec, samples, matrices: np.ndarray) -> np.ndarray:
    out = np.zeros((len(samples), embedder.descriptor_dim), np.float32)
    for start in range(0, len(samples), CHUNK):
        part = range(start, min(start + CHUNK, len(samples)))
        images = [read_image(samples[i].path) for i in part]
        crops = variant_crops(variant, spec, images, [matrices[i] for i in part])
        out[start:start + len(part)] = l2_normalize(np.ascontiguousarray(embedder.embed(crops)))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfp", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--crop", default="detect", choices=("detect", "fiducials"))
    parser.add_argument("--detector", default=detectors.DEFAULT, choices=detectors.names())
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["bilinear", "cubic-aa", "linear-aa"])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="matrices .npz (outside the repo)")
    parser.add_argument("--framing", type=float, nargs=2, metavar=("MARGIN", "SHIFT"), default=None,
                        help="re-frame the cached boxes (a robustness check, not a framing search)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    protocols = [load_cfp(args.cfp, "FF"), load_cfp(args.cfp, "FP")]
    samples, pairs = merge_samples(protocols)
    embedder = FaceEmbedder(args.model, runtime=Runtime.resolve(args.backend, precision=args.precision,
                                                                threads=args.threads))
    detector = None
    if args.crop == "detect":
        model = embedder.dir
        det_rt = Runtime.resolve("onnxruntime", precision="fp32", threads=args.threads)
        detector = detectors.make_detector(args.detector, None, det_rt,
                                           framing=lambda name: (model.margin(name), model.shift(name)))
    spec = runner.crop_spec(args.crop, embedder, None, detector)
    found = cached_matrices(samples, args.crop, spec, detector, args.cache)
    if args.framing:
        found["matrices"] = reframed(found["matrices"], spec, *args.framing)
        spec = spec.with_margin(args.framing[0]).with_shift(args.framing[1])
    scales = np.array([max(source_scale(m)) for m in found["matrices"]])
    report: List[dict] = []
    for variant in args.variants:
        start = time.perf_counter()
        vectors = embed_variant(embedder, variant, spec, samples, found["matrices"])
        row = {"variant": variant, "backend": args.backend, "precision": args.precision,
               "seconds": round(time.perf_counter() - start, 1)}
        for proto, p in zip(protocols, pairs):
            scores = cosine_pairs(vectors[p[:, 0]], vectors[p[:, 1]]).astype(np.float64)
            res = metrics.verification_metrics(scores, proto.labels, proto.folds)
            acc = res["accuracy"]
            row[proto.name] = f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}"
            row[f"{proto.name} EER"] = round(100 * res["eer"], 2)
            row[f"{proto.name} TAR@1e-3"] = round(100 * res["tar_at_far"]["0.001"]["tar"], 1)
            row[f"{proto.name} folds"] = [round(100 * a, 2) for a in acc["per_fold"]]
        report.append(row)
        print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
    sources, counts = np.unique(found["sources"], return_counts=True)
    result = {"crop": args.crop, "detector": args.detector if args.crop == "detect" else None,
              "margin": spec.margin, "shift": spec.shift,
              "source_px_per_crop_px": {q: round(float(np.quantile(scales, float(q))), 2)
                                        for q in ("0.05", "0.25", "0.5", "0.75", "0.95")},
              "faces": dict(zip(sources.tolist(), counts.tolist())), "variants": report}
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
