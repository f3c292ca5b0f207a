"""How the quality measures relate to the worst genuine scores on CFP (``sfpn_edge.quality``'s gates).

    python benchmarks/measure_quality.py --cfp ../shared/data/cfp --model DIR [--mtcnn DIR] \
        [--cache /tmp/cfp_quality.npz] [--json OUT]

Every CFP image of the FF and FP protocols goes through the MTCNN pipeline (``find_face``,
largest face, whole image when nothing is found, as the e2e evaluation does), its crop is
measured (``sfpn_edge.quality``) and embedded. A pair's quality is its worse image. For each
measure and candidate threshold it reports, per protocol: the share of genuine pairs the gate
removes, the share of the worst 1 % genuine scores it removes, the share of the false rejects at
the FAR 1e-3 threshold it removes, and the share of images refused. Detections and measures are
cached in ``--cache`` (outside the repository: CFP is research-only).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CANDIDATES = {
    "size_px": (30, 40, 50, 60, 70, 80),
    "blur": (20, 30, 50, 75, 100, 150),
    "roll_deg": (15, 20, 25, 30, 40),
    "yaw_deg": (20, 30, 45, 60),
}
LOW_IS_BAD = {"size_px": True, "blur": True, "roll_deg": False, "yaw_deg": False}


def measure(verifier, paths, cache):
    """Per image: quality values [N, 4] (size, blur, |yaw|, |roll|; NaN without landmarks) and descriptors."""
    from sfpn_edge.detect.policy import RETRY_PAD, find_face
    from sfpn_edge.io import read_image
    from sfpn_edge.quality import assess

    keys = np.array([str(p) for p in paths])
    if cache and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if np.array_equal(data["paths"], keys):
            return data["values"], data["emb"]
    values = np.full((len(paths), 4), np.nan)
    emb = np.empty((len(paths), verifier.descriptor_dim), np.float32)
    for i, path in enumerate(paths):
        image = read_image(path)
        face = find_face(verifier.detector, image, retry_pad=RETRY_PAD, fallback="whole-image").face
        crops = verifier.crop([image], [face])
        q = assess(face, crops[0])
        values[i] = [q.size_px, q.blur, np.nan if q.yaw_deg is None else abs(q.yaw_deg),
                     np.nan if q.roll_deg is None else abs(q.roll_deg)]
        emb[i] = verifier.embed_crops(crops)[0]
        if i % 1000 == 999:
            print(f"  {i + 1}/{len(paths)}", file=sys.stderr)
    if cache:
        np.savez(cache, paths=keys, values=values, emb=emb)
    return values, emb


def report(protocol, index, values, emb):
    from sfpn_edge.evaluate import metrics

    a, b = index[protocol.pairs[:, 0]], index[protocol.pairs[:, 1]]
    scores = np.einsum("ij,ij->i", emb[a], emb[b])
    genuine = protocol.labels.astype(bool)
    _, threshold = metrics.tar_at_far(metrics.roc(scores, protocol.labels), 1e-3)
    worst = genuine & (scores <= np.quantile(scores[genuine], 0.01))
    rejected = genuine & (scores < threshold)
    images = np.unique(np.concatenate([a, b]))
    out = {"pairs": int(genuine.sum()), "threshold_far_1e-3": round(float(threshold), 4),
           "false_rejects": int(rejected.sum()), "measures": {}}
    for col, name in enumerate(CANDIDATES):
        va, vb = values[a, col], values[b, col]
        pair = np.fmin(va, vb) if LOW_IS_BAD[name] else np.fmax(va, vb)
        rows = {}
        for t in CANDIDATES[name]:
            bad = (pair < t) if LOW_IS_BAD[name] else (pair > t)
            img_bad = (values[images, col] < t) if LOW_IS_BAD[name] else (values[images, col] > t)
            rows[t] = {"genuine_removed_%": _pct(bad[genuine].mean()),
                       "worst1%_removed_%": _pct(bad[worst].sum() / max(worst.sum(), 1)),
                       "false_rejects_removed_%": _pct(bad[rejected].sum() / max(rejected.sum(), 1)),
                       "images_refused_%": _pct(img_bad.mean())}
        col_values = values[images, col]
        col_values = col_values[np.isfinite(col_values)]
        out["measures"][name] = {"image_percentiles_1_5_50_95_99": [round(float(v), 1) for v in
                                                                 np.percentile(col_values, (1, 5, 50, 95, 99))],
                                 "thresholds": rows}
    return out


def _pct(x) -> float:
    return round(float(x) * 100, 2)


def main(argv=None) -> int:
    from sfpn_edge.detect.mtcnn import MTCNN
    from sfpn_edge.evaluate.protocols import load_cfp
    from sfpn_edge.pipeline import FaceVerifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mtcnn", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="npz of measures (outside the repo)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    protocols = [load_cfp(args.cfp, "FF"), load_cfp(args.cfp, "FP")]
    paths = sorted({s.path for p in protocols for s in p.samples})
    verifier = FaceVerifier(args.model, detector=MTCNN(args.mtcnn, threads=1), threads=1, threshold=0.5)
    values, emb = measure(verifier, paths, args.cache)
    where = {p: i for i, p in enumerate(paths)}
    result = {}
    for proto in protocols:
        index = np.array([where[s.path] for s in proto.samples])
        result[proto.name] = report(proto, index, values, emb)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
