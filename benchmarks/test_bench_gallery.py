"""The SQLite gallery's identify through its matrix file vs the in-memory index it replaced.

    python -m pytest benchmarks/test_bench_gallery.py --benchmark-only --benchmark-group-by=group

Group ``gallery-20k``: 20,000 identities × 128-d synthetic non-negative descriptors, int8, top-5:
``open_identify`` opens the file read-only and answers once (the matrix is mapped and checked;
the memory index reads every row), ``identify`` is one answer on an open gallery. The big rows
(100k × 1000, 1M × 128) are ``benchmarks/measure_gallery_scale.py``'s (README, Large galleries).
"""
from __future__ import annotations

import numpy as np
import pytest

from sfpn_edge.gallery import FaceGallery

N, D, SHA = 20_000, 128, "ab" * 32


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("gallery") / "g.db"
    rows = np.abs(np.random.default_rng(0).standard_normal((N, D))).astype(np.float32)
    with FaceGallery(path, model_sha256=SHA, dim=D, storage="int8") as g:
        g.enroll_many([(f"p{i}", rows[i]) for i in range(N)], calibrate=False)
    return path


def _open(db, index: str) -> FaceGallery:
    g = FaceGallery(db, model_sha256=SHA, dim=D, storage="int8", readonly=True)
    if index == "memory":
        g._matrix_path = lambda: None
    return g


@pytest.mark.parametrize("index", ["matrix", "memory"])
def test_open_identify(benchmark, db, index):
    benchmark.group = "gallery-20k"
    probe = np.ones(D, np.float32)

    def run():
        with _open(db, index) as g:
            return g.identify(probe, k=5)
    assert len(benchmark(run)) == 5


@pytest.mark.parametrize("index", ["matrix", "memory"])
def test_identify(benchmark, db, index):
    benchmark.group = "gallery-20k"
    probe = np.ones(D, np.float32)
    with _open(db, index) as g:
        g.identify(probe, k=5)
        assert len(benchmark(g.identify, probe, 5)) == 5
