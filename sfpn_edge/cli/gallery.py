"""``sfpn-edge gallery check DB``: is a gallery file intact? (No model needed.)"""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.output import emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gallery",
        help="inspect a gallery file",
        description="Operations on a gallery file that need no model.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    check = actions.add_parser(
        "check",
        help="verify a gallery file",
        description="Read-only integrity check of a gallery: SQLite header and application id, PRAGMA "
                    "quick_check, meta table, PRAGMA foreign_key_check, and every embedding row (size, "
                    "row checksum, finite values, unit norm). Exit code 0 when intact, 2 naming the first "
                    "failed check.",
    )
    check.add_argument("db", type=Path, metavar="DB", help="gallery file")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import check_gallery

    emit(check_gallery(args.db), args.json, _human)
    return 0


def _human(r: dict) -> str:
    return (f"{r['db']}: ok ({r['identities']} identities, {r['embeddings']} embeddings of "
            f"{r['descriptor_dim']} values, format {r['format_version']}, model {r['model_sha256'][:12]}…; "
            f"checked: {', '.join(r['checks'])})")
