"""``sfpn-edge identify --db DB IMG``: who in the gallery is this?"""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.common import (EVERY_FACE, add_model_options, add_pipeline_options, add_threshold_options,
                                  make_verifier)
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face, format_timings


def register(subparsers) -> None:
    from sfpn_edge.gallery import DEFAULT_TEMPLATE, TEMPLATES

    parser = subparsers.add_parser(
        "identify",
        help="find the closest people in a gallery to the face in a photo",
        description="Embed the face in the photo and rank the gallery's identities by cosine score. The "
                    "best candidate counts as a match when its score reaches the verification threshold "
                    "(FAR 1e-3 on CFP-FP by default; --threshold / --far). With --face-policy all every "
                    "face in the photo is identified, largest first (JSON: a 'faces' list, each with its "
                    "box, quality, match and candidates). The gallery is only read.",
    )
    parser.add_argument("image", type=Path, metavar="IMG", help="photo of the person to identify")
    parser.add_argument("--db", type=Path, required=True, help="gallery file (made by `sfpn-edge enroll`)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="candidates to list (default: 5)")
    parser.add_argument("--template", choices=TEMPLATES, default=DEFAULT_TEMPLATE,
                        help="compare with each identity's mean embedding, or with all its embeddings "
                             f"(best one counts) (default: {DEFAULT_TEMPLATE})")
    parser.add_argument("--storage", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="in-memory gallery precision for the search (default: fp32)")
    add_threshold_options(parser)
    add_pipeline_options(parser, EVERY_FACE)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfpn_edge.errors import SfpnError
    from sfpn_edge.gallery import FaceGallery

    if args.top < 1:
        raise SfpnError(f"--top must be at least 1, got {args.top}")
    verifier = make_verifier(args)
    op = verifier.operating_point  # fail before any work when no threshold is known
    with FaceGallery(args.db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                     readonly=True, template=args.template, storage=args.storage) as gallery:
        timings: dict = {}
        results = verifier.identify(args.image, gallery, args.top, timings)
        size = len(gallery)
    result = {"image": str(args.image), "db": str(args.db), "face_policy": args.face_policy}
    if args.face_policy == "all":
        result["results"] = [r.to_dict() for r in results]
    else:
        result.update(results[0].to_dict())
    result.update({
        "threshold": round(op.threshold, 6),
        "far": op.far,
        "threshold_source": op.source,
        "identities": size,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
        "calibration": verifier.calibration_info,
    })
    emit(result, args.json, _human)
    return 0


def _human(r: dict) -> str:
    far = f", FAR {r['far']:g}" if r["far"] is not None else ""
    every = "results" in r
    lines = [f"{r['image']}: {len(r['results'])} face(s)" if every else r["image"]]
    for result in r["results"] if every else [r]:
        head = (f"match: {result['match']}" if result["match"] is not None
                else "no match: nobody in the gallery reaches the threshold")
        lines.append(f"  {describe_face(result['face'], every)}\n    {head}")
        lines += [f"    {rank}. {c['name']}  {c['score']:.4f}" for rank, c in enumerate(result["candidates"], 1)]
    lines.append(f"  threshold {r['threshold']:.4f}{far}; {r['identities']} identities")
    lines.append("  timings: " + format_timings(r["timings_ms"]))
    return "\n".join(lines)
