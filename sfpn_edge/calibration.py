"""Descriptor calibration: a stored affine map fitted on the deployment's own faces.

    cal = load_calibration(model_dir)        # None when the model directory has none
    desc = cal.apply(desc)                   # [N, 1000] -> [N, K], both L2-normalised

The map is ``l2n((l2n(x) - mean) @ projection)``: descriptors are normalised (as every code path
here produces them), centred on the mean descriptor of the calibration faces, projected (PCA,
WCCN or LDA; none for plain centring) and normalised again, so cosine scoring is unchanged.

Storage, beside the model: the manifest's ``descriptor_calibration`` entry (method, dims,
provenance, operating thresholds, ``files``) plus sidecar ``.npy`` arrays read with
``allow_pickle=False``. A standalone calibration directory holds the same entry as
``calibration.json``. A calibration is bound to the weights it was fitted for (``model_sha256``
= the manifest's ``source_sha256``); using it with other weights raises ModelError.
Fitting lives in ``sfpn_edge.fitting``; this module is numpy only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from sfpn_edge import bounded_read, cache, models
from sfpn_edge.errors import ModelError

MANIFEST_KEY = models.CALIBRATION_KEY
STANDALONE = "calibration.json"
MEAN_FILE = "calibration_mean.npy"
PROJECTION_FILE = "calibration_projection.npy"
METHODS = ("center", "pca", "wccn", "lda")
FORMAT_VERSION = 1

PathLike = Union[str, Path]


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    """``mean`` float32 [D]; ``projection`` float32 [D, K] or None (centring only)."""

    method: str
    mean: np.ndarray
    projection: Optional[np.ndarray]
    info: Dict[str, Any] = field(default_factory=dict)  # provenance: counts, dims, source, date, ...
    operating_points: List[Dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ModelError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        mean = self.mean
        if not isinstance(mean, np.ndarray) or mean.ndim != 1 or mean.dtype != np.float32 or not mean.size:
            raise ModelError("calibration mean must be a float32 vector")
        p = self.projection
        if p is not None and (not isinstance(p, np.ndarray) or p.dtype != np.float32 or p.ndim != 2
                              or p.shape[0] != mean.size or not 0 < p.shape[1] <= mean.size):
            raise ModelError(f"calibration projection must be float32 [{mean.size}, K], "
                             f"got {getattr(p, 'dtype', type(p).__name__)} {getattr(p, 'shape', '')}")
        for name, array in (("mean", mean), ("projection", p)):
            if array is not None and not np.isfinite(array).all():
                raise ModelError(f"calibration {name} holds NaN or infinity")

    @property
    def dim_in(self) -> int:
        return int(self.mean.size)

    @property
    def dim_out(self) -> int:
        return self.dim_in if self.projection is None else int(self.projection.shape[1])

    @property
    def model_sha256(self) -> Optional[str]:
        return self.info.get("model_sha256")

    @property
    def digest(self) -> str:
        """sha256 of the method and arrays: identifies the descriptor space (galleries bind to it)."""
        h = hashlib.sha256(self.method.encode())
        for array in (self.mean, self.projection):
            if array is not None:
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    def apply(self, desc: np.ndarray) -> np.ndarray:
        """Calibrated, L2-normalised descriptors [N, K] for descriptors [N, D] (or [D] -> [K])."""
        x = np.asarray(desc)
        if x.shape[-1:] != (self.dim_in,) or x.ndim not in (1, 2):
            raise ValueError(f"expected descriptors [N, {self.dim_in}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("descriptors contain NaN or infinity")
        y = l2n(x) - self.mean
        if self.projection is not None:
            y = y @ self.projection
        return l2n(y)

    def check_model(self, manifest: Dict[str, Any], where: str = "calibration") -> None:
        """ModelError unless this calibration was made for the weights and size of ``manifest``."""
        want = manifest.get("source_sha256")
        if self.model_sha256 != want:
            raise ModelError(f"{where} was made for another model (weights sha256 {str(self.model_sha256)[:12]}…, "
                             f"this model {str(want)[:12]}…); recalibrate with `sfpn-edge calibrate`")
        if int(manifest.get("descriptor_dim", -1)) != self.dim_in:
            raise ModelError(f"{where} expects {self.dim_in}-d descriptors, the model makes "
                             f"{manifest.get('descriptor_dim')}-d ones")

    def summary(self) -> Dict[str, Any]:
        """What evaluation and pipeline outputs record about the calibration in use."""
        keys = ("source", "images", "identities", "crop", "flip", "shrinkage", "pca_dim", "created")
        return {"method": self.method, "dim_in": self.dim_in, "dim_out": self.dim_out,
                "digest": self.digest[:16], **{k: self.info[k] for k in keys if k in self.info}}

    def entry(self) -> Dict[str, Any]:
        """The JSON entry stored in the manifest (arrays go to the sidecar files it names)."""
        files = {"mean": MEAN_FILE}
        if self.projection is not None:
            files["projection"] = PROJECTION_FILE
        return {"format_version": FORMAT_VERSION, "method": self.method, "dim_in": self.dim_in,
                "dim_out": self.dim_out, "digest": self.digest, **self.info,
                "operating_points": self.operating_points, "files": files}


def save_calibration(calibration: Calibration, dest: PathLike, *, baked: Optional[Dict[str, Any]] = None) -> Path:
    """Store ``calibration`` in ``dest``: a model directory (manifest entry; its weights must match)
    or any other directory (``calibration.json``). Arrays are written first, the JSON last."""
    dest = Path(dest)
    is_model = (dest / models.MANIFEST).is_file()
    if is_model:
        manifest = models.load_manifest(dest)
        calibration.check_model(manifest, "this calibration")
    else:
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"cannot create {dest}: {exc.strerror or exc}") from None
    entry = calibration.entry()
    if baked:
        entry["baked"] = baked
    try:
        _write_npy(dest / MEAN_FILE, calibration.mean)
        if calibration.projection is not None:
            _write_npy(dest / PROJECTION_FILE, calibration.projection)
        else:
            (dest / PROJECTION_FILE).unlink(missing_ok=True)
        if is_model:
            stale = set(((manifest.get(MANIFEST_KEY) or {}).get("baked") or {}).values()) - set((baked or {}).values())
            manifest[MANIFEST_KEY] = entry
            path = models.write_manifest(dest, manifest)
            for name in stale:  # graphs baked with the previous calibration
                if Path(name).name == name:
                    for old in (dest / name, (dest / name).with_suffix(".bin")):
                        old.unlink(missing_ok=True)
            return path
        cache.atomic_write_bytes(dest / STANDALONE, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise ModelError(f"cannot write the calibration to {dest}: {exc.strerror or exc}") from None
    return dest / STANDALONE


def _write_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    cache.atomic_write_bytes(path, buf.getvalue())


def read_entry(path: PathLike, manifest: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The calibration entry in a model directory or calibration directory, or None if it has none
    (``manifest``: the model directory's manifest when the caller has already read it)."""
    path = Path(path)
    if (path / models.MANIFEST).is_file():
        return (models.load_manifest(path) if manifest is None else manifest).get(MANIFEST_KEY)
    if (path / STANDALONE).is_file():
        try:
            return bounded_read.read_json(path / STANDALONE, max_bytes=models.MANIFEST_MAX_BYTES,
                                          max_depth=models.MANIFEST_MAX_DEPTH)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path / STANDALONE}: unreadable calibration ({exc})") from None
    if not path.is_dir():
        raise ModelError(f"{path}: no such calibration or model directory")
    return None


