"""MTCNN detection time per 640x480 image, ONNX Runtime vs OpenVINO (fp32, one thread).

    pytest benchmarks/test_bench_detect.py --benchmark-columns=median,iqr,min,rounds

Two scenes from CFP images: "portrait" (one face filling the frame) and "group" (six faces of
~200 px on a 3x2 grid, more candidate windows for R-/O-Net); minimum face size 20 px (the
MTCNN default, 10-level pyramid) and 40 px (the pyramid starts at half the resolution).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest


SIZE = (640, 480)


@pytest.fixture(scope="module")
def scenes(cfp_root):  # noqa: F811
    from sfpn_edge.io import read_image

    images = [read_image(cfp_root / "Data" / "Images" / f"{i:03d}" / "frontal" / "01.jpg") for i in range(1, 7)]
    tile_w, tile_h = SIZE[0] // 3, SIZE[1] // 2
    tiles = [cv2.resize(im, (tile_w, tile_h), interpolation=cv2.INTER_AREA) for im in images]
    group = np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])
    group = cv2.copyMakeBorder(group, 0, SIZE[1] - group.shape[0], 0, SIZE[0] - group.shape[1], cv2.BORDER_REPLICATE)
    portrait = cv2.resize(images[0], SIZE, interpolation=cv2.INTER_AREA)
    return {"portrait": (portrait, 1), "group": (group, 6)}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("min_face", [20, 40])
@pytest.mark.parametrize("scene", ["portrait", "group"])
def test_detect_640x480(benchmark, memory, mtcnn_dir, scenes, backend, min_face, scene):  # noqa: F811
    from sfpn_edge.detect.mtcnn import MTCNN

    image, n_faces = scenes[scene]
    detector = MTCNN(mtcnn_dir, backend, threads=1, min_face_size=min_face)
    faces = memory.trace(detector.detect, image)
    assert len(faces) == n_faces
    benchmark.group = f"mtcnn detect 640x480 {scene}"
    benchmark.extra_info.update(backend=backend, threads=1, min_face=min_face, faces=len(faces))
    benchmark.pedantic(detector.detect, args=(image,), rounds=15, warmup_rounds=2)
