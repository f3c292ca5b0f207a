"""Converted model directories: manifest schema, file lookup, default location, the weights' source.

A model directory holds ``model.onnx``, OpenVINO ``model.xml/.bin`` (+ precision variants) and
``manifest.json``. This module is on the runtime path; fetching and converting the weights is
``sfpn_edge.converters.fetch``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from sfpn_edge import cache
from sfpn_edge.errors import ModelError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_MODEL = "squeezefaceposenet-dwc"

# The authors' trained DWC model (MIT), pinned to the commit that added it to their repository.
WEIGHTS_FILE = "SqueezeFacePoseNet_with_separable_DWC.mat"
WEIGHTS_URL = ("https://raw.githubusercontent.com/HalmstadUniversityBiometrics/"
               "SqueezeFacePoseNet-Lightweight-Face-Recognition/"
               "e8ab9430a423afc53a5e7a480fd9ab0c2f984f76/" + WEIGHTS_FILE)
WEIGHTS_SHA256 = "c90f1bbdee9e75f475063591764da7fd102da5521a079c0daedc029175533cce"

PathLike = Union[str, Path]

# key -> (type(s), check, what): the manifest schema.
_SCHEMA = {
    "format_version": (int, lambda v: v >= 1, "a positive integer"),
    "variant": (str, bool, "a non-empty string"),
    "input_size": (list, lambda v: len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v), "[h, w]"),
    "mean": (list, lambda v: len(v) == 3 and all(isinstance(x, (int, float)) for x in v), "[R, G, B]"),
    "colour_order": (str, lambda v: v in ("RGB", "BGR"), '"RGB" or "BGR"'),
    "crop_margin": ((int, float), lambda v: v >= 0, "a non-negative number"),
    "descriptor_dim": (int, lambda v: v > 0, "a positive integer"),
    "source_sha256": (str, lambda v: len(v) == 64, "a sha256 hex digest"),
    "converter_version": (str, bool, "a non-empty string"),
    "files": (dict, lambda v: all(isinstance(t, dict) for t in v.values()), "{backend: {precision: file}}"),
    "thresholds": (dict, lambda v: True, "an object"),
}


def default_model_dir() -> Path:
    """Where ``fetch-weights`` stores the default model: <cache home>/models/squeezefaceposenet-dwc."""
    return cache.home() / "models" / DEFAULT_MODEL


def validate_manifest(manifest: Any, where: str = "manifest") -> Dict[str, Any]:
    """Return ``manifest`` if it follows the schema, else raise ModelError saying what is wrong."""
    if not isinstance(manifest, dict):
        raise ModelError(f"{where}: expected a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelError(f"{where}: format_version {version} is newer than this sfpn-edge understands "
                         f"({FORMAT_VERSION}); upgrade sfpn-edge or re-convert the model")
    for key, (types, check, what) in _SCHEMA.items():
        if key not in manifest:
            raise ModelError(f"{where}: missing key '{key}'")
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            raise ModelError(f"{where}: '{key}' must be {what}, got {value!r}")
    return manifest


def load_manifest(model_dir: PathLike) -> Dict[str, Any]:
    """Read and validate ``<model_dir>/manifest.json``."""
    path = Path(model_dir) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = " (run `sfpn-edge fetch-weights` or `sfpn-edge convert`)" if not Path(model_dir).exists() else ""
        raise ModelError(f"{model_dir}: not a model directory, no {MANIFEST}{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read ({exc})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return validate_manifest(manifest, str(path))


def write_manifest(model_dir: PathLike, manifest: Dict[str, Any]) -> Path:
    """Validate and atomically write ``manifest.json`` into ``model_dir``."""
    validate_manifest(manifest)
    path = Path(model_dir) / MANIFEST
    cache.atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return path


def model_file(model_dir: PathLike, backend: str, precision: str = "fp32", *,
               files: Optional[Dict[str, Any]] = None) -> Path:
    """Path of the model file of family ``backend`` ("onnxruntime", "openvino", ...) and ``precision``
    (``files``: the manifest's already read ``files`` entry)."""
    files = load_manifest(model_dir)["files"] if files is None else files
    if backend not in files:
        raise ModelError(f"{model_dir}: no model for backend '{backend}' (has: {', '.join(sorted(files))})")
    if precision not in files[backend]:
        have = ", ".join(sorted(files[backend]))
        raise ModelError(f"{model_dir}: no {precision} model for {backend} (has: {have})")
    name = files[backend][precision]
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelError(f"{model_dir}: manifest entry {name!r} for {backend}/{precision} must be a plain file name")
    path = Path(model_dir) / name
    if not path.is_file():
        raise ModelError(f"{model_dir}: manifest lists {name!r} for {backend}/{precision}, but the file is missing")
    return path