def load_calibration(path: PathLike, manifest: Optional[Dict[str, Any]] = None, *,
                     own: bool = False) -> Optional[Calibration]:
    """The calibration stored in ``path`` (model or calibration directory), None if there is none.

    With ``manifest`` (the model that will use it) a calibration for other weights is refused;
    ``own``: ``path`` is the model directory ``manifest`` was read from (it is not read again).
    """
    path = Path(path)
    entry = read_entry(path, manifest if own else None)
    if entry is None:
        return None
    where = f"calibration in {path}"
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        raise ModelError(f"{where}: malformed entry (no 'files')")
    check_entry_version(entry, where)
    files = entry["files"]
    mean = _read_npy(path, files.get("mean"), where)
    projection = _read_npy(path, files["projection"], where) if files.get("projection") else None
    cal = from_entry(entry, mean, projection, where)
    if manifest is not None:
        cal.check_model(manifest, where)
    return cal


def check_entry_version(entry: Dict[str, Any], where: str) -> None:
    """ModelError unless ``entry``'s format version is one this sfpn-edge reads."""
    version = entry.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{where}: format_version {version!r} is not one this sfpn-edge understands "
                         f"({FORMAT_VERSION}); upgrade sfpn-edge or recalibrate")


def from_entry(entry: Dict[str, Any], mean: np.ndarray, projection: Optional[np.ndarray], where: str) -> Calibration:
    """The Calibration an ``entry()`` and its arrays describe; ModelError if they disagree (digest)."""
    skip = {"format_version", "method", "dim_in", "dim_out", "digest", "operating_points", "files", "baked"}
    cal = Calibration(str(entry.get("method")), mean, projection,
                      {k: v for k, v in entry.items() if k not in skip}, list(entry.get("operating_points") or []))
    if entry.get("digest") not in (None, cal.digest):
        raise ModelError(f"{where}: the arrays do not match the manifest entry (digest differs); "
                         "the files were changed or mixed up: recalibrate")
    return cal


def _read_npy(folder: Path, name: Any, where: str) -> np.ndarray:
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelError(f"{where}: file entry {name!r} must be a plain file name")
    try:
        array = np.load(folder / name, allow_pickle=False)
    except FileNotFoundError:
        raise ModelError(f"{where}: missing {name}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{where}: cannot read {name} ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise ModelError(f"{where}: {name} must hold a float32 array")
    return array


def baked_file(model_dir: PathLike, backend: str) -> Optional[Path]:
    """The model file with the calibration folded in for ``backend`` (fp32), if one was baked."""
    manifest = models.load_manifest(model_dir)
    name = ((manifest.get(MANIFEST_KEY) or {}).get("baked") or {}).get(backend)
    if not name:
        return None
    path = Path(model_dir) / name
    if Path(name).name != name or not path.is_file():
        raise ModelError(f"{model_dir}: the calibration lists baked file {name!r}, but it is missing")
    return models.verify_file(path, manifest)


def resolve_calibration(calibration: Union[bool, None, PathLike, Calibration], model_dir: PathLike,
                        manifest: Dict[str, Any]) -> Optional[Calibration]:
    """The calibration a pipeline should use: True = the model directory's own (if any),
    False/None = none, a path = the one stored there (must exist), or a ``Calibration``."""
    if calibration is None or calibration is False:
        return None
    if calibration is True:
        return load_calibration(model_dir, manifest, own=True)
    if isinstance(calibration, Calibration):
        calibration.check_model(manifest)
        return calibration
    found = load_calibration(calibration, manifest)
    if found is None:
        raise ModelError(f"{calibration}: holds no calibration (run `sfpn-edge calibrate`)")
    return found


def gallery_key(model_sha256: str, calibration: Optional[Calibration]) -> str:
    """What a gallery is bound to: the weights, and the calibration when descriptors are calibrated."""
    if calibration is None:
        return model_sha256
    return hashlib.sha256(f"{model_sha256}+calibration:{calibration.digest}".encode()).hexdigest()
