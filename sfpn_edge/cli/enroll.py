"""``sfpn-edge enroll --db DB --name NAME IMG...``: add a person to a gallery."""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.common import add_model_options, add_pipeline_options, make_verifier
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "enroll",
        help="add a person's photos to a gallery",
        description="Embed the face in each photo and store the embeddings under NAME in the gallery file "
                    "DB (SQLite; created if missing). All photos are checked before the gallery is touched "
                    "and the enrolment is one transaction: it is stored completely or not at all. An "
                    "existing NAME gets the new photos added (or replaced with --replace).",
    )
    parser.add_argument("images", type=Path, nargs="+", metavar="IMG", help="photos of the person")
    parser.add_argument("--db", type=Path, required=True, help="gallery file")
    parser.add_argument("--name", required=True, help="identity name")
    parser.add_argument("--replace", action="store_true", help="replace NAME's stored photos instead of adding")
    add_pipeline_options(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import FaceGallery, check_name

    check_name(args.name)
    verifier = make_verifier(args)
    # Open (and check) the gallery before the slow part, so a foreign file fails fast.
    with FaceGallery(args.db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as gallery:
        desc, faces = verifier.embed_images(args.images, [str(p) for p in args.images])
        identity = gallery.enroll(args.name, desc, [str(p.resolve()) for p in args.images],
                                  replace=args.replace)
        total = len(gallery)
    result = {
        "db": str(args.db),
        "name": identity.name,
        "added": len(args.images),
        "images": identity.images,
        "identities": total,
        "faces": [{"image": str(p), **f.to_dict()} for p, f in zip(args.images, faces)],
        "calibration": verifier.calibration_info,
    }
    emit(result, args.json, _human)
    return 0


def _human(r: dict) -> str:
    lines = [f"{item['image']}: {describe_face(item)}" for item in r["faces"]]
    lines.append(f"enrolled {r['name']!r}: {r['added']} photo(s) added, {r['images']} stored; "
                 f"{r['identities']} identities in {r['db']}")
    return "\n".join(lines)
