"""Converted model directories: manifest schema, file lookup, default location, the weights' source.

A model directory holds ``model.onnx``, OpenVINO ``model.xml/.bin`` (+ precision variants) and
``manifest.json``. The manifest is read within size and depth limits and records the sha256 of
every model file it lists (``file_sha256``, written by ``write_manifest``); ``model_file`` checks a
file against it before a backend opens it (once per process while the file's size and mtime stay
the same). This module is on the runtime path; fetching and converting the weights is
``sfpn_edge.converters.fetch``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from sfpn_edge import bounded_read, cache
from sfpn_edge.errors import ModelError, SfpnError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_MODEL = "squeezefaceposenet-dwc"
DIGESTS = "file_sha256"
CALIBRATION_KEY = "descriptor_calibration"  # its ``baked`` files are model files too
INT8_GATE_KEY = "int8_gate"  # written by converters.int8_gate, read by ModelDir.int8_gate
MANIFEST_MAX_BYTES = 1 << 20
MANIFEST_MAX_DEPTH = 16

# The authors' trained DWC model (MIT), pinned to the commit that added it to their repository.
WEIGHTS_FILE = "SqueezeFacePoseNet_with_separable_DWC.mat"
WEIGHTS_URL = ("https://raw.githubusercontent.com/HalmstadUniversityBiometrics/"
               "SqueezeFacePoseNet-Lightweight-Face-Recognition/"
               "e8ab9430a423afc53a5e7a480fd9ab0c2f984f76/" + WEIGHTS_FILE)
WEIGHTS_SHA256 = "c90f1bbdee9e75f475063591764da7fd102da5521a079c0daedc029175533cce"

PathLike = Union[str, Path]



def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _digests(v: Any) -> bool:
    return all(isinstance(k, str) and isinstance(d, str) and len(d) == 64 for k, d in v.items())


# key -> (type(s), check, what): the manifest schema.
_SCHEMA = {
    "format_version": (int, lambda v: v >= 1, "a positive integer"),
    "variant": (str, bool, "a non-empty string"),
    "input_size": (list, lambda v: len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v), "[h, w]"),
    "mean": (list, lambda v: len(v) == 3 and all(_finite(x) and 0 <= x <= 255 for x in v), "[R, G, B] in [0, 255]"),
    "colour_order": (str, lambda v: v in ("RGB", "BGR"), '"RGB" or "BGR"'),
    "crop_margin": ((int, float), lambda v: _finite(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "descriptor_dim": (int, lambda v: v > 0, "a positive integer"),
    "source_sha256": (str, lambda v: len(v) == 64, "a sha256 hex digest"),
    "converter_version": (str, bool, "a non-empty string"),
    "files": (dict, lambda v: all(isinstance(t, dict) for t in v.values()), "{backend: {precision: file}}"),
    "thresholds": (dict, lambda v: True, "an object"),
}
_OPTIONAL = {DIGESTS: (dict, _digests, "{file: sha256 hex digest}")}


def default_model_dir() -> Path:
    """Where ``fetch-weights`` stores the default model: <cache home>/models/squeezefaceposenet-dwc."""
    return cache.home() / "models" / DEFAULT_MODEL


def check_replaceable(out_dir: Path) -> None:
    """SfpnError unless ``out_dir`` is absent, empty or a model directory (never clobber what is not ours)."""
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file()):
        raise SfpnError(f"refusing to replace {out_dir}: it exists and is not a model directory")


def validate_manifest(manifest: Any, where: str = "manifest") -> Dict[str, Any]:
    """Return ``manifest`` if it follows the schema, else raise ModelError saying what is wrong."""
    if not isinstance(manifest, dict):
        raise ModelError(f"{where}: expected a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelError(f"{where}: format_version {version} is newer than this sfpn-edge understands "
                         f"({FORMAT_VERSION}); upgrade sfpn-edge or re-convert the model")
    for key, (types, check, what) in {**_SCHEMA, **_OPTIONAL}.items():
        if key not in manifest:
            if key in _OPTIONAL:
                continue
            raise ModelError(f"{where}: missing key '{key}'")
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            raise ModelError(f"{where}: '{key}' must be {what}, got {value!r}")
    return manifest


def load_manifest(model_dir: PathLike) -> Dict[str, Any]:
    """Read and validate ``<model_dir>/manifest.json``."""
    path = Path(model_dir) / MANIFEST
    try:
        manifest = bounded_read.read_json(path, max_bytes=MANIFEST_MAX_BYTES, max_depth=MANIFEST_MAX_DEPTH)
    except FileNotFoundError:
        hint = " (run `sfpn-edge fetch-weights` or `sfpn-edge convert`)" if not Path(model_dir).exists() else ""
        raise ModelError(f"{model_dir}: not a model directory, no {MANIFEST}{hint}") from None
    except bounded_read.LimitError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return validate_manifest(manifest, str(path))


def write_manifest(model_dir: PathLike, manifest: Dict[str, Any]) -> Path:
    """Record the sha256 of every listed model file present (in ``manifest`` too), validate, and
    atomically write ``manifest.json`` into ``model_dir``."""
    manifest[DIGESTS] = {name: cache.sha256_file(Path(model_dir) / name) for name in listed_files(manifest)
                         if (Path(model_dir) / name).is_file()}
    validate_manifest(manifest)
    path = Path(model_dir) / MANIFEST
    cache.atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return path


def listed_files(manifest: Dict[str, Any]) -> List[str]:
    """Every file the manifest points at: each backend's files (IR weights with their .xml) and
    the calibration's baked graphs."""
    names = [n for family in manifest.get("files", {}).values() if isinstance(family, dict)
             for n in family.values()]
    baked = (manifest.get(CALIBRATION_KEY) or {}).get("baked") or {}
    names += list(baked.values()) if isinstance(baked, dict) else []
    plain = [Path(n) for n in names if isinstance(n, str) and n and Path(n).name == n]
    return sorted({part.name for n in plain for part in _with_weights(n)})


