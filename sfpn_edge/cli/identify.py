"""``sfpn-edge identify --db DB IMG``: who in the gallery is this?"""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.common import add_model_options, add_pipeline_options, add_threshold_options, make_verifier
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face, format_timings


def register(subparsers) -> None:
    from sfpn_edge.gallery import DEFAULT_TEMPLATE, TEMPLATES

    parser = subparsers.add_parser(
        "identify",
        help="find the closest people in a gallery to the face in a photo",
        description="Embed the face in the photo and rank the gallery's identities by cosine score. The "
                    "best candidate counts as a match when its score reaches the verification threshold "
                    "(FAR 1e-3 on CFP-FP by default; --threshold / --far). The gallery is only read.",
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
    add_pipeline_options(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from sfpn_edge.errors import SfpnError
    from sfpn_edge.gallery import FaceGallery

    if args.top < 1:
        raise SfpnError(f"--top must be at least 1, got {args.top}")
    verifier = make_verifier(args)
    op = verifier.operating_point  # fail before any work when no threshold is known
    with FaceGallery(args.db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                     readonly=True, template=args.template, storage=args.storage) as gallery:
        if len(gallery) == 0:
            raise SfpnError(f"{args.db}: the gallery is empty; enrol someone first")
        timings: dict = {}
        desc, (face,) = verifier.embed_images([args.image], [str(args.image)], timings=timings)
        start = time.perf_counter()
        matches = gallery.identify(desc[0], args.top)
        timings["search"] = (time.perf_counter() - start) * 1e3
        size = len(gallery)
    best = matches[0]
    result = {
        "image": str(args.image),
        "db": str(args.db),
        "match": best.name if best.score >= op.threshold else None,
        "candidates": [{"name": m.name, "score": round(m.score, 6)} for m in matches],
        "threshold": round(op.threshold, 6),
        "far": op.far,
        "threshold_source": op.source,
        "identities": size,
        "face": face.to_dict(),
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
        "calibration": verifier.calibration_info,
    }
    emit(result, args.json, _human)
    return 0


def _human(r: dict) -> str:
    far = f", FAR {r['far']:g}" if r["far"] is not None else ""
    head = (f"match: {r['match']}" if r["match"] is not None
            else "no match: nobody in the gallery reaches the threshold")
    lines = [f"{head} (threshold {r['threshold']:.4f}{far}; {r['identities']} identities)",
             f"  {r['image']}: {describe_face(r['face'])}"]
    for rank, cand in enumerate(r["candidates"], 1):
        lines.append(f"  {rank}. {cand['name']}  {cand['score']:.4f}")
    lines.append("  timings: " + format_timings(r["timings_ms"]))
    return "\n".join(lines)
