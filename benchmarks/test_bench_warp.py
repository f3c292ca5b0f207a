"""Crop/alignment kernel vs cv2.warpAffine + NumPy, side by side in one run.

Workload: 64 faces (80-220 px, rotated up to +-25 deg) from 4 distinct 640x480 BGR photos-sized
images -> float32 [64, 3, 113, 113], RGB, mean subtracted. The baseline is the fastest NumPy
variant we found (stack the uint8 crops, then one subtract per channel into a preallocated NCHW
array; the textbook ``astype -> subtract -> transpose -> ascontiguousarray`` is ~4x slower still).

    /work/venv/bin/python -m pytest benchmarks/test_bench_warp.py --benchmark-only \\
        --benchmark-group-by=group --benchmark-columns=min,median,iqr,rounds
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sfpn_edge.align import MEAN_RGB, crop_batch, similarity_matrix

N_FACES, N_IMAGES, SIZE = 64, 4, 113


@pytest.fixture(scope="module")
def workload():
    rng = np.random.default_rng(11)
    images = [cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 2.0)
              for _ in range(N_IMAGES)]
    matrices = []
    for _ in range(N_FACES):
        side = rng.uniform(80, 220)
        centre = rng.uniform([side / 2, side / 2], [640 - side / 2, 480 - side / 2])
        angle = np.deg2rad(rng.uniform(-25, 25))
        corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5]]) * side
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrices.append(similarity_matrix(corners @ rot.T + centre, [[0, 0], [SIZE, 0], [SIZE, SIZE]]))
    index = np.arange(N_FACES) % N_IMAGES
    return images, np.stack(matrices), index


def opencv_numpy(images, matrices, index):
    """Per-face cv2.warpAffine, then NumPy: stack, BGR -> RGB, float, mean, NCHW."""
    crops = np.stack([cv2.warpAffine(images[i], m, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE) for m, i in zip(matrices, index)])
    out = np.empty((len(crops), 3, SIZE, SIZE), np.float32)
    for c in range(3):
        np.subtract(crops[..., 2 - c], np.float32(MEAN_RGB[c]), out=out[:, c], dtype=np.float32)
    return out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.benchmark(group="warp-64x113", warmup=True, warmup_iterations=5, min_rounds=40)
def test_opencv_numpy(benchmark, workload, threads):
    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        benchmark(opencv_numpy, *workload)
    finally:
        cv2.setNumThreads(previous)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.benchmark(group="warp-64x113", warmup=True, warmup_iterations=5, min_rounds=40)
def test_crop_batch(benchmark, workload, threads):
    images, matrices, index = workload
    out = benchmark(crop_batch, images, matrices, image_index=index, threads=threads)
    assert np.abs(out - opencv_numpy(images, matrices, index)).max() <= 1.0
