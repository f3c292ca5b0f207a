"""Which weights the bench measures, found without touching the network.

Order: ``--weights PATH`` > ``$SFPN_EDGE_WEIGHTS`` > the default model in the cache
(``sfpn-edge fetch-weights``) > the same architecture with deterministic synthetic weights.
A path may be a converted model directory or the authors' ``.mat`` (converted on the fly into
the cache, reused next time). Synthetic weights are good for latency and memory only.

Model directories the bench builds itself (converted ``.mat``, synthetic) also get int8 models
(ONNX Runtime, OpenVINO, the native engine's plan, LiteRT), calibrated on CFP images when the CFP set is
at hand, else on synthetic images (fine for latency, not for accuracy); the manifest records
which. Directories the user made are never modified.
"""
from __future__ import annotations

import os
import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sfpn_edge import cache, models
from sfpn_edge.errors import ModelError, SfpnError

ENV = "SFPN_EDGE_WEIGHTS"
SYNTHETIC_LABEL = "synthetic weights: latency and memory only"
SYNTHETIC_PREFIX = "synthetic-"  # manifest source_file of converters.synthetic models


@dataclass(frozen=True)
class ModelSource:
    model_dir: Path
    kind: str  # "authors", "custom" or "synthetic"
    origin: str  # where it was found, for the report
    notes: tuple = field(default=())

    @property
    def trained(self) -> bool:
        """Real trained weights: accuracy is meaningful."""
        return self.kind != "synthetic"

    @property
    def label(self) -> str:
        if self.kind == "synthetic":
            return SYNTHETIC_LABEL
        sha = models.load_manifest(self.model_dir)["source_sha256"]
        who = "authors' trained weights" if self.kind == "authors" else "custom weights"
        return f"{who} (source sha256 {sha[:12]})"

    def as_dict(self) -> dict:
        manifest = models.load_manifest(self.model_dir)
        return {"kind": self.kind, "label": self.label, "origin": self.origin, "model_dir": str(self.model_dir),
                "variant": manifest["variant"], "source_sha256": manifest["source_sha256"],
                "input_size": manifest["input_size"], "calibration": manifest.get("calibration")}


def _kind(model_dir: Path) -> str:
    manifest = models.load_manifest(model_dir)
    if str(manifest.get("source_file", "")).startswith(SYNTHETIC_PREFIX):
        return "synthetic"
    return "authors" if manifest["source_sha256"] == models.WEIGHTS_SHA256 else "custom"


def converted_mat(mat: Path) -> Path:
    """The model directory for ``mat`` in the cache, converting it the first time."""
    sha = cache.sha256_file(mat)
    dest = cache.home() / "bench" / f"converted-{sha[:16]}"
    try:
        if models.load_manifest(dest)["source_sha256"] == sha:
            return dest
    except ModelError:
        pass
    try:
        from sfpn_edge.converters.convert import convert
    except ImportError as exc:
        raise SfpnError(f"converting {mat.name} needs the convert extra (pip install 'sfpn-edge[convert]'): "
                        f"{exc}") from None
    convert(mat, dest, source_name=mat.name)
    return dest


CALIBRATION_IMAGES = 200


def calibration_crops(model_dir: Path, cfp_root: Optional[Path]) -> tuple:
    """(crops float32 [N, 3, h, w], source text) for int8 calibration."""
    from sfpn_edge.converters import calibration_data

    manifest = models.load_manifest(model_dir)
    if cfp_root is not None:
        samples = calibration_data.cfp_calibration_samples(cfp_root, CALIBRATION_IMAGES)
        crops = calibration_data.calibration_crops(samples, manifest["input_size"][0], manifest["mean"])
        return crops, f"CFP fiducial-box crops (+30 %), {len(crops)} images (bench)"
    from sfpn_edge.bench.measure import probe_batch

    return probe_batch(64, tuple(manifest["input_size"]), seed=99), "synthetic images (64, bench): latency only"


def ensure_int8(model_dir: Path, cfp_root: Optional[Path], progress: bool = True) -> tuple:
    """Add int8 models to a bench-owned ``model_dir`` unless present with the same calibration
    (``progress``: a line per int8 model on stderr). Returns report notes (empty on success).
    """
    manifest = models.load_manifest(model_dir)
    quantized = ("onnxruntime", "openvino", "native") + (("litert",) if "litert" in manifest["files"] else ())
    has_int8 = all("int8" in manifest["files"].get(b, {}) for b in quantized)
    want = "CFP" if cfp_root is not None else "synthetic"
    if has_int8 and str(manifest.get("calibration", {}).get("source", "")).startswith(want):
        return ()
    try:
        from sfpn_edge.converters.calibration_data import CalibrationSet
        from sfpn_edge.converters.quantize import quantize_model_dir

        crops, source = calibration_crops(model_dir, cfp_root)
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
            quantize_model_dir(model_dir, CalibrationSet(crops, {"scheme": want.lower(), "source": source}),
                               progress=progress)
    except (ImportError, SfpnError, ValueError) as exc:
        return (f"int8 models could not be built: {exc}",)
    return ()


def from_path(path: Path, origin: str, cfp_root: Optional[Path] = None, progress: bool = True) -> ModelSource:
    path = Path(path).expanduser()
    if path.is_dir():
        return ModelSource(path, _kind(path), origin)
    if path.is_file() and path.suffix.lower() == ".mat":
        model_dir = converted_mat(path)
        return ModelSource(model_dir, _kind(model_dir), f"{origin}, converted into {model_dir}",
                           ensure_int8(model_dir, cfp_root, progress))
    raise ModelError(f"{path}: expected a converted model directory or a MATLAB .mat file ({origin})")


def synthetic_dir() -> Path:
    """The synthetic-weights model directory in the cache, built once (deterministic)."""
    dest = cache.home() / "bench" / "synthetic-dwc"
    try:
        if _kind(dest) == "synthetic":
            return dest
    except ModelError:
        pass
    try:
        from sfpn_edge.converters.synthetic import write_synthetic_model
    except ImportError as exc:
        raise SfpnError(f"building the synthetic model needs the convert extra (pip install "
                        f"'sfpn-edge[convert]'): {exc}") from None
    write_synthetic_model(dest, "dwc")
    return dest


def resolve(weights: Optional[str] = None, cfp_root: Optional[Path] = None, progress: bool = True) -> ModelSource:
    """Pick the model to measure (see the module docstring); ``cfp_root`` calibrates int8;
    ``progress``: quantization reports on stderr."""
    if weights:
        return from_path(Path(weights), "--weights", cfp_root, progress)
    if os.environ.get(ENV):
        return from_path(Path(os.environ[ENV]), f"${ENV}", cfp_root, progress)
    default = models.default_model_dir()
    try:
        models.load_manifest(default)
        return ModelSource(default, _kind(default), f"cache {default}")
    except ModelError:
        pass
    model_dir = synthetic_dir()
    # Synthetic weights measure latency only: calibrate int8 on synthetic images, no data needed.
    return ModelSource(model_dir, "synthetic", f"no trained weights found (run `sfpn-edge fetch-weights`); "
                                               f"built in {model_dir}", ensure_int8(model_dir, None, progress))
