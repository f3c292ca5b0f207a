"""MATLAB .mat -> complete model directory (ONNX, OpenVINO IR fp32/fp16/static, TFLite fp32/fp16,
manifest.json).

    manifest = convert("SqueezeFacePoseNet_with_separable_DWC.mat", "models/sfpn")

The directory is assembled in a temporary sibling and renamed into place only when everything
succeeded, so a failure never leaves a half-written model directory.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Dict, Optional, Union

from sfpn_edge import __version__, cache, models
from sfpn_edge.align import MEAN_RGB
from sfpn_edge.detect import registry as detectors
from sfpn_edge.errors import SfpnError
from sfpn_edge.converters.layergraph import Graph, build_graph, read_mat
from sfpn_edge.converters.onnx_export import export_onnx
from sfpn_edge.converters.openvino_export import export_openvino
from sfpn_edge.converters.tflite_export import export_tflite

ONNX_FILE = "model.onnx"

PathLike = Union[str, Path]


def convert(src_mat: PathLike, out_dir: PathLike, *, depthwise_rewrite: bool = True,
            source_name: Optional[str] = None) -> Dict[str, Any]:
    """Convert the LayerGraph in ``src_mat`` into the model directory ``out_dir``; returns the manifest."""
    src_mat = Path(src_mat)
    graph = build_graph(read_mat(src_mat))
    return write_model_dir(graph, out_dir, source_sha256=cache.sha256_file(src_mat),
                           source_name=source_name or src_mat.name, depthwise_rewrite=depthwise_rewrite)


def write_model_dir(graph: Graph, out_dir: PathLike, *, source_sha256: str, source_name: str,
                    depthwise_rewrite: bool = True) -> Dict[str, Any]:
    """Export ``graph`` to every format and write the manifest, atomically.

    An existing model directory at ``out_dir`` is replaced; any other existing file or non-empty
    directory is refused (never clobber what is not ours).
    """
    out_dir = Path(out_dir)
    models.check_replaceable(out_dir)
    try:
        return _write(graph, out_dir, source_sha256, source_name, depthwise_rewrite)
    except OSError as exc:
        raise SfpnError(f"cannot write the model to {out_dir}: {exc.strerror or exc}") from None


def _write(graph: Graph, out_dir: Path, source_sha256: str, source_name: str,
           depthwise_rewrite: bool) -> Dict[str, Any]:
    with cache.atomic_dir(out_dir) as tmp:
        export_onnx(graph, tmp / ONNX_FILE, depthwise_rewrite=depthwise_rewrite,
                    doc=f"SqueezeFacePoseNet ({graph.variant}) converted by sfpn-edge from {source_name}")
        ir = export_openvino(tmp / ONNX_FILE, tmp)
        tflite = export_tflite(graph, tmp, f"SqueezeFacePoseNet ({graph.variant}) from {source_name}, by sfpn-edge")
        c, h, w = graph.input_shape
        manifest = {
            "format_version": models.FORMAT_VERSION,
            "variant": graph.variant,
            "input_size": [h, w],
            "mean": list(MEAN_RGB),  # the authors' per-channel training mean (usage.m)
            "colour_order": "RGB",
            "crop_margin": detectors.get("mtcnn").margin,  # the default detector's measured framing
            "descriptor_dim": graph.descriptor_dim,
            "source_file": source_name,
            "source_sha256": source_sha256,
            "converter_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "parameters": graph.num_parameters,
            "depthwise_rewrite": depthwise_rewrite,
            "files": {
                "onnxruntime": {"fp32": ONNX_FILE},
                "openvino": {"fp32": ir["fp32"], "fp16": ir["fp16"]},
                "openvino_static": {"fp32": ir["static_fp32"]},
                "litert": tflite,
            },
            "thresholds": {},
        }
        models.write_manifest(tmp, manifest)
        for path in (tmp, tmp / models.MANIFEST):   # temp files are private; a model dir is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest
