"""How to frame one detector's faces for the model: CFP accuracy over crop margins and centre shifts.

    python -m sfpn_edge.evaluate.framing --cfp ../shared/data/cfp --model DIR --detector blazeface \
        [--margins 0 0.1 0.2] [--shifts 0 0.05] [--save boxes.npz] [--json OUT]

Every CFP image the FF/FP protocols use is detected once (``find_face``: the detector, the 25 %
padded retry, the whole image as the last resort, as the evaluation does), then each framing is
cropped and embedded (fp32, ONNX Runtime) and scored with the protocols' 10 folds. A framing is
the square of side max(w, h) x (1 + margin) around the box, its centre moved down by ``shift``
times that side (``align.box_matrix``). Each row also gives the CFP-FP operating points (cosine
thresholds at FAR 1e-3 ... 1e-1, all 7,000 pairs), as ``sfpn_edge.thresholds.BUILTIN`` records them,
and the share of each protocol's genuine pairs accepted at them (``thresholds.GENUINE_ACCEPT``). This is how the MTCNN margin (0.10) was chosen; the result for a detector is
stored in the model directory (``crop_margins`` / ``crop_shifts`` in the manifest).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sfpn_edge import align
from sfpn_edge.detect import registry as detectors
from sfpn_edge.detect.policy import RETRY_PAD, SOURCES, find_face
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.evaluate import metrics
from sfpn_edge.evaluate.protocols import load_cfp, merge_samples
from sfpn_edge.io import read_image
from sfpn_edge.runtime import Runtime
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.score import cosine_pairs

CHUNK = 64
FARS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


def detect_boxes(detector, paths: Sequence[Path]) -> Dict[str, np.ndarray]:
    """Boxes [N, 4], sources and median ms per image of ``find_face`` over ``paths``."""
    boxes, sources, times = np.zeros((len(paths), 4)), [], []
    for i, path in enumerate(paths):
        image = read_image(path)
        start = time.perf_counter()
        det = find_face(detector, image, retry_pad=RETRY_PAD, fallback="whole-image", pick="largest")
        times.append(time.perf_counter() - start)
        boxes[i] = det.face.box
        sources.append(det.source)
    return {"boxes": boxes, "sources": np.array(sources), "ms": np.array(times) * 1e3}


def embed_framing(embedder: FaceEmbedder, paths: Sequence[Path], boxes: np.ndarray, margin: float,
                  shift: float, flip: bool = False) -> np.ndarray:
    """L2-normalised descriptors of every image cropped with ``margin`` and ``shift`` (``flip``:
    the mirrored crop's descriptor added, as ``FaceVerifier(flip=True)`` does)."""
    spec = embedder.dir.crop_spec("fiducials", margin).with_shift(shift)
    out = np.zeros((len(paths), embedder.descriptor_dim), np.float32)
    for start in range(0, len(paths), CHUNK):
        part = range(start, min(start + CHUNK, len(paths)))
        images = [read_image(paths[i]) for i in part]
        desc = embedder.embed(spec.crop(images, [spec.matrix(boxes[i]) for i in part], flip=flip))
        if flip:
            desc = desc[: len(part)] + desc[len(part):]
        out[start:start + len(part)] = l2_normalize(np.ascontiguousarray(desc))
    return out


def thresholds_at(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Cosine thresholds at ``FARS`` (the lowest score whose FAR does not exceed each)."""
    curve = metrics.roc(scores, labels)
    return {f"{far:g}": round(metrics.tar_at_far(curve, far)[1], 4) for far in FARS}


def genuine_accept_at(scores: np.ndarray, labels: np.ndarray, points: Dict[str, float]) -> Dict[str, float]:
    """Share of the genuine pairs (``labels`` true) scoring at least each of ``points``' thresholds."""
    genuine = np.asarray(scores)[np.asarray(labels, bool)]
    return {far: round(float((genuine >= t).mean()), 4) for far, t in points.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfpn_edge.evaluate.framing", description=__doc__.split("\n")[0])
    parser.add_argument("--cfp", type=Path, required=True, help="CFP root (Data/, Protocol/)")
    parser.add_argument("--model", type=Path, default=None, help="converted model directory (default: the cache's)")
    parser.add_argument("--detector", default="mtcnn", choices=detectors.names())
    parser.add_argument("--detector-weights", type=Path, default=None)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.10, 0.15, 0.20])
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0])
    parser.add_argument("--flip", action="store_true", help="flip-averaged descriptors")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path, default=None, help="write/reuse the detections here (.npz, outside the repo)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    protocols = [load_cfp(args.cfp, "FF"), load_cfp(args.cfp, "FP")]
    samples, pairs = merge_samples(protocols)
    paths = [s.path for s in samples]
    keys = np.array([str(p) for p in paths])
    if args.save and args.save.is_file() and np.array_equal(np.load(args.save)["paths"], keys):
        found = dict(np.load(args.save))
    else:
        rt = Runtime.resolve("onnxruntime", precision="fp32", threads=args.threads)
        found = detect_boxes(detectors.make_detector(args.detector, args.detector_weights, rt), paths)
        if args.save:
            np.savez(args.save, paths=keys, **found)
    embedder = FaceEmbedder(args.model, runtime=Runtime.resolve("onnxruntime", precision="fp32", threads=args.threads))
    report: List[dict] = []
    for margin, shift in itertools.product(args.margins, args.shifts):
        vectors = embed_framing(embedder, paths, found["boxes"], margin, shift, args.flip)
        row = {"margin": margin, "shift": shift, "flip": args.flip}
        for proto, p in zip(protocols, pairs):
            scores = cosine_pairs(vectors[p[:, 0]], vectors[p[:, 1]]).astype(np.float64)
            fold = metrics.kfold_accuracy(scores, proto.labels, proto.folds)
            row[proto.name] = round(100 * fold.mean, 2)
            row[f"{proto.name} std"] = round(100 * fold.std, 2)
        points = thresholds_at(scores, protocols[-1].labels)
        row["CFP-FP thresholds"] = points
        for proto, p in zip(protocols, pairs):  # each protocol's genuine pairs at the CFP-FP thresholds
            proto_scores = cosine_pairs(vectors[p[:, 0]], vectors[p[:, 1]]).astype(np.float64)
            row[f"{proto.name} genuine accept"] = genuine_accept_at(proto_scores, proto.labels, points)
        report.append(row)
        print(json.dumps(row), file=sys.stderr)
    counts = {source: int((found["sources"] == source).sum()) for source in SOURCES}
    result = {"detector": args.detector, "faces": counts, "ms_per_image_median": round(float(np.median(found["ms"])), 2),
              "framings": report}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
