"""``sfpn-edge identify --db DB IMG...``: who in the gallery is this?

Exit status: 0 when every photo matched someone (``--face-policy all``: at least one face each),
1 when any photo matched nobody, 2 on an error (bad photo, gallery or option; nothing printed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.common import (EVERY_FACE, add_model_options, add_pipeline_options, add_threshold_options,
                                  describe_genuine_accept, make_verifier)
from sfpn_edge.cli.gallery import (add_offline_cache_option, describe_gallery_calibration, gallery_db, offline_cache,
                                   shown, warn_offline)
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face, format_timings


def register(subparsers) -> None:
    from sfpn_edge.gallery import DEFAULT_TEMPLATE, TEMPLATES

    parser = subparsers.add_parser(
        "identify",
        help="find the closest people in a gallery to the face in each photo",
        description="Embed the face in each photo and rank the gallery's identities by cosine score. The "
                    "best candidate counts as a match when its score reaches the verification threshold "
                    "(FAR 1e-3 on CFP-FP by default; --threshold / --far / --security). With --face-policy "
                    "all every face in the photo is identified, largest first (JSON: a 'results' list, "
                    "each with its box, quality, match and candidates). With several photos --json prints "
                    "a list, one result per photo. The gallery's own calibration (fitted on its enrolment "
                    "photos, see `sfpn-edge gallery info`) ranks the candidates and, when it has cross-fitted "
                    "thresholds at the FAR, decides the match; --no-calibration searches raw cosine. The "
                    "gallery is only read. Exit status: 0 when every photo matched someone, 1 when any "
                    "matched nobody, 2 on an error.",
    )
    parser.add_argument("images", type=Path, nargs="+", metavar="IMG", help="photo(s) of the person(s) to identify")
    parser.add_argument("--db", type=gallery_db, required=True,
                        help="gallery file or postgresql:// URL (made by `sfpn-edge enroll`)")
    add_offline_cache_option(parser)
    parser.add_argument("--top", type=int, default=5, metavar="K", help="candidates to list (default: 5)")
    parser.add_argument("--template", choices=TEMPLATES, default=DEFAULT_TEMPLATE,
                        help="compare with each identity's mean embedding, or with all its embeddings "
                             f"(best one counts) (default: {DEFAULT_TEMPLATE})")
    parser.add_argument("--storage", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="in-memory gallery precision for the search (default: fp32)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore the gallery's own calibration: raw cosine scores and the verifier's thresholds")
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
    cache = offline_cache(args)  # refused before the model loads
    verifier = make_verifier(args)
    with FaceGallery(args.db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim, readonly=True,
                     template=args.template, storage=args.storage, calibration=not args.no_calibration,
                     offline_cache=cache) as gallery:
        op, calibrated = verifier.gallery_operating_point(gallery)  # fails before any work when no threshold is known
        found = []
        for image in args.images:  # all photos first: an error prints no partial output
            timings: dict = {}
            found.append((image, verifier.identify(image, gallery, args.top, timings), timings))
        size = len(gallery)
        own = gallery.calibration_summary(calibrated)
        warn_offline(args, gallery)
    records = [_record(args, image, results, timings, op, size, verifier, own) for image, results, timings in found]
    if args.json:
        emit(records if len(records) > 1 else records[0], True, _human)
    else:
        print("\n".join(_human(r) for r in records))
    matched = [any(r["match"] is not None for r in rec.get("results", [rec])) for rec in records]
    return 0 if all(matched) else 1


def _record(args: argparse.Namespace, image: Path, results: list, timings: dict, op, size: int, verifier,
            own: dict) -> dict:
    """The result for one photo (``--face-policy all``: every face under 'results')."""
    record = {"image": str(image), "db": shown(args.db), "face_policy": args.face_policy}
    if args.face_policy == "all":
        record["results"] = [r.to_dict() for r in results]
    else:
        record.update(results[0].to_dict())
    record.update({
        **op.to_dict(),
        "security": args.security,
        "identities": size,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
        "calibration": verifier.calibration_info,
        "gallery_calibration": own,
    })
    return record


def _human(r: dict) -> str:
    far = f", FAR {r['far']:g}" if r["far"] is not None else ""
    every = "results" in r
    lines = [f"{r['image']}: {len(r['results'])} face(s)" if every else r["image"]]
    for result in r["results"] if every else [r]:
        head = (f"match: {result['match']}" if result["match"] is not None
                else "no match: nobody in the gallery reaches the threshold")
        lines.append(f"  {describe_face(result['face'], every)}\n    {head}")
        lines += [f"    {rank}. {c['name']}  {c['score']:.4f}" for rank, c in enumerate(result["candidates"], 1)]
    lines.append(f"  threshold {r['threshold']:.4f}{far} ({r['threshold_source']}); {r['identities']} identities")
    lines.append(describe_gallery_calibration(r["gallery_calibration"]))
    lines.append(describe_genuine_accept(r))
    lines.append("  timings: " + format_timings(r["timings_ms"]))
    return "\n".join(lines)
