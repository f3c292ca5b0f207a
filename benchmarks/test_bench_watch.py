"""``sfpn-edge watch`` in file mode: frames/s and CPU per frame at one thread, per detector.

    python -m pytest benchmarks/test_bench_watch.py --benchmark-only \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name

The video is tests/video_scene.py's (real CFP photos: two enrolled people, a stranger, one person
returning; 90 frames), rendered at 320x240 and at 640x480 (a camera's VGA), written as MJPG .avi
and decoded by OpenCV on every round, so decode is included. ``extra_info`` holds frames/s, CPU ms
per frame (process time: all threads) and the stream's own detector / embedding ms.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import video_scene as scene  # noqa: E402

pytestmark = pytest.mark.benchmark(warmup=False, min_rounds=3)


@pytest.fixture(scope="module")
def videos(cfp_root, tmp_path_factory) -> dict:
    frames = scene.render(cfp_root)
    folder = tmp_path_factory.mktemp("bench-watch")
    return {"320x240": scene.write_video(folder / "qvga.avi", frames),
            "640x480": scene.write_video(folder / "vga.avi", [cv2.resize(f, (640, 480)) for f in frames])}


@pytest.fixture(scope="module")
def setups(model_dir, mtcnn_dir, blazeface_dir, cfp_root, tmp_path_factory) -> dict:
    """Per detector: a one-thread FaceVerifier and a gallery of the scene's enrolled people."""
    from sfpn_edge.detect.registry import make_detector
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier
    from sfpn_edge.runtime import Runtime

    rt = Runtime.resolve("onnxruntime", threads=1)
    cv2.setNumThreads(1)
    out = {}
    for name, weights in (("blazeface", blazeface_dir), ("mtcnn", mtcnn_dir)):
        verifier = FaceVerifier(model_dir, runtime=rt, detector=make_detector(name, weights, rt, fallbacks=()))
        path = tmp_path_factory.mktemp("bench-gallery") / f"{name}.db"
        with FaceGallery(path, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as gallery:
            for person in scene.ENROLLED:
                desc, _ = verifier.embed_images([scene.photo(cfp_root, int(person[1:]), n) for n in (2, 3, 4)])
                gallery.enroll(person, desc)
        out[name] = (verifier, path)
    return out


@pytest.mark.parametrize("size", ["320x240", "640x480"])
@pytest.mark.parametrize("detect_every", [5, 1])
@pytest.mark.parametrize("detector", ["blazeface", "mtcnn"])
def test_watch_file_mode(benchmark, setups, videos, detector, detect_every, size):
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.stream import FaceStream

    verifier, db = setups[detector]
    runs = []

    def watch():
        with FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim, readonly=True) as g:
            cpu = time.process_time()
            stream = FaceStream(videos[size], verifier, g, detect_every=detect_every)
            for _ in stream:
                pass
            runs.append((stream.summary(), time.process_time() - cpu))

    benchmark.pedantic(watch, rounds=3, warmup_rounds=1)
    summary, cpu = min(runs, key=lambda r: r[0]["seconds"])
    assert summary["frames"] == scene.FRAMES and summary["identities"] == {"p010": 2, "p011": 1}
    benchmark.extra_info.update({
        "frames_per_s": summary["fps"], "cpu_ms_per_frame": round(cpu * 1e3 / summary["frames"], 2),
        "detect_ms": summary["detect_ms"], "embed_ms": summary["embed_ms"], "detections": summary["detections"],
        "faces_embedded": summary["faces_embedded"]})
