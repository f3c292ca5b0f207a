"""``sfpn-edge enroll --db DB --name NAME IMG...`` or ``--from-dir DIR``: add people to a gallery."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sfpn_edge.cli.common import add_model_options, add_pipeline_options, make_verifier
from sfpn_edge.cli.gallery import describe_gallery_calibration, gallery_db, shown
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "enroll",
        help="add a person's photos (or a folder of people) to a gallery",
        description="Embed the face in each photo and store the embeddings under NAME in the gallery file "
                    "DB (SQLite). All photos are checked before the gallery is touched and the enrolment is "
                    "one transaction: it is stored completely or not at all, and a failed enrolment into a "
                    "new DB creates no file. An existing NAME gets the new photos added (or replaced with "
                    "--replace). A photo already in the gallery (same file content, sha256) or given twice "
                    "is skipped with a message. --from-dir DIR enrols one person per subfolder (the folder "
                    "name is the name), one transaction per person; photos that cannot be used are skipped "
                    "and listed in a summary, with progress on stderr. Afterwards the gallery refits its own "
                    "calibration when due (see `sfpn-edge gallery recalibrate`).",
    )
    parser.add_argument("images", type=Path, nargs="*", metavar="IMG", help="photos of the person")
    parser.add_argument("--db", type=gallery_db, required=True, help="gallery file or postgresql:// URL")
    parser.add_argument("--name", help="identity name (with IMG)")
    parser.add_argument("--from-dir", type=Path, metavar="DIR",
                        help="enrol every subfolder DIR/NAME/ (its photos) as NAME, instead of IMG and --name")
    parser.add_argument("--replace", action="store_true", help="replace NAME's stored photos instead of adding")
    parser.add_argument("--no-progress", action="store_true", help="with --from-dir: no progress on stderr")
    add_pipeline_options(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfpn_edge.errors import SfpnError
    from sfpn_edge.gallery import check_name

    if args.from_dir is not None:
        if args.images or args.name is not None:
            raise SfpnError("--from-dir takes the names and photos from the folder: no IMG or --name")
        from sfpn_edge.cli.enroll_dir import run_dir

        return run_dir(args)
    if not args.images or args.name is None:
        raise SfpnError("give --name NAME and at least one photo IMG (or --from-dir DIR)")
    check_name(args.name)
    return run_photos(args)


def run_photos(args: argparse.Namespace) -> int:
    from sfpn_edge.cli import photos

    verifier = make_verifier(args)
    gallery = photos.open_existing(args.db, verifier)  # a foreign file fails before the slow part
    try:
        read = [photos.read_photo(path) for path in args.images]
        kept, skipped = photos.drop_duplicates(read, photos.known_photos(gallery, read, args.name, args.replace))
        for item in skipped:
            print(f"{item.image}: skipped, {item.reason}", file=sys.stderr)
        faces: list = []
        if kept:
            desc, faces = verifier.embed_images([p.data for p in kept], [str(p.path) for p in kept])
            gallery = photos.create(args.db, verifier, gallery)
            identity = gallery.enroll(args.name, desc, [str(p.path.resolve()) for p in kept], replace=args.replace,
                                      photo_sha256=[p.sha256 for p in kept])
            stored = identity.images
        else:
            stored = len(gallery.embeddings(args.name)) if gallery is not None and args.name in gallery else 0
        total = len(gallery) if gallery is not None else 0
        own = gallery.calibration_summary() if gallery is not None else None
    finally:
        if gallery is not None:
            gallery.close()
    result = {
        "db": shown(args.db),
        "name": args.name,
        "added": len(kept),
        "images": stored,
        "identities": total,
        "faces": [{"image": str(p.path), **f.to_dict()} for p, f in zip(kept, faces)],
        "skipped": [item.to_dict() for item in skipped],
        "calibration": verifier.calibration_info,
        "gallery_calibration": own,
    }
    emit(result, args.json, _human)
    return 0


def _human(r: dict) -> str:
    lines = [f"{item['image']}: {describe_face(item)}" for item in r["faces"]]
    skipped = f" ({len(r['skipped'])} duplicate(s) skipped)" if r["skipped"] else ""
    head = f"enrolled {r['name']!r}" if r["added"] else f"nothing new for {r['name']!r}: every photo is already enrolled"
    lines.append(f"{head}: {r['added']} photo(s) added{skipped}, {r['images']} stored; "
                 f"{r['identities']} identities in {r['db']}")
    if r["gallery_calibration"] is not None:
        lines.append(describe_gallery_calibration(r["gallery_calibration"]))
    return "\n".join(lines)
