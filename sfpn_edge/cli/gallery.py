"""``sfpn-edge gallery list|info|remove|rename|check|recalibrate DB``: manage a gallery file (no model needed)."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Optional

from sfpn_edge.cli.output import emit
from sfpn_edge.errors import SfpnError


def gallery_db(text: str):
    """A ``--db`` value: a URL (``postgresql://…``; other schemes are refused when opened) as given,
    anything else a file path."""
    return text if "://" in text else Path(text)


def shown(db) -> str:
    """A ``--db`` value as outputs show it: a URL's password replaced by ``***``."""
    text = str(db)
    if isinstance(db, Path):
        return text
    return re.sub(r"(password=)[^&\s]*", r"\1***", re.sub(r"^([^:/]+://[^:/@]*:)[^@/]*@", r"\1***@", text))


def add_offline_cache_option(parser: argparse.ArgumentParser) -> None:
    """--offline-cache PATH (identify, watch)."""
    parser.add_argument("--offline-cache", type=Path, metavar="PATH",
                        help="with a postgresql:// --db: a local copy of the gallery, rewritten whenever the "
                             "server's gallery changed, that answers (read-only) while the server is unreachable")


def offline_cache(args: argparse.Namespace) -> Optional[Path]:
    """``--offline-cache``, refused unless ``--db`` is a URL."""
    if args.offline_cache is not None and isinstance(args.db, Path):
        raise SfpnError("--offline-cache needs a postgresql:// --db: a gallery file is local already")
    return args.offline_cache


def warn_offline(args: argparse.Namespace, gallery, was_offline: bool = False) -> bool:
    """One line on stderr when ``gallery`` started or stopped answering from its offline cache
    (``was_offline``: the state last seen); whether it answers from it now."""
    cache = gallery.offline if args.offline_cache is not None else None
    if cache is not None and not was_offline:
        print(f"sfpn-edge {args.command}: warning: {shown(args.db)} unreachable; answering from the offline "
              f"cache {cache.path}, written {_age(cache.age_s)} ago (data_version {cache.data_version})",
              file=sys.stderr, flush=True)
    elif cache is None and was_offline:
        print(f"sfpn-edge {args.command}: {shown(args.db)} reachable again; answering from the server",
              file=sys.stderr, flush=True)
    return cache is not None


def _age(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gallery",
        help="list, inspect, edit or check a gallery file",
        description="Operations on a gallery file that need no model (the file records which model "
                    "made it). remove and rename are one transaction each.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    _add(actions, "list", "the enrolled people", "Every identity: name, stored photos, enrolment time (UTC).",
         run_list)
    _add(actions, "info", "what the file holds", "Format version, model sha256, descriptor size, creation "
         "time, identities, embeddings (how many with a photo hash), file size, and the gallery's own "
         "calibration (method, dimensions, photos and identities fitted on, when, model, threshold source).",
         run_info)
    remove = _add(actions, "remove", "delete people", "Delete each NAME and its embeddings (all in one "
                  "transaction; exit 2 and nothing deleted when a NAME is not enrolled).", run_remove)
    remove.add_argument("names", nargs="+", metavar="NAME", help="identity to delete")
    rename = _add(actions, "rename", "rename a person", "Give OLD's photos the name NEW (NEW must be free).",
                  run_rename)
    rename.add_argument("old", metavar="OLD", help="enrolled name")
    rename.add_argument("new", metavar="NEW", help="new name")
    _add(actions, "check", "verify a gallery file",
         "Read-only integrity check of a gallery: SQLite header and application id, PRAGMA quick_check, "
         "meta table, PRAGMA foreign_key_check, and every embedding row (size, row checksum, finite "
         "values, unit norm), and the calibration row. Exit code 0 when intact, 2 naming the first failed "
         "check.", run_check)
    _add(actions, "recalibrate", "refit the gallery's own calibration",
         "Fit the gallery's calibration on its stored enrolment photos (never on probes): centring from "
         "50 photos, LDA with shrinkage once enough identities have 2 or more photos, thresholds cross-"
         "fitted on its own photo pairs when there are enough. One transaction (the previous calibration "
         "stays until it commits); stored embeddings are not changed. Enrolments and removals refit "
         "automatically when due; this forces it.", run_recalibrate)


def _add(actions, name: str, summary: str, description: str, func) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=summary, description=description)
    parser.add_argument("db", type=gallery_db, metavar="DB", help="gallery file or postgresql:// URL")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=func)
    return parser


