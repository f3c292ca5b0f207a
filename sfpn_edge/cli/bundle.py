"""``sfpn-edge bundle MODEL_DIR OUT``: one archive with a converted model (and the detector nets) for a device."""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.output import emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bundle",
        help="pack a converted model directory (and the detector nets) into one archive for a device",
        description="Write OUT (.tar, .tar.gz/.tgz, .tar.xz or .tar.bz2): every file of MODEL_DIR (all "
                    "backends and precisions, calibrations, manifest.json), each checked against the "
                    "manifest's sha256 first, plus the cached BlazeFace and MTCNN nets, and bundle.json with each file's size and "
                    "sha256 and the source weights' sha256. Install it on the device (no mat-io, onnx or "
                    "OpenVINO needed there) with `sfpn-edge fetch-weights --bundle OUT`.",
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                        help="converted model directory, e.g. the one `sfpn-edge fetch-weights` filled")
    parser.add_argument("out", type=Path, metavar="OUT", help="archive to write (replaced if it exists)")
    detector = parser.add_mutually_exclusive_group()
    detector.add_argument("--detector-weights", type=Path, metavar="DIR", action="append",
                          help="a detector's nets to include (a directory made by `fetch-weights --detector "
                               "NAME`; repeat for several); default: the cache's BlazeFace and MTCNN nets, "
                               "those that are there")
    detector.add_argument("--no-detector", action="store_true", help="leave the detector nets out")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfpn_edge.bundle import DETECTORS, make_bundle
    from sfpn_edge.errors import ModelError

    detectors = {}
    for folder in args.detector_weights or ([] if args.no_detector else [d() for _, d in DETECTORS.values()]):
        for name, (files, _) in DETECTORS.items():
            try:
                files(folder)
                detectors[name] = folder
            except ModelError:
                continue
            break
        else:
            if args.detector_weights:
                raise ModelError(f"{folder}: holds no verified detector nets "
                                 f"(fetch them with `sfpn-edge fetch-weights --detector NAME`)")
    emit(make_bundle(args.model_dir, args.out, detectors), args.json, _human)
    return 0


def _human(r: dict) -> str:
    nets = (f"with the {' and '.join(r['detectors'])} nets" if r["detectors"] else
            "without detector nets (the device will need `sfpn-edge fetch-weights --detector blazeface`)")
    return (f"{r['bundle']}: {len(r['files'])} files, {r['bytes'] / 1e6:.1f} MB, {nets}\n"
            f"  sha256 {r['sha256']}\n"
            f"  install on the device with `sfpn-edge fetch-weights --bundle {Path(r['bundle']).name}`")
