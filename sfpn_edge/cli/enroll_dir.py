"""``sfpn-edge enroll --db DB --from-dir DIR``: one person per subfolder, unusable photos skipped."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from sfpn_edge.cli import photos
from sfpn_edge.cli.common import make_verifier
from sfpn_edge.cli.gallery import describe_gallery_calibration, shown
from sfpn_edge.cli.output import emit
from sfpn_edge.errors import SfpnError
from sfpn_edge.progress import Progress


def run_dir(args: argparse.Namespace) -> int:
    people, skipped = photos.scan_people(args.from_dir)
    verifier = make_verifier(args)
    gallery = photos.open_existing(args.db, verifier)  # a foreign file fails before the slow part
    progress = Progress(sum(len(paths) for _, paths in people), "photos", enabled=not args.no_progress)
    enrolled: List[dict] = []
    try:
        for name, paths in people:
            usable, left_out = _embed_person(verifier, gallery, name, paths, args.replace, progress)
            skipped += left_out
            if usable:
                gallery = photos.create(args.db, verifier, gallery)
                desc = np.concatenate([d for _, d in usable])
                identity = gallery.enroll(name, desc, [str(p.path.resolve()) for p, _ in usable],
                                          replace=args.replace, photo_sha256=[p.sha256 for p, _ in usable],
                                          calibrate=False)  # once, below
                enrolled.append({"name": name, "added": len(usable), "images": identity.images})
        own = None
        if gallery is not None:
            if gallery.refit_due():
                gallery.recalibrate()
            own = gallery.calibration_summary()
        total = len(gallery) if gallery is not None else 0
    finally:
        progress.close()
        if gallery is not None:
            gallery.close()
    if not enrolled and not any(s.reason.startswith("duplicate") for s in skipped):
        raise SfpnError(f"{args.from_dir}: no photo could be enrolled ({len(skipped)} skipped, e.g. "
                        f"{skipped[0].image}: {skipped[0].reason}); {shown(args.db)} was not changed")
    result = {"db": shown(args.db), "from_dir": str(args.from_dir), "people": enrolled,
              "added": sum(p["added"] for p in enrolled), "skipped": [s.to_dict() for s in skipped],
              "identities": total, "calibration": verifier.calibration_info, "gallery_calibration": own}
    emit(result, args.json, _human)
    return 0


def _embed_person(verifier, gallery, name: str, paths: Sequence[Path], replace: bool,
                  progress: Progress) -> Tuple[List[Tuple[photos.Photo, np.ndarray]], List[photos.Skipped]]:
    """([(photo, descriptor [1, D])], [Skipped]) for one person's photos, each tried on its own."""
    read, skipped = [], []
    for path in paths:
        try:
            read.append(photos.read_photo(path))
        except SfpnError as exc:
            progress.step(str(path))
            skipped.append(photos.Skipped(str(path), _reason(exc, path)))
    kept, duplicates = photos.drop_duplicates(read, photos.known_photos(gallery, read, name, replace))
    for item in duplicates:
        progress.step(item.image)
    usable = []
    for photo in kept:
        progress.step(str(photo.path))
        try:
            desc, _ = verifier.embed_images([photo.data], [str(photo.path)])
        except SfpnError as exc:
            skipped.append(photos.Skipped(str(photo.path), _reason(exc, photo.path)))
            continue
        usable.append((photo, desc))
    return usable, skipped + duplicates


def _reason(exc: Exception, path: Path) -> str:
    """The error message without its leading ``<path>: `` (the summary names the photo)."""
    text = str(exc)
    return text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text


def _human(r: dict) -> str:
    lines = [f"enrolled {p['name']!r}: {p['added']} photo(s) added, {p['images']} stored" for p in r["people"]]
    lines.append(f"{len(r['people'])} people, {r['added']} photo(s) from {r['from_dir']}; "
                 f"{r['identities']} identities in {r['db']}")
    if r["gallery_calibration"] is not None:
        lines.append(describe_gallery_calibration(r["gallery_calibration"]))
    if r["skipped"]:
        lines.append(f"skipped {len(r['skipped'])}:")
        lines += [f"  {s['image']}: {s['reason']}" for s in r["skipped"]]
    return "\n".join(lines)
