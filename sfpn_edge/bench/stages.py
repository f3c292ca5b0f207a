"""Pipeline stages timed next to their reference implementation (run inside a measure child).

Each stage returns rows ``{"stage", "impl", "workload", "unit", "p50_ms", "p95_ms", ...}``; the
first row is ours, the following ones the reference it is compared with (OpenCV, NumPy).
Times are per ``unit`` (per face, per probe, per image) at one thread.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import numpy as np

from sfpn_edge.bench.timing import percentiles_ms, time_calls
from sfpn_edge.errors import SfpnError

STAGES = ("align", "score", "detect", "verify", "watch")
FACE_SIZE = 113
N_FACES = 32
GALLERY, PROBES, TOP_K = 10_000, 64, 5
N_IMAGES = 8
WATCH_FRAMES, WATCH_FPS = 30, 10.0


def _timed(fn: Callable[[], object], spec: dict, per: int) -> dict:
    settings = spec["settings"]
    fn()
    for _ in range(max(1, settings["warmup"] // 3)):
        fn()
    stats = percentiles_ms(time_calls(fn, settings["latency_seconds"], max(5, settings["latency_iters"] // 4)))
    return {"p50_ms": stats["p50_ms"] / per, "p95_ms": stats["p95_ms"] / per, "calls": stats["calls"]}


def face_images(spec: dict, count: int = N_IMAGES) -> List[np.ndarray]:
    """Real face photos for detector/pipeline timing: CFP frontal images, else the model's examples."""
    from sfpn_edge.io import read_image

    paths: List[Path] = []
    if spec.get("cfp_root"):
        paths = sorted(Path(spec["cfp_root"], "Data", "Images").glob("00[0-9]/frontal/01.jpg"))[:count]
    if not paths and spec.get("examples_dir"):
        paths = sorted(Path(spec["examples_dir"]).glob("image_example*.png"))[:count]
    if not paths:
        raise SfpnError("no face photos to time it on (give --cfp-root or set SFPN_SHARED)")
    return [read_image(p) for p in paths]


def align(spec: dict) -> tuple:
    """``align.crop_batch`` (fused warp + RGB + mean, NCHW) vs per-face OpenCV warpAffine + NumPy."""
    import cv2

    from sfpn_edge.align import MEAN_RGB, box_matrix, crop_batch

    cv2.setNumThreads(1)
    rng = np.random.default_rng(7)
    image = np.ascontiguousarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    sides = rng.uniform(80, 220, N_FACES)
    corners = rng.uniform(0, 1, (N_FACES, 2)) * (np.array([640, 480]) - sides[:, None])
    matrices = np.stack([box_matrix((x, y, x + s, y + s), 0.1, size=FACE_SIZE)
                         for (x, y), s in zip(corners, sides)])
    mean = np.asarray(MEAN_RGB, np.float32)

    def ours():
        return crop_batch([image], matrices, image_index=np.zeros(N_FACES, np.int64), size=FACE_SIZE,
                          mean=MEAN_RGB, threads=1)

    def opencv():
        out = np.empty((N_FACES, 3, FACE_SIZE, FACE_SIZE), np.float32)
        for i, m in enumerate(matrices):
            crop = cv2.warpAffine(image, m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            out[i] = (cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) - mean).transpose(2, 0, 1)
        return out

    diff = float(np.abs(ours() - opencv()).max())
    workload = f"{N_FACES} faces from a 640x480 image -> {FACE_SIZE}x{FACE_SIZE} NCHW"
    return [
        {"impl": "crop_batch kernel", **_timed(ours, spec, N_FACES), "max_abs_diff": diff},
        {"impl": "OpenCV warpAffine + NumPy", "reference": True, **_timed(opencv, spec, N_FACES)},
    ], workload, "per face"


def score(spec: dict) -> tuple:
    """``score.score_matrix`` / ``score.topk`` vs NumPy normalise + matmul (+ argpartition)."""
    from sfpn_edge import score as scoring

    rng = np.random.default_rng(11)
    gallery = rng.random((GALLERY, 1000), dtype=np.float32)  # non-negative, like the descriptors
    probes = rng.random((PROBES, 1000), dtype=np.float32)

    def numpy_matrix():
        a = probes / np.linalg.norm(probes, axis=1, keepdims=True)
        b = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        return a @ b.T

    def numpy_topk():
        s = numpy_matrix()
        part = np.argpartition(-s, TOP_K, axis=1)[:, :TOP_K]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        return np.take_along_axis(part, order, 1)

    diff = float(np.abs(scoring.score_matrix(probes, gallery) - numpy_matrix()).max())
    rows = [
        {"impl": "score_matrix kernel", **_timed(lambda: scoring.score_matrix(probes, gallery), spec, PROBES),
         "max_abs_diff": diff},
        {"impl": "NumPy normalise + matmul", "reference": True, **_timed(numpy_matrix, spec, PROBES)},
        {"impl": f"topk kernel (k={TOP_K})", **_timed(lambda: scoring.topk(probes, gallery, TOP_K), spec, PROBES)},
        {"impl": f"NumPy matmul + argpartition (k={TOP_K})", "reference": True, **_timed(numpy_topk, spec, PROBES)},
    ]
    if hasattr(scoring, "Gallery"):
        for storage in ("fp16", "int8"):
            index = scoring.Gallery(gallery, storage=storage)
            rows.append({"impl": f"Gallery {storage} topk (k={TOP_K})",
                         **_timed(lambda: index.topk(probes, TOP_K), spec, PROBES)})
    return rows, f"{PROBES} probes x {GALLERY:,} gallery, 1000-d", "per probe"


