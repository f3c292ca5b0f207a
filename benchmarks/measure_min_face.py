"""MTCNN with the fixed 20 px minimum face vs an adaptive one (a fraction of the short side), on CFP.

    python benchmarks/measure_min_face.py --cfp ../shared/data/cfp [--mtcnn DIR] [--fraction 0.1] \
        [--every 1] [--json OUT]

Every ``--every``-th CFP image (frontal and profile), one thread, A/B interleaved per image (the
order alternates), through ``find_face`` (largest face, padded retry) with and without
``min_face_fraction``: median ms per image, faces found per source, images where the adaptive
pass alone found nothing (the full pyramid then ran), and the largest boxes' agreement (IoU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main(argv=None) -> int:
    from sfpn_edge.detect.mtcnn import MTCNN
    from sfpn_edge.detect.policy import find_face
    from sfpn_edge.io import read_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", type=Path, required=True)
    parser.add_argument("--mtcnn", type=Path, default=None)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    detector = MTCNN(args.mtcnn, threads=1)
    paths = sorted((args.cfp / "Data" / "Images").glob("*/*/*.jpg"))[::args.every]
    report = {"fraction": args.fraction, "images": len(paths)}
    for kind in ("frontal", "profile"):
        subset = [p for p in paths if p.parent.name == kind]
        ms = {"fixed": [], "adaptive": []}
        sources = {"fixed": {}, "adaptive": {}}
        ious, lost, sized_miss = [], [], 0
        for i, path in enumerate(subset):
            image = read_image(path)
            runs = [("fixed", None), ("adaptive", args.fraction)]
            got = {}
            for name, fraction in (runs if i % 2 == 0 else runs[::-1]):
                start = time.perf_counter()
                got[name] = find_face(detector, image, min_face_fraction=fraction)
                ms[name].append((time.perf_counter() - start) * 1e3)
                sources[name][got[name].source] = sources[name].get(got[name].source, 0) + 1
            if not detector.detect_sized(image, args.fraction * min(image.shape[:2])):
                sized_miss += 1
            fixed, adaptive = got["fixed"], got["adaptive"]
            if fixed.source != "whole-image":
                if adaptive.source == "whole-image":
                    lost.append(str(path))
                else:
                    ious.append(iou(fixed.face.box, adaptive.face.box))
        ious = np.array(ious)
        report[kind] = {
            "images": len(subset),
            "median_ms": {k: round(float(np.median(v)), 2) for k, v in ms.items()},
            "total_s": {k: round(float(np.sum(v)) / 1e3, 1) for k, v in ms.items()},
            "sources": sources,
            "adaptive_pass_found_nothing": sized_miss,
            "faces_lost": lost,
            "largest_box_iou": {"min": round(float(ious.min()), 3) if len(ious) else None,
                                "below_0.9": int((ious < 0.9).sum()), "identical": int((ious > 0.9999).sum())},
        }
        print(json.dumps({kind: report[kind]}), file=sys.stderr)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