def run_list(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import open_gallery

    with open_gallery(args.db) as gallery:
        people = [{"name": i.name, "images": i.images, "enrolled": _utc(i.enrolled)} for i in gallery.identities()]
    emit({"db": shown(args.db), "identities": people}, args.json, _human_list)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import open_gallery

    with open_gallery(args.db) as gallery:
        info = gallery.info()
    emit(info, args.json, _human_info)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import open_gallery

    with open_gallery(args.db, readonly=False) as gallery:
        gallery.remove_many(args.names)
        left = len(gallery)
    emit({"db": shown(args.db), "removed": args.names, "identities": left}, args.json,
         lambda r: f"removed {', '.join(map(repr, r['removed']))}; {r['identities']} identities left in {r['db']}")
    return 0


def run_rename(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import open_gallery

    with open_gallery(args.db, readonly=False) as gallery:
        identity = gallery.rename(args.old, args.new)
    emit({"db": shown(args.db), "old": args.old, "new": identity.name, "images": identity.images}, args.json,
         lambda r: f"renamed {r['old']!r} to {r['new']!r} ({r['images']} photo(s)) in {r['db']}")
    return 0


def run_recalibrate(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import open_gallery

    with open_gallery(args.db, readonly=False) as gallery:
        start = time.perf_counter()
        gallery.recalibrate()
        seconds = time.perf_counter() - start
        summary = gallery.calibration_summary()
    emit({"db": shown(args.db), "seconds": round(seconds, 3), "calibration": summary}, args.json,
         lambda r: f"{r['db']}: recalibrated in {r['seconds']:.1f} s\n{describe_gallery_calibration(r['calibration'])}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import check_gallery

    emit(check_gallery(args.db), args.json, _human_check)
    return 0


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _human_list(r: dict) -> str:
    if not r["identities"]:
        return f"{r['db']}: nobody enrolled"
    width = max(len(p["name"]) for p in r["identities"])
    lines = [f"{p['name']:<{width}}  {p['images']:>4} photo(s)  enrolled {p['enrolled']}" for p in r["identities"]]
    return "\n".join(lines + [f"{len(r['identities'])} identities in {r['db']}"])


def _human_info(r: dict) -> str:
    return "\n".join([
        f"{r['db']}: sfpn-edge gallery, format {r['format_version']}, created {r['created'] or 'unknown'}",
        f"  model sha256 {r['model_sha256']}, {r['descriptor_dim']}-d embeddings",
        f"  {r['identities']} identities, {r['embeddings']} embeddings ({r['photo_hashes']} with a photo hash), "
        f"{r['bytes']:,} bytes",
        describe_gallery_calibration(r["calibration"]),
    ])


def describe_gallery_calibration(c: dict) -> str:
    """Two lines on a gallery's own calibration (``FaceGallery.calibration_summary``)."""
    if c["state"] == "none":
        return f"  gallery calibration: none ({c['reason']}); raw cosine, the verifier's thresholds"
    if "method" not in c:
        return f"  gallery calibration: turned off (--no-calibration; the stored one: {c['reason']})"
    head = (f"  gallery calibration: {c['method']} {c['dim_in']}->{c['dim_out']}-d"
            f"{' (turned off: --no-calibration)' if c['state'] == 'off' else ''}, fitted {c['created']} on "
            f"{c['images']} photos of {c['identities']} identities"
            f"{'' if c['current'] else ' (photos were added or removed since; refits when due)'}")
    t = c["thresholds"]
    own = (f"cross-fitted on {t['genuine_pairs']:,} genuine / {t['impostor_pairs']:,} impostor photo pairs"
           if t["source"] == "own" else f"built-in ({t['reason']})")
    used = ""
    if "scores" in c:
        used = ("; this answer: calibrated scores, the gallery's own threshold" if c["scores"] == "calibrated"
                else "; this answer: raw scores (ranked by the calibration), the verifier's threshold")
    return f"{head}\n  gallery thresholds: {own}{used}"


def _human_check(r: dict) -> str:
    return (f"{r['db']}: ok ({r['identities']} identities, {r['embeddings']} embeddings of "
            f"{r['descriptor_dim']} values, format {r['format_version']}, model {r['model_sha256'][:12]}…; "
            f"checked: {', '.join(r['checks'])})")
