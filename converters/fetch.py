"""Fetch the authors' weights: download the .mat (sha256-verified), convert it, store the model directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from sfpn_edge import cache, models
from sfpn_edge.converters.convert import convert
from sfpn_edge.converters.layergraph import build_graph, read_mat
from sfpn_edge.converters.tflite_export import export_tflite
from sfpn_edge.errors import ModelError


def fetch_weights(url: str = models.WEIGHTS_URL, dest: Optional[models.PathLike] = None, *,
                  sha256: str = models.WEIGHTS_SHA256, force: bool = False,
                  depthwise_rewrite: bool = True) -> Dict[str, Any]:
    """Download the authors' .mat (sha256-verified), convert it and store the model directory.

    An already converted, valid model at ``dest`` is reused unless ``force`` (one converted before
    the TFLite files existed gets them added). Nothing is left behind on failure. Returns the
    manifest plus ``model_dir`` and ``reused``.
    """
    dest = Path(dest) if dest is not None else models.default_model_dir()
    if not force:
        try:
            manifest = models.load_manifest(dest)
        except ModelError:
            pass
        else:
            if manifest["source_sha256"] == sha256:
                if "litert" not in manifest["files"]:
                    manifest = _add_tflite(dest, manifest, url, sha256)
                return {**manifest, "model_dir": str(dest), "reused": True}
    weights = cache.download(url, cache.home() / "weights" / f"{sha256}.mat", sha256)
    source_name = url.split("?")[0].rstrip("/").rpartition("/")[2] or models.WEIGHTS_FILE
    manifest = convert(weights, dest, depthwise_rewrite=depthwise_rewrite, source_name=source_name)
    return {**manifest, "model_dir": str(dest), "reused": False}


def _add_tflite(dest: Path, manifest: Dict[str, Any], url: str, sha256: str) -> Dict[str, Any]:
    """Write the TFLite files into an older model directory (from the cached weights when they are
    there and intact, else downloaded again) and list them in its manifest."""
    weights = cache.home() / "weights" / f"{sha256}.mat"
    if not weights.is_file() or cache.sha256_file(weights) != sha256:
        weights = cache.download(url, weights, sha256)
    graph = build_graph(read_mat(weights))
    manifest["files"]["litert"] = export_tflite(graph, dest, f"SqueezeFacePoseNet ({graph.variant}) from "
                                                             f"{manifest['source_file']}, by sfpn-edge")
    models.write_manifest(dest, manifest)
    return manifest
