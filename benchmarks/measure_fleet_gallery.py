"""Enrol and identify latency of the PostgreSQL (unix socket, pgserver) and SQLite galleries.

    python benchmarks/measure_fleet_gallery.py --identities 3000 --dim 1000

Synthetic non-negative descriptors, 2 photos per identity, calibration off (``calibrate=False``):
bulk load, then one-identity enrolments, the first identify in a fresh process (rows fetched and
indexed), steady identifies, and the refresh after another device's enrolment.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sfpn_edge.gallery import FaceGallery

SHA = "ab" * 32


def ms(fn, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1000 * (time.perf_counter() - started) / repeat


def measure(db, n: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    rows = rng.random((n, 2, dim)).astype(np.float32)
    probe = rows[n // 2, 0]
    with FaceGallery(db, model_sha256=SHA, dim=dim) as g:
        bulk = ms(lambda: g.enroll_many([(f"p{i}", rows[i]) for i in range(n)], calibrate=False))
        extra = iter(rng.random((20, 2, dim)).astype(np.float32))
        enrol = ms(lambda: g.enroll(f"x{time.perf_counter_ns()}", next(extra), calibrate=False), 20)
    with FaceGallery(db, model_sha256=SHA, dim=dim, readonly=True) as reader, \
            FaceGallery(db, model_sha256=SHA, dim=dim) as other:
        first = ms(lambda: reader.identify(probe))
        steady = ms(lambda: reader.identify(probe), 50)
        other.enroll("late", rows[0], calibrate=False)
        refresh = ms(lambda: reader.identify(probe))
    return {"bulk_s": round(bulk / 1000, 1), "enrol_ms": round(enrol, 1), "first_identify_ms": round(first),
            "identify_ms": round(steady, 2), "refresh_after_other_write_ms": round(refresh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=1000)
    args = parser.parse_args()
    import pgserver

    with tempfile.TemporaryDirectory() as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE bench;")
            for store, db in (("sqlite", Path(tmp) / "g.db"), ("postgresql", server.get_uri("bench"))):
                print(store, measure(db, args.identities, args.dim), flush=True)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
