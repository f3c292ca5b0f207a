"""Fetch the authors' weights: download the .mat (sha256-verified), convert it, add the int8 models
(calibrated without a dataset unless given photos), store the model directory."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from sfpn_edge import cache, models
from sfpn_edge.converters.calibration_data import EXAMPLE_CROPS, CalibrationSet, example_calibration
from sfpn_edge.converters.convert import convert
from sfpn_edge.converters.layergraph import build_graph, read_mat
from sfpn_edge.converters.tflite_export import export_tflite
from sfpn_edge.errors import ModelError, SfpnError


def fetch_weights(url: str = models.WEIGHTS_URL, dest: Optional[models.PathLike] = None, *,
                  sha256: str = models.WEIGHTS_SHA256, force: bool = False, depthwise_rewrite: bool = True,
                  int8: bool = True, calibration: Optional[CalibrationSet] = None) -> Dict[str, Any]:
    """Download the authors' .mat (sha256-verified), convert it, add int8 models and store the
    model directory.

    ``int8``: also write ORT / OpenVINO / LiteRT int8 and the native plan, calibrated on
    ``calibration`` (default: the authors' example crops, fetched from beside ``url``, augmented).
    An already converted, valid model at ``dest`` is reused unless ``force`` (one converted before
    the TFLite files existed gets them added; int8 is added when missing or when ``calibration``
    is given). Nothing is left behind on failure. Returns the manifest plus ``model_dir``,
    ``reused`` and ``int8`` (what was done, or why not).
    """
    dest = Path(dest) if dest is not None else models.default_model_dir()
    reused = False
    if not force:
        try:
            reused = models.load_manifest(dest)["source_sha256"] == sha256
        except ModelError:
            pass
    if not reused:
        weights = cache.download(url, cache.home() / "weights" / f"{sha256}.mat", sha256)
        source_name = url.split("?")[0].rstrip("/").rpartition("/")[2] or models.WEIGHTS_FILE
        convert(weights, dest, depthwise_rewrite=depthwise_rewrite, source_name=source_name)
    elif "litert" not in models.load_manifest(dest)["files"]:
        _add_tflite(dest, models.load_manifest(dest), url, sha256)
    done = None
    if int8 and (calibration is not None or not has_int8(dest)):
        done = add_int8(dest, calibration, url=url)
    return {**models.load_manifest(dest), "model_dir": str(dest), "reused": reused, "int8": done}


def _add_tflite(dest: Path, manifest: Dict[str, Any], url: str, sha256: str) -> None:
    """Write the TFLite files into an older model directory (from the cached weights when they are
    there and intact, else downloaded again) and list them in its manifest."""
    weights = cache.home() / "weights" / f"{sha256}.mat"
    if not weights.is_file() or cache.sha256_file(weights) != sha256:
        weights = cache.download(url, weights, sha256)
    graph = build_graph(read_mat(weights))
    manifest["files"]["litert"] = export_tflite(graph, dest, f"SqueezeFacePoseNet ({graph.variant}) from "
                                                             f"{manifest['source_file']}, by sfpn-edge")
    models.write_manifest(dest, manifest)


def has_int8(model_dir: Path) -> bool:
    """True when ``model_dir`` holds the native plan and an int8 model beside every ONNX Runtime
    and LiteRT fp32 one (a directory from before the TFLite files gets all int8 rebuilt)."""
    files = models.load_manifest(model_dir)["files"]
    return "int8" in files.get("native", {}) and all(
        "int8" in files[family] for family in ("onnxruntime", "litert") if "fp32" in files.get(family, {}))


def add_int8(model_dir: Path, calibration: Optional[CalibrationSet] = None, *, url: str = models.WEIGHTS_URL,
             examples: Optional[Path] = None) -> Dict[str, Any]:
    """Quantize ``model_dir`` on ``calibration``, else on the example crops (from ``examples`` when
    it holds them, else downloaded from beside ``url`` into the cache). A missing example crop
    leaves the fp32 model as it is and says why (``{"skipped": reason}``)."""
    from sfpn_edge.converters.quantize import quantize_model_dir

    start = time.perf_counter()
    if calibration is None:
        manifest = models.load_manifest(model_dir)
        try:
            folder = example_crops(url, examples)
        except SfpnError as exc:
            return {"skipped": f"{exc}; give --calibration-images DIR (photos of faces) to build int8"}
        calibration = example_calibration(folder, manifest["input_size"][0], manifest["mean"])
    with contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress bars on stdout
        manifest = quantize_model_dir(model_dir, calibration)
    return {"calibration": manifest["calibration"], "seconds": round(time.perf_counter() - start, 1)}


def example_crops(url: str = models.WEIGHTS_URL, folder: Optional[Path] = None) -> Path:
    """A folder with the authors' example crops: ``folder`` when it holds all of them, else the
    cache's copy, downloaded (sha256-pinned) from the folder of ``url`` when absent."""
    if folder is not None and all((Path(folder) / name).is_file() for name in EXAMPLE_CROPS):
        return Path(folder)
    cached = cache.home() / "weights" / "examples"
    base = url.split("?")[0].rstrip("/").rpartition("/")[0]
    for name, digest in EXAMPLE_CROPS.items():
        path = cached / name
        if not (path.is_file() and cache.sha256_file(path) == digest):
            cache.download(f"{base}/{name}", path, digest)
    return cached
