"""Measurements behind the photo pipeline's defaults, on CFP, through the shipped code path.

    python benchmarks/measure_pipeline.py --cfp ../shared/data/cfp --model DIR [--mtcnn DIR] \
        [--cache /tmp/cfp_faces.npz] [--json OUT]

1. Operating points: cosine thresholds at FAR 1e-3 … 1e-1 on CFP-FP (all 7,000 pairs, 3,500
   impostors), raw and with flip averaging: the table ``BUILTIN_OPERATING_POINTS`` in
   ``sfpn_edge/pipeline.py`` (used when a model manifest has no measured thresholds).
2. Gallery template: each of the 500 CFP identities enrolled with its 10 frontal photos,
   probed with its 4 profiles (2,000 probes, 500-way): top-1 / top-5 identification rate with the
   normalised-mean template vs all embeddings (max score) -> ``sfpn_edge.gallery.DEFAULT_TEMPLATE``.

Faces come from MTCNN through ``FaceVerifier.find_face``'s policy except that a photo where
nothing is found falls back to the whole image (as the CFP evaluation does) so every pair
counts; detections are cached in ``--cache`` (outside the repository: CFP is research-only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

FARS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


def detect_all(verifier, paths, cache: Path):
    """Face boxes (x0, y0, x1, y1) per path and how each was found; cached by path list."""
    from sfpn_edge.detect.policy import find_face
    from sfpn_edge.io import read_image
    from sfpn_edge.detect.policy import RETRY_PAD

    keys = np.array([str(p) for p in paths])
    if cache and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if np.array_equal(data["paths"], keys):
            return data["boxes"], data["sources"]
    boxes, sources = np.zeros((len(paths), 4)), []
    start = time.perf_counter()
    for i, path in enumerate(paths):
        det = find_face(verifier.detector, read_image(path), retry_pad=RETRY_PAD, fallback="whole-image",
                        pick="largest")
        boxes[i] = det.face.box
        sources.append(det.source)
        if i % 500 == 499:
            print(f"  detected {i + 1}/{len(paths)} ({(time.perf_counter() - start) / (i + 1) * 1e3:.0f} ms/image)",
                  file=sys.stderr)
    sources = np.array(sources)
    if cache:
        np.savez(cache, paths=keys, boxes=boxes, sources=sources)
    return boxes, sources


def embed_all(verifier, paths, boxes):
    from sfpn_edge.detect import Face
    from sfpn_edge.io import read_image

    out = np.empty((len(paths), verifier.descriptor_dim), np.float32)
    for start in range(0, len(paths), 64):
        chunk = range(start, min(start + 64, len(paths)))
        images = [read_image(paths[i]) for i in chunk]
        faces = [Face(tuple(boxes[i]), 1.0) for i in chunk]
        out[start:start + len(images)] = verifier.embed_faces(images, faces)
    return out


def operating_points(emb, protocol):
    from sfpn_edge.evaluate import metrics

    scores = np.einsum("ij,ij->i", emb[protocol.pairs[:, 0]], emb[protocol.pairs[:, 1]])
    curve = metrics.roc(scores, protocol.labels)
    points = {far: metrics.tar_at_far(curve, far) for far in FARS}
    acc = metrics.kfold_accuracy(scores, protocol.labels, protocol.folds)
    return {"thresholds": {far: round(t, 4) for far, (_, t) in points.items()},
            "tar": {far: round(tar, 4) for far, (tar, _) in points.items()},
            "accuracy": round(acc.mean * 100, 2), "eer": round(metrics.eer(curve)[0] * 100, 2)}


def template_choice(emb_of, root: Path):
    """Top-1 / top-5 identification: 10 frontals enrolled per identity, 4 profiles as probes."""
    people = sorted(p.name for p in (root / "Data" / "Images").iterdir() if p.is_dir())
    enrol = {p: [root / "Data" / "Images" / p / "frontal" / f"{n:02d}.jpg" for n in range(1, 11)] for p in people}
    probes = [(i, root / "Data" / "Images" / p / "profile" / f"{n:02d}.jpg")
              for i, p in enumerate(people) for n in range(1, 5)]
    gallery = np.stack([np.stack([emb_of[path] for path in enrol[p]]) for p in people])  # [I, 10, D]
    truth = np.array([i for i, _ in probes])
    q = np.stack([emb_of[path] for _, path in probes])
    mean = gallery.sum(1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    result = {}
    for name, scores in (("mean", q @ mean.T), ("all", np.einsum("pd,ind->pin", q, gallery).max(2))):
        rank = (scores > scores[np.arange(len(q)), truth][:, None]).sum(1)
        result[name] = {"top1": round(float((rank == 0).mean()) * 100, 2),
                        "top5": round(float((rank < 5).mean()) * 100, 2)}
    return result


def main(argv=None) -> int:
    from sfpn_edge.detect.mtcnn import MTCNN
    from sfpn_edge.evaluate.protocols import load_cfp
    from sfpn_edge.pipeline import FaceVerifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mtcnn", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="npz of detections (outside the repo)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    ff, fp = load_cfp(args.cfp, "FF"), load_cfp(args.cfp, "FP")
    images = sorted({s.path for s in ff.samples + fp.samples}
                    | {p for p in (args.cfp / "Data" / "Images").glob("*/*/*.jpg")})
    detector = MTCNN(args.mtcnn)
    boxes, sources = detect_all(FaceVerifier(args.model, detector=detector, threshold=0.5), images, args.cache)
    found = {s: int((sources == s).sum()) for s in np.unique(sources)}
    report = {"images": len(images), "detections": found}
    for flip in (False, True):
        verifier = FaceVerifier(args.model, detector=detector, flip=flip, threshold=0.5)
        emb = embed_all(verifier, images, boxes)
        emb_of = dict(zip(images, emb))
        key = "flip" if flip else "raw"
        report[key] = {}
        for proto in (ff, fp):
            e = np.stack([emb_of[s.path] for s in proto.samples])
            report[key][proto.name] = operating_points(e, proto)
        report[key]["identification"] = template_choice(emb_of, args.cfp)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
