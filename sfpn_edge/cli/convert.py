"""``sfpn-edge convert SRC.mat --out DIR``: MATLAB LayerGraph -> ONNX + OpenVINO IR model directory."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sfpn_edge.cli.fetch_weights import add_int8_options, int8_lines, photo_calibration_set
from sfpn_edge.cli.output import emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert the authors' MATLAB .mat model to ONNX / OpenVINO IR",
        description="Read the MATLAB LayerGraph in SRC.mat (needs the 'convert' extra) and write a model "
                    "directory: model.onnx, OpenVINO model.xml/.bin (fp32), model_fp16.xml/.bin, "
                    "model_static.xml/.bin (batch 1, for NPUs), int8 models (model_int8.onnx, model_int8.xml, "
                    "model_native_int8.npz; calibrated on the authors' example crops found beside SRC.mat or "
                    "downloaded, or on --calibration-images) and manifest.json. The fp32 directory appears "
                    "only when everything succeeded; int8 is added to it after.",
    )
    parser.add_argument("src", type=Path, metavar="SRC.mat", help="MATLAB file holding one nnet.cnn.LayerGraph")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="model directory to create (an existing model directory is replaced)")
    parser.add_argument("--no-rewrite", action="store_true",
                        help="keep grouped 3x3 convs as they are instead of the faster form "
                             "(channel-replicate + depthwise conv, exact to float rounding)")
    parser.add_argument("--json", action="store_true", help="print the manifest and file sizes as JSON")
    add_int8_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfpn_edge import models
    from sfpn_edge.converters.convert import convert
    from sfpn_edge.converters.fetch import add_int8

    start = time.perf_counter()
    calibration = photo_calibration_set(args)
    convert(args.src, args.out, depthwise_rewrite=not args.no_rewrite)
    int8 = None if args.no_int8 else add_int8(args.out, calibration, examples=args.src.parent)
    manifest = models.load_manifest(args.out)
    result = {**manifest, "model_dir": str(args.out), "seconds": round(time.perf_counter() - start, 3),
              "sizes": file_sizes(args.out, manifest), "int8": int8}
    emit(result, args.json, _human)
    return 0


def file_sizes(model_dir: Path, manifest: dict) -> dict:
    """Bytes on disk per model file (OpenVINO IR counted as .xml + .bin)."""
    sizes = {}
    for table in manifest["files"].values():
        for name in table.values():
            path = Path(model_dir) / name
            sizes[name] = path.stat().st_size + (path.with_suffix(".bin").stat().st_size
                                                 if path.suffix == ".xml" else 0)
    return sizes


def _human(result: dict) -> str:
    lines = [f"converted {result['source_file']} ({result['variant']}, {result['parameters']:,} parameters) "
             f"-> {result['model_dir']} in {result['seconds']:.1f} s"]
    lines += [f"  {name:<22} {size / 1e6:6.2f} MB" for name, size in result["sizes"].items()]
    lines += int8_lines(result["int8"])
    return "\n".join(lines)