BENCH_DETECTORS = ("blazeface", "blazeface-full", "mtcnn")


def _detectors(threads: int = 1):
    """(name, detector or None, reason) for each of ``BENCH_DETECTORS`` alone, no fallback chain
    (None: weights not fetched)."""
    from sfpn_edge.detect.registry import make_detector
    from sfpn_edge.errors import ModelError
    from sfpn_edge.runtime import Runtime

    for name in BENCH_DETECTORS:
        try:
            yield name, make_detector(name, None, Runtime.resolve(threads=threads), fallbacks=()), ""
        except (ModelError, ImportError) as exc:
            yield name, None, str(exc).splitlines()[0]


def detect(spec: dict) -> tuple:
    """Each detector on real face photos, as ``find_face`` runs it (padded retry included)."""
    from sfpn_edge.detect.policy import find_face

    images = face_images(spec)
    shapes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    rows = []
    for name, detector, reason in _detectors():
        if detector is None:
            rows.append({"impl": name, "status": "not available", "reason": reason})
            continue

        def run(detector=detector):
            for im in images:
                find_face(detector, im, fallback="whole-image")

        found = sum(find_face(detector, im, fallback="whole-image").source != "whole-image" for im in images)
        rows.append({"impl": name, **_timed(run, spec, len(images)), "faces_found": f"{found}/{len(images)}"})
    return rows, f"{len(images)} photos ({', '.join(shapes)})", "per image"


def verify(spec: dict) -> tuple:
    """End to end: decode-free verify of photo pairs (detect + crop + embed + score), per detector."""
    from sfpn_edge.pipeline import FaceVerifier

    images = face_images(spec)
    pairs = list(zip(images[0::2], images[1::2]))
    rows = []
    for name, detector, reason in _detectors():
        if detector is None:
            rows.append({"impl": f"FaceVerifier.verify ({name})", "status": "not available", "reason": reason})
            continue
        verifier = FaceVerifier(model_dir=spec["model_dir"], detector=detector, threads=1, threshold=0.5)

        def run(verifier=verifier):
            for a, b in pairs:
                verifier.verify(a, b)

        rows.append({"impl": f"FaceVerifier.verify ({name})", **_timed(run, spec, 2 * len(pairs))})
    return rows, f"{len(pairs)} photo pairs", "per image"


def watch(spec: dict) -> tuple:
    """``FaceStream`` in file mode (detect every 5 frames, track, identify) on a 640x480 clip of the
    face photos sliding across, one enrolled, per detector."""
    import tempfile

    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier
    from sfpn_edge.stream import FaceStream
    from sfpn_edge.video import ArraySource

    images = face_images(spec)
    frames = []
    for k in range(WATCH_FRAMES):
        canvas = np.full((480, 640, 3), 120, np.uint8)
        face = images[k // 10 % len(images)][:400, :400]
        x, y = 40 + 12 * (k % 10), 60
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
        frames.append(canvas)
    rows = []
    for name, detector, reason in _detectors():
        impl = f"FaceStream file mode ({name})"
        if detector is None:
            rows.append({"impl": impl, "status": "not available", "reason": reason})
            continue
        verifier = FaceVerifier(model_dir=spec["model_dir"], detector=detector, threads=1, threshold=0.5)
        with tempfile.TemporaryDirectory() as tmp, FaceGallery(
                Path(tmp) / "g.db", model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as gallery:
            gallery.enroll("enrolled", verifier.embed_images(images[:1])[0])

            def run(verifier=verifier, gallery=gallery):
                for _ in FaceStream(ArraySource(frames, WATCH_FPS), verifier, gallery):
                    pass

            rows.append({"impl": impl, **_timed(run, spec, len(frames))})
    return rows, f"{WATCH_FRAMES} frames 640x480, {len(images)} photos sliding across", "per frame"


def run(name: str, spec: dict) -> dict:
    """Run stage ``name``; returns ``{"rows": [...], "workload", "unit"}``."""
    stages = {"align": align, "score": score, "detect": detect, "verify": verify, "watch": watch}
    if name not in stages:
        raise SfpnError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    rows, workload, unit = stages[name](spec)
    return {"rows": rows, "workload": workload, "unit": unit}
