"""The ``sfpn-edge`` command line: one module per subcommand.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed args, returns an exit code). Modules
import heavy dependencies inside ``func`` so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from sfpn_edge import __version__
from sfpn_edge.errors import SfpnError

COMMANDS = [
    "convert",
    "fetch_weights",
    "bundle",
    "verify",
    "embed",
    "enroll",
    "identify",
    "watch",
    "gallery",
    "evaluate",
    "calibrate",
    "info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfpn-edge",
        description="Pose-robust face verification at the edge (SqueezeFacePoseNet).",
    )
    parser.add_argument("--version", action="version", version=f"sfpn-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"sfpn_edge.cli.{name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # file names with undecodable bytes (surrogate escapes) print as \x escapes, not a traceback
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SfpnError as exc:
        print(f"sfpn-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `| head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"sfpn-edge {args.command}: interrupted", file=sys.stderr)
        return 130
