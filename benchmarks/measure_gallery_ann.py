"""Approximate search (usearch HNSW) against the exact int8 matrix search: recall@1, latency, memory.

    pip install usearch
    python benchmarks/measure_gallery_ann.py --identities 1000000 --dim 128

Templates: synthetic non-negative descriptors (|N(0, 1)| per coordinate, normalised), the ones
``measure_gallery_scale.py`` enrols; probes: enrolled templates plus noise (cosine ~0.8 to their
own). Exact: the int8 ``score.Gallery`` kernel the gallery's matrix file is searched with.
HNSW: usearch over the templates minus their mean with the inner product (the same ranking as
cosine for a unit probe: ``q . g = q . (g - c) + q . c``; ``--metric cos`` indexes the raw
templates, which all lie in one narrow cone, and loses recall), stored as ``--ann-dtype``; built
here, saved, then searched in a fresh
process from a memory view of the saved file (what a device would keep). recall@1: share of probes
whose HNSW top-1 is the exact top-1. Not wired into ``FaceGallery``: see the README (gallery).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 20_000

SEARCH = """
import json, statistics, sys, time
import numpy as np
from usearch.index import Index
def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024)
path, probes_path, expansion = sys.argv[1], sys.argv[2], int(sys.argv[3])
probes = np.load(probes_path)
start = time.perf_counter()
index = Index.restore(path, view=True)
index.expansion_search = expansion
first = index.search(probes[0], 5)
first_s = time.perf_counter() - start
top1, times = [], []
for p in probes:
    t = time.perf_counter()
    m = index.search(p, 5)
    times.append(time.perf_counter() - t)
    top1.append(int(m.keys[0]))
print(json.dumps({"top1": top1, "first_search_s": round(first_s, 3),
                  "search_ms": round(1000 * statistics.median(times), 3), "peak_rss_mb": peak_mb()}))
"""


def templates(identities: int, dim: int) -> np.ndarray:
    """The templates ``measure_gallery_scale.py`` enrols (same generator, 1 photo each), normalised."""
    rng = np.random.default_rng(0)
    out = np.empty((identities, dim), np.float32)
    for start in range(0, identities, CHUNK):
        n = min(CHUNK, identities - start)
        out[start:start + n] = np.abs(rng.standard_normal((n, 1, dim))).astype(np.float32)[:, 0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.6, help="probe noise, relative to a template's norm")
    parser.add_argument("--ann-dtype", default="i8", choices=["f32", "f16", "i8"])
    parser.add_argument("--metric", default="ip-centred", choices=["ip-centred", "cos"])
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--expansion-search", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    from usearch.index import Index

    from sfpn_edge.score import Gallery

    x = templates(args.identities, args.dim)
    rng = np.random.default_rng(1)
    truth = rng.choice(args.identities, args.probes, replace=False)
    noise = rng.standard_normal((args.probes, args.dim)).astype(np.float32)
    probes = x[truth] + args.noise * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    exact = Gallery(x, storage="int8")
    times = []
    for p in probes[:200]:
        t = time.perf_counter()
        exact.topk(p, 5)
        times.append(time.perf_counter() - t)
    exact_top1 = exact.topk(probes, 1)[0][:, 0]
    del exact
    report = {"identities": args.identities, "dim": args.dim, "probes": args.probes,
              "exact_int8_top5_ms": round(1000 * float(np.median(times)), 2),
              "exact_top1_is_own_template": round(float((exact_top1 == truth).mean()), 4)}
    index = Index(ndim=args.dim, metric="ip" if args.metric == "ip-centred" else "cos", dtype=args.ann_dtype,
                  connectivity=args.connectivity, expansion_add=args.expansion_add)
    if args.metric == "ip-centred":
        x -= x.mean(axis=0)
    started = time.perf_counter()
    index.add(np.arange(args.identities), x)
    report["hnsw_build_s"] = round(time.perf_counter() - started, 1)
    del x
    with tempfile.TemporaryDirectory() as tmp:
        path, probes_path = Path(tmp) / "g.usearch", Path(tmp) / "probes.npy"
        index.save(str(path))
        del index
        np.save(probes_path, probes)
        report["hnsw_file_mb"] = round(path.stat().st_size / 2**20)
        for expansion in args.expansion_search:
            out = json.loads(subprocess.run([sys.executable, "-c", SEARCH, str(path), str(probes_path), str(expansion)],
                                            check=True, capture_output=True, text=True).stdout)
            top1 = np.array(out.pop("top1"))
            print(json.dumps({**report, "metric": args.metric, "ann_dtype": args.ann_dtype,
                              "connectivity": args.connectivity,
                              "expansion_search": expansion, **out,
                              "recall_at_1": round(float((top1 == exact_top1).mean()), 4)}), flush=True)


if __name__ == "__main__":
    main()