def file_digests(manifest: Dict[str, Any], name: str) -> Dict[str, str]:
    """The recorded sha256 of model file ``name`` and, for an IR ``.xml``, of its ``.bin``."""
    digests = manifest.get(DIGESTS) or {}
    return {part.name: digests.get(part.name, "") for part in _with_weights(Path(name))}


def _with_weights(path: Path) -> tuple:
    """``path`` and, for an OpenVINO IR ``.xml``, the ``.bin`` that holds its weights."""
    return (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,)


_VERIFIED: Dict[tuple, str] = {}  # (path, device, inode, size, mtime) -> the sha256 it was checked against


def verify_file(path: Path, manifest: Dict[str, Any]) -> Path:
    """``path`` if its sha256 (with its .bin for IR) is the one ``manifest`` records, else
    ModelError. Manifests written before digests were recorded have none and are not checked."""
    digests = manifest.get(DIGESTS)
    if digests is None:
        return path
    for part in _with_weights(path):
        expected = digests.get(part.name)
        if expected is None:
            raise ModelError(f"{part}: the manifest records no sha256 for it; re-convert the model")
        info = os.stat(part)
        key = (str(part), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if _VERIFIED.get(key) == expected:
            continue
        actual = cache.sha256_file(part)
        if actual != expected:
            raise ModelError(f"{part}: sha256 {actual[:12]}… differs from the manifest's {expected[:12]}…: "
                             "the file was changed or damaged; run `sfpn-edge fetch-weights --force` or re-convert")
        _VERIFIED[key] = expected
    return path


def model_file(model_dir: PathLike, backend: str, precision: str = "fp32", *,
               manifest: Optional[Dict[str, Any]] = None) -> Path:
    """Path of the model file of family ``backend`` ("onnxruntime", "openvino", ...) and ``precision``,
    checked against the manifest's sha256 (``manifest``: the directory's already read manifest)."""
    manifest = load_manifest(model_dir) if manifest is None else manifest
    files = manifest["files"]
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
    return verify_file(path, manifest)
