"""Scoring kernels vs NumPy/BLAS, side by side in one run.

    /work/venv/bin/python -m pytest benchmarks/test_bench_scoring.py --benchmark-only \\
        --benchmark-group-by=group --benchmark-columns=min,median,iqr,rounds

Groups:
- ``topk-100k``: 1 probe against 100,000 x 1000-d GAP-like descriptors, k = 10. Baseline: NumPy
  fp32 ``gallery @ q`` + ``argpartition`` + sort of the k; then ``sfpn_edge.score.Gallery`` in
  each storage, on 1 thread and on the default thread count. ``extra_info["bytes_per_100k"]``
  is the gallery's memory per 100k identities.
- ``matrix-*``: ``score_matrix`` rule: fused kernel vs BLAS on normalised copies, per shape.
- ``topk-probes-*``: fp32 top-k rule: streaming kernel vs chunked BLAS, per probe count.
"""
from __future__ import annotations

import numpy as np
import pytest

from sfpn_edge.threads import default_threads
from sfpn_edge import score
from sfpn_edge.kernels import scoring

N, D, K = 100_000, 1000, 10


def gap_like(rng, n, d=D):
    common = rng.gamma(2.0, 1.0, d).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for start in range(0, n, 10_000):  # bounded temporaries
        part = common + rng.normal(0, 0.6, (min(10_000, n - start), d)).astype(np.float32)
        x[start:start + len(part)] = np.maximum(part, 0)
    return x


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return scoring.l2_normalize(gap_like(rng, N)), scoring.l2_normalize(gap_like(rng, 1))


@pytest.fixture(scope="module")
def galleries(data):
    return {s: score.Gallery(data[0], s) for s in score.STORAGES}


def numpy_topk(gallery, q, k):
    s = gallery @ q
    part = np.argpartition(-s, k)[:k]
    order = part[np.argsort(-s[part], kind="stable")]
    return order, s[order]


@pytest.mark.benchmark(group="topk-100k")
def test_numpy_fp32(benchmark, data):
    gallery, q = data
    benchmark.extra_info["bytes_per_100k"] = gallery.nbytes * 100_000 // N
    idx, _ = benchmark(numpy_topk, gallery, q[0], K)
    assert idx[0] == score.Gallery(gallery).topk(q, 1)[0][0, 0]


@pytest.mark.benchmark(group="topk-100k")
@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "default_threads"])
@pytest.mark.parametrize("storage", score.STORAGES)
def test_gallery(benchmark, data, galleries, storage, threads):
    gallery = galleries[storage]
    gallery.threads = threads
    benchmark.extra_info.update(bytes_per_100k=gallery.nbytes * 100_000 // N,
                                threads=threads or default_threads(), **scoring.variants())
    idx, _ = benchmark(gallery.topk, data[1], K)
    ref = numpy_topk(data[0], data[1][0], K)[0]
    assert len(np.intersect1d(idx[0], ref)) >= K - 2  # quantized storages may swap near-ties


@pytest.mark.parametrize("shape", [(1, 10_000), (8, 10_000), (16, 10_000), (32, 10_000), (1000, 1000)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("path", ["kernel", "blas"])
def test_matrix_rule(benchmark, shape, path):
    benchmark.group = f"matrix-{shape[0]}x{shape[1]}"
    rng = np.random.default_rng(1)
    a, b = gap_like(rng, shape[0]), gap_like(rng, shape[1])
    if path == "kernel":
        run = lambda: scoring.dot_scores(scoring.l2_normalize(a), b, normalize_b=True)  # noqa: E731
    else:
        run = lambda: scoring.l2_normalize(a) @ scoring.l2_normalize(b).T  # noqa: E731
    benchmark(run)


@pytest.mark.parametrize("probes", [1, 4, 16, 32, 64])
@pytest.mark.parametrize("path", ["kernel", "blas"])
def test_topk_probes_rule(benchmark, monkeypatch, data, probes, path):
    benchmark.group = f"topk-probes-{probes}"
    monkeypatch.setattr(score, "TOPK_BLAS_MIN_PROBES", 1 if path == "blas" else 10**9)
    gallery = score.Gallery(data[0][:20_000], threads=1)
    q = gap_like(np.random.default_rng(2), probes)
    benchmark(gallery.topk, q, K)
