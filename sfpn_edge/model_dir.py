"""ModelDir: one converted model directory, its manifest read and validated once.

    model = ModelDir()                                  # the cache's default model (fetch-weights)
    model.file("openvino", "int8")                      # the file a backend opens for a precision
    model.crop_spec("mtcnn")                            # size, mean, margin and shift measured for MTCNN
    model.operating_points("mtcnn", flip=False).at(1e-3)
    model.calibration()                                 # the stored descriptor calibration, or None

Everything the runtime needs to know about a model directory is asked here; the manifest's schema
and atomic writes live in ``sfpn_edge.models``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from sfpn_edge import align, models, thresholds
from sfpn_edge.backends import registry
from sfpn_edge.errors import ModelError

FIDUCIAL_MARGIN = 0.30
"""The authors' framing for dataset landmarks: the tight face box enlarged by 30 % (DESIGN.md §1)."""

PathLike = Union[str, Path]


class ModelDir:
    """A model directory (``manifest.json`` + model files), validated on construction."""

    def __init__(self, path: Optional[PathLike] = None):
        self.path = Path(path) if path is not None else models.default_model_dir()
        self.manifest: Dict[str, Any] = models.load_manifest(self.path)

    @classmethod
    def of(cls, model: Union["ModelDir", PathLike, None]) -> "ModelDir":
        """``model`` if it already is a ModelDir, else the directory at that path (None: the default)."""
        return model if isinstance(model, ModelDir) else cls(model)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    # -- facts ------------------------------------------------------------------------------

    @property
    def source_sha256(self) -> str:
        return self.manifest["source_sha256"]

    @property
    def descriptor_dim(self) -> int:
        return int(self.manifest["descriptor_dim"])

    @property
    def input_size(self) -> tuple:
        return tuple(int(v) for v in self.manifest["input_size"])

    @property
    def mean(self) -> tuple:
        return tuple(float(v) for v in self.manifest["mean"])

    # -- files ------------------------------------------------------------------------------

    def file(self, backend: str, precision: str = "fp32", device: str = "CPU") -> Path:
        """The file ``backend`` opens for ``precision`` on ``device`` (the registry's rule: e.g.
        NPUs take the static-batch IR when there is one, OpenVINO bf16 is a hint on the fp32 IR)."""
        files = self.manifest["files"]
        keys = registry.get(backend).file_keys(precision, device)
        for family, prec in keys:
            if prec in files.get(family, {}):
                return models.model_file(self.path, family, prec, manifest=self.manifest)
        family = keys[-1][0]
        if family not in files:
            raise ModelError(f"{self.path}: no model for backend '{backend}' (has: {', '.join(sorted(files))})")
        have = ", ".join(sorted(files[family]))
        raise ModelError(f"{self.path}: no {precision} model for {backend} (has: {have})")

    def int8_gate(self) -> Dict[str, str]:
        """Why each backend's int8 file may or may not run under ``--precision auto``: backend ->
        "" when its gate passed (``converters.int8_gate``, measured when the file was written) and
        the file is still the one measured, else the reason it is not used."""
        gate = self.manifest.get(models.INT8_GATE_KEY)
        gate = gate if isinstance(gate, dict) and isinstance(gate.get("backends"), dict) else {}
        out = {}
        for backend, family in self.manifest["files"].items():
            if not isinstance(family, dict) or "int8" not in family:
                continue
            entry = gate["backends"].get(backend) if gate else None
            if not isinstance(entry, dict):
                out[backend] = (f"the {backend} int8 file has no accuracy gate recorded (written by an older "
                                "sfpn-edge: `sfpn-edge fetch-weights --force` measures it)")
            elif entry.get("sha256") != models.file_digests(self.manifest, family["int8"]):
                out[backend] = f"the {backend} int8 file changed after its accuracy gate was measured"
            elif entry.get("passed") is not True:
                out[backend] = f"the {backend} int8 file failed its accuracy gate ({_gate_text(entry, gate)})"
            else:
                out[backend] = ""
        return out

    # -- framing and decisions --------------------------------------------------------------

    def margin(self, detector: str = thresholds.DEFAULT_DETECTOR) -> float:
        """The box margin for faces from ``detector`` ("fiducials" for dataset landmarks): the
        manifest's ``crop_margins`` entry, else ``crop_margin`` (measured for MTCNN), else the
        detector's declared default."""
        own = self.manifest.get("crop_margins") or {}
        if detector in own:
            return float(own[detector])
        if detector == "fiducials":
            return FIDUCIAL_MARGIN
        if detector == thresholds.DEFAULT_DETECTOR:
            return float(self.manifest["crop_margin"])
        from sfpn_edge.detect import registry as detectors

        declared = detectors.get(detector).margin if detector in detectors.names() else None
        return float(self.manifest["crop_margin"] if declared is None else declared)

    def shift(self, detector: str = thresholds.DEFAULT_DETECTOR) -> float:
        """How far the crop's centre moves down from the box centre for faces from ``detector``, in
        crop sides: the manifest's ``crop_shifts`` entry, else the detector's declared shift, else 0."""
        own = self.manifest.get("crop_shifts") or {}
        if detector in own:
            return float(own[detector])
        from sfpn_edge.detect import registry as detectors

        return detectors.get(detector).shift if detector in detectors.names() else 0.0

    def crop_spec(self, detector: str = thresholds.DEFAULT_DETECTOR, margin: Optional[float] = None) -> align.CropSpec:
        """How this model frames faces from ``detector`` (``margin`` overrides the measured one)."""
        spec = align.CropSpec(self.input_size[0], self.mean, 0.0)
        return spec.with_margin(self.margin(detector) if margin is None else margin).with_shift(self.shift(detector))

    def operating_points(self, detector: str = thresholds.DEFAULT_DETECTOR, flip: bool = False,
                         calibration=None) -> thresholds.OperatingPoints:
        """Measured thresholds for raw descriptors, or for ``calibration``'s descriptors when given."""
        if calibration is not None:
            return thresholds.for_calibration(calibration.operating_points, detector=detector, flip=flip)
        return thresholds.for_model(self.manifest, detector=detector, flip=flip)

    def calibration(self):
        """The descriptor calibration stored with this model, or None."""
        from sfpn_edge.calibration import load_calibration

        return load_calibration(self.path, self.manifest, own=True)


def _gate_text(entry: dict, gate: dict) -> str:
    if "mean_cosine" not in entry:
        return str(entry.get("reason", "not measured"))
    return (f"mean cosine to fp32 {entry['mean_cosine']:.4f}, min {entry['min_cosine']:.4f}; "
            f"rule: {gate.get('rule', '?')}")
