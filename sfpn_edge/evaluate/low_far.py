"""Operating points below what the CFP protocols can measure: FAR 1e-4 on every CFP impostor pair.

    python -m sfpn_edge.evaluate.low_far --cfp ../shared/data/cfp --boxes boxes.npz --detector mtcnn \
        --margin 0.1 [--shift 0] [--flip] [--json OUT]

CFP-FP's 3,500 impostor pairs cannot measure FAR 1e-4. Here every image the CFP protocols use is
cropped at the detector boxes ``evaluate.framing --save`` stored and embedded (fp32, ONNX
Runtime); the impostors are all frontal-profile pairs of different people (about 9.5 M, the
CFP-FP kind of pair), the genuine pairs all frontal-profile (FP) and frontal-frontal (FF) pairs of
one person. Each threshold follows ``thresholds.BUILTIN``'s rule (the lowest score whose FAR does
not exceed the target), rounded up to 4 decimals; the share of genuine pairs accepted at it is
reported, as ``thresholds.LOW_FAR`` records.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.evaluate import metrics
from sfpn_edge.evaluate.framing import embed_framing
from sfpn_edge.runtime import Runtime

FARS = (1e-4, 1e-3)


def measure(vectors: np.ndarray, paths: Sequence[str], fars: Sequence[float] = FARS) -> Dict[str, object]:
    """Thresholds at ``fars`` over every frontal-profile impostor pair, and the genuine shares accepted."""
    ids = np.array([Path(p).parts[-3] for p in paths])
    kind = np.array([Path(p).parts[-2] for p in paths])
    front, side = np.flatnonzero(kind == "frontal"), np.flatnonzero(kind == "profile")
    fp = vectors[front] @ vectors[side].T
    same = ids[front][:, None] == ids[side][None, :]
    genuine_fp, impostor = fp[same].astype(np.float64), fp[~same].astype(np.float64)
    ff = vectors[front] @ vectors[front].T
    upper = np.triu(ids[front][:, None] == ids[front][None, :], 1)
    genuine_ff = ff[upper].astype(np.float64)
    curve = metrics.roc(np.r_[genuine_fp, impostor], np.r_[np.ones(len(genuine_fp), bool), np.zeros(len(impostor), bool)])
    points = {}
    for far in fars:
        threshold = math.ceil(metrics.tar_at_far(curve, far)[1] * 1e4) / 1e4  # rounded up: FAR stays <= far
        points[f"{far:g}"] = {"threshold": threshold, "far_measured": float((impostor >= threshold).mean()),
                              "CFP-FF": round(float((genuine_ff >= threshold).mean()), 4),
                              "CFP-FP": round(float((genuine_fp >= threshold).mean()), 4)}
    return {"impostor_pairs": int(len(impostor)), "genuine_pairs": {"FP": int(len(genuine_fp)), "FF": int(len(genuine_ff))},
            "points": points}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfpn_edge.evaluate.low_far", description=__doc__.split("\n")[0])
    parser.add_argument("--cfp", type=Path, required=True, help="CFP root (Data/, Protocol/)")
    parser.add_argument("--boxes", type=Path, required=True, help="detections saved by `evaluate.framing --save`")
    parser.add_argument("--model", type=Path, default=None, help="converted model directory (default: the cache's)")
    parser.add_argument("--detector", required=True, help="the detector that made the boxes (recorded only)")
    parser.add_argument("--margin", type=float, required=True)
    parser.add_argument("--shift", type=float, default=0.0)
    parser.add_argument("--flip", action="store_true", help="flip-averaged descriptors")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    found = np.load(args.boxes)
    paths = [str(p) for p in found["paths"]]
    embedder = FaceEmbedder(args.model, runtime=Runtime.resolve("onnxruntime", precision="fp32", threads=args.threads))
    vectors = embed_framing(embedder, [Path(p) for p in paths], found["boxes"], args.margin, args.shift, args.flip)
    result = {"detector": args.detector, "margin": args.margin, "shift": args.shift, "flip": args.flip,
              **measure(vectors, paths)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
