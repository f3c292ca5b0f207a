"""``sfpn-edge verify A B``: are the faces in two photos the same person?"""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.common import (add_model_options, add_pipeline_options, add_threshold_options,
                                  describe_genuine_accept, make_verifier)
from sfpn_edge.cli.output import emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare the faces in two photos",
        description="Detect the face in each photo (the largest if there are several), embed both and "
                    "compare them by cosine score. The decision threshold is the model's measured "
                    "operating point at FAR 1e-3 on CFP-FP unless --threshold, --far or --security says otherwise. "
                    "Prints the decision, score, threshold, the measured share of genuine pairs accepted "
                    "at that threshold (when measured), the face boxes used and per-stage timings.",
    )
    parser.add_argument("image_a", type=Path, metavar="A", help="first photo (JPEG, PNG, BMP, WebP, TIFF)")
    parser.add_argument("image_b", type=Path, metavar="B", help="second photo")
    add_threshold_options(parser)
    add_pipeline_options(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    verifier = make_verifier(args)
    verifier.operating_point  # fail before any work when no threshold is known
    result = verifier.verify(args.image_a, args.image_b)
    emit({"a": str(args.image_a), "b": str(args.image_b), **result.to_dict(), "detector": verifier.detector_name,
          "security": args.security, "calibration": verifier.calibration_info}, args.json, _human)
    return 0


def _human(r: dict) -> str:
    far = f" (FAR {r['far']:g})" if r["far"] is not None else ""
    lines = [
        f"{'same person' if r['same'] else 'different people'}: score {r['score']:.4f} "
        f"{'>=' if r['same'] else '<'} threshold {r['threshold']:.4f}{far}",
        f"  threshold from {r['threshold_source']}",
        describe_genuine_accept(r),
    ]
    if r.get("calibration"):
        lines.append(f"  calibrated descriptors: {r['calibration']['method']}, {r['calibration']['dim_out']}-d")
    for name, face in zip((r["a"], r["b"]), r["faces"]):
        lines.append(f"  {name}: {describe_face(face)}")
    lines.append("  timings: " + format_timings(r["timings_ms"]))
    return "\n".join(lines)


def describe_face(face: dict, every: bool = False) -> str:
    """One line about a face used in a photo (``every``: all its faces are used, none ignored)."""
    x0, y0, x1, y1 = face["box"]
    others = face["faces_in_image"] - 1
    extra = f", {others} other face(s) ignored" if others > 0 and not every else ""
    padded = ", found after padding the image" if face["found"] == "padded" else ""
    return (f"face {x1 - x0:.0f}x{y1 - y0:.0f} px at ({x0:.0f}, {y0:.0f}), detector score {face['score']:.3f}"
            f"{padded}{extra}; {describe_quality(face['quality'])}")


def describe_quality(q: dict) -> str:
    """One clause about a face's quality (``Quality.to_dict``)."""
    pose = "" if q["yaw_deg"] is None else f", yaw {q['yaw_deg']:+.0f}, roll {q['roll_deg']:+.0f} deg"
    verdict = f"{q['gate']} quality passed" if q["passed"] else f"low quality ({'; '.join(q['reasons'])})"
    return f"{verdict}: blur {q['blur']:.0f}{pose}"


def format_timings(timings: dict) -> str:
    return ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in timings.items())
