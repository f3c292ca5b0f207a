"""Identify latency and memory of the SQLite gallery against its size (issue 21, part 1).

    python benchmarks/measure_gallery_scale.py --identities 100000 --dim 1000 --storage int8
    python benchmarks/measure_gallery_scale.py --identities 1000000 --dim 128 --storage int8 --db /tmp/g1m.db
    python benchmarks/measure_gallery_scale.py --identities 100000 --dim 1000 --memory   # the old in-memory index
    python benchmarks/measure_gallery_scale.py --identities 100000 --dim 1000 --pgserver  # PostgreSQL + pgvector
    python benchmarks/measure_gallery_scale.py --identities 100000 --dim 1000 --pgserver --offline-cache

Builds (or reuses, ``--db``) a gallery of synthetic non-negative descriptors (|N(0, 1)| per
coordinate: the model's descriptors are post-ReLU; ``--photos`` per identity, calibration off),
loaded in bulk with template "all" (no matrix) and then opened once with the default template
"mean", which writes the matrix file. Then, in a fresh process for each ``--storage``: the first
identify (open + map + check + top-5), the median of ``--repeat`` identifies, the peak RSS
(``VmHWM``) and the peak after imports alone. ``--memory`` measures the in-memory index the
matrix replaced (every row read, templates built in memory). ``--pgserver`` builds the gallery on
a PostgreSQL + pgvector server of its own (the ``pgserver`` wheel, unix socket) and measures the
fleet gallery the same way (it has no matrix: each device fetches every row into memory);
``--offline-cache`` adds a device's offline cache, whose file the device then searches (its matrix).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

SHA = "ab" * 32
CHUNK = 20_000

PROBE = """
import json, statistics, sys, time
import numpy as np
from sfpn_edge.gallery import FaceGallery
def peak_mb():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's across exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024)
db, dim, storage, memory, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
cache = sys.argv[6] or None
base = peak_mb()
probes = np.abs(np.random.default_rng(99).standard_normal((repeat + 1, dim))).astype(np.float32)
start = time.perf_counter()
g = FaceGallery(db, model_sha256="%s", dim=dim, readonly=True, storage=storage, offline_cache=cache)
if memory:
    g._matrix_path = lambda: None
g.identify(probes[0], k=5)
first = time.perf_counter() - start
times = []
for p in probes[1:]:
    t = time.perf_counter()
    g.identify(p, k=5)
    times.append(time.perf_counter() - t)
print(json.dumps({"first_identify_s": round(first, 2), "identify_ms": round(1000 * statistics.median(times), 2),
                  "peak_rss_mb": peak_mb(), "rss_after_imports_mb": base}))
""" % SHA


def build(db: Path, identities: int, dim: int, photos: int, storages: list) -> dict:
    """Bulk-load the gallery, then write each storage's matrix; timings."""
    from sfpn_edge.gallery import FaceGallery

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with FaceGallery(db, model_sha256=SHA, dim=dim, template="all") as g:
        for start in range(0, identities, CHUNK):
            n = min(CHUNK, identities - start)
            rows = np.abs(rng.standard_normal((n, photos, dim))).astype(np.float32)
            g.enroll_many([(f"p{start + i}", rows[i]) for i in range(n)], calibrate=False)
    report = {"bulk_load_s": round(time.perf_counter() - started, 1)}
    for storage in storages:
        started = time.perf_counter()
        with FaceGallery(db, model_sha256=SHA, dim=dim, storage=storage) as g:
            g.identify(np.ones(dim, np.float32), k=5)
        report[f"matrix_build_{storage}_s"] = round(time.perf_counter() - started, 1)
    return report


def probe(db: Path, dim: int, storage: str, memory: bool, repeat: int, cache: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(db), str(dim), storage, "1" if memory else "0", str(repeat),
                          cache], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def measure(db, args, size_mb, cache_dir: Optional[Path] = None) -> None:
    report = {"identities": args.identities, "dim": args.dim, "photos": args.photos}
    if args.pgserver or not db.exists():
        report.update(build(db, args.identities, args.dim, args.photos,
                            [] if args.memory or args.pgserver else args.storage))
    report["db_mb"] = size_mb()
    for storage in args.storage:
        cache = str(cache_dir / f"cache-{storage}.db") if cache_dir else ""
        index = "matrix (offline cache)" if cache else "memory" if args.memory or args.pgserver else "matrix"
        row = {"index": index, "storage": storage, **probe(db, args.dim, storage, args.memory, args.repeat, cache)}
        matrix = Path(f"{db}.{storage}.matrix")
        if not args.pgserver and matrix.exists() and not args.memory:
            row["matrix_mb"] = round(matrix.stat().st_size / 2**20)  # with its room to grow
        print(json.dumps({**report, **row}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--photos", type=int, default=1, help="photos per identity")
    parser.add_argument("--storage", nargs="+", default=["int8"], choices=["fp32", "fp16", "int8"])
    parser.add_argument("--db", type=Path, help="keep the gallery here (reused when it exists)")
    parser.add_argument("--memory", action="store_true", help="measure the in-memory index instead of the matrix")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--pgserver", action="store_true", help="on a PostgreSQL + pgvector server (pgserver)")
    parser.add_argument("--offline-cache", action="store_true",
                        help="with --pgserver: the device keeps an offline cache (and searches its matrix)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.pgserver:
            db = args.db or Path(tmp) / "g.db"
            return measure(db, args, lambda: round(db.stat().st_size / 2**20))
        import pgserver
        from sfpn_edge.gallery import open_gallery

        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE bench;")
            url = server.get_uri("bench")

            def size_mb() -> int:
                with open_gallery(url) as g:
                    return round(g.info()["bytes"] / 2**20)
            measure(url, args, size_mb, Path(tmp) if args.offline_cache else None)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
