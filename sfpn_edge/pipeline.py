"""FaceVerifier: photos in, decision out (decode -> detect -> crop -> embed -> score).

    verifier = FaceVerifier()                          # default model, MTCNN, FAR = 1e-3
    result = verifier.verify("a.jpg", "b.jpg")
    result.same, result.score, result.threshold, result.timings_ms

Face policy, per image: the detector runs on the image, then (if it found nothing) on a copy
with a 25 % border, which finds faces that fill the whole frame. No face at all raises
``ImageError("<image>: no face found")``. Several faces: the largest box is used
(``face_policy="largest"``, the default) or ``ImageError`` is raised (``face_policy="error"``).

Crop: a square of side max(w, h) of the detector box, enlarged by ``margin`` (default: the
model manifest's ``crop_margin``, 0.10 for our MTCNN boxes), centred, warped to the model's input
size by the alignment kernel; with ``flip=True`` the mirrored crop is embedded too and the two
descriptors are summed. ``crop_faces`` / ``FaceVerifier.embed_faces`` are the same code path the
CFP end-to-end evaluation calls, so its numbers measure this pipeline.

Decision threshold (cosine, same person when ``score >= threshold``), first match wins:
``threshold=`` a raw score; else the operating point at ``far=`` (default 1e-3) from the
manifest's measured ``thresholds`` (see ``operating_points``); else, for the authors' DWC
weights, the built-in points measured below; else ModelError asking for a threshold.

Calibration: when the model directory holds one (``sfpn-edge calibrate``; ``calibration=`` picks
another or turns it off), descriptors are calibrated after flip averaging and normalisation, the
operating points come from the calibration only, and galleries bind to weights + calibration.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sfpn_edge import align, models
from sfpn_edge.calibration import Calibration, gallery_key, resolve_calibration
from sfpn_edge.detect import Detector, Face, check_image
from sfpn_edge.detect.policy import Detection, find_face
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ImageError, ModelError, SfpnError
from sfpn_edge.io import ImageSource, read_image
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.score import cosine_pairs

DEFAULT_FAR = 1e-3
FACE_POLICIES = ("largest", "error")
RETRY_PAD = 0.25  # border added when the detector finds nothing (tight crops such as CFP)
STAGES = ("decode", "detect", "crop", "embed", "score")

# Fallback operating points (cosine thresholds at false-accept rates) for the authors' DWC
# weights when the manifest has none: this module's MTCNN pipeline (margin 0.10, fp32 ONNX
# Runtime), CFP-FP, all 7,000 pairs (3,500 impostors: FAR 1e-3 rests on ~4 of them); threshold =
# lowest score whose FAR does not exceed the target (sfpn_edge.evaluate.metrics.tar_at_far).
# Same run: 10-fold accuracy FF 96.57 / FP 87.43 % raw, 96.60 / 88.06 % with flip. Produced by
#   python benchmarks/measure_pipeline.py --cfp ../shared/data/cfp --model DIR --cache /tmp/cfp_faces.npz
BUILTIN_OPERATING_POINTS: Dict[str, Dict[bool, Dict[float, float]]] = {
    models.WEIGHTS_SHA256: {
        False: {1e-3: 0.8506, 2e-3: 0.8461, 5e-3: 0.8384, 1e-2: 0.8308, 2e-2: 0.8240, 5e-2: 0.8123,
                1e-1: 0.8037},
        True: {1e-3: 0.8581, 2e-3: 0.8500, 5e-3: 0.8447, 1e-2: 0.8371, 2e-2: 0.8297, 5e-2: 0.8158,
               1e-1: 0.8077},
    },
}


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold, the false-accept rate it was measured at (None if unknown), and its origin."""

    threshold: float
    far: Optional[float]
    source: str


@dataclass(frozen=True)
class FaceFound:
    """The face used in one image: the detection, how it was found, how many faces there were."""

    face: Face
    how: str  # "detected" or "padded" (found after adding a border)
    n_faces: int

    def to_dict(self) -> dict:
        return {**self.face.to_dict(), "found": self.how, "faces_in_image": self.n_faces}


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``FaceVerifier.verify``; ``same`` is ``score >= threshold``."""

    score: float
    same: bool
    threshold: float
    far: Optional[float]
    threshold_source: str
    faces: Tuple[FaceFound, FaceFound]
    timings_ms: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "score": round(self.score, 6),
            "same": self.same,
            "threshold": round(self.threshold, 6),
            "far": self.far,
            "threshold_source": self.threshold_source,
            "faces": [f.to_dict() for f in self.faces],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


def crop_faces(images: Sequence[np.ndarray], faces: Sequence[Face], *, margin: float, size: int,
               mean: Sequence[float], flip: bool = False, threads: Optional[int] = None) -> np.ndarray:
    """Model-ready crops float32 [N, 3, size, size] for ``faces[i]`` in ``images[i]`` (BGR uint8).

    Each crop is the square of side max(w, h) of the face box enlarged by ``margin``; with
    ``flip`` the N mirrored crops follow the N originals ([2N, ...]).
    """
    if len(images) != len(faces):
        raise ValueError(f"{len(images)} images for {len(faces)} faces")
    slots: Dict[int, int] = {}  # each distinct image is passed to the kernel once
    distinct: List[np.ndarray] = []
    for image in images:
        if id(image) not in slots:
            slots[id(image)] = len(distinct)
            distinct.append(image)
    index = np.array([slots[id(im)] for im in images], np.int64)
    matrices = [align.box_matrix(face.box, margin, size) for face in faces]
    if flip:
        matrices += [align.hflip_matrix(m, size) for m in matrices]
        index = np.concatenate([index, index])
    return align.crop_batch(distinct, np.stack(matrices), image_index=index, size=size, mean=mean,
                            channel_order="BGR", threads=threads)


class FaceVerifier:
    """Detector + SqueezeFacePoseNet embedder + a decision threshold, from one model directory."""

    def __init__(
        self,
        model_dir: Optional[Union[str, Path]] = None,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        *,
        device: str = "CPU",
        threads: Optional[int] = None,
        detector: Optional[Detector] = None,
        margin: Optional[float] = None,
        flip: bool = False,
        face_policy: str = "largest",
        threshold: Optional[float] = None,
        far: Optional[float] = None,
        calibration: Union[bool, str, Path, Calibration] = True,
    ):
        if face_policy not in FACE_POLICIES:
            raise SfpnError(f"face_policy must be one of {FACE_POLICIES}, got {face_policy!r}")
        if threshold is not None and far is not None:
            raise SfpnError("give a threshold or a FAR, not both")
        self.embedder = FaceEmbedder(model_dir, backend, precision, device, threads)
        # True: the model directory's calibration when it has one (descriptors and thresholds).
        self.calibration = resolve_calibration(calibration, self.embedder.model_dir, self.embedder.manifest)
        if detector is None:
            from sfpn_edge.detect.mtcnn import MTCNN

            detector = MTCNN(backend=backend, device=device, threads=threads)
        self.detector = detector
        self.margin = float(self.embedder.manifest["crop_margin"] if margin is None else margin)
        if not 0.0 <= self.margin <= 2.0:
            raise SfpnError(f"margin must be in [0, 2], got {margin!r}")
        self.flip = bool(flip)
        self.face_policy = face_policy
        self.threads = threads
        self._threshold = None if threshold is None else _check_threshold(threshold)
        self._far = DEFAULT_FAR if far is None else _check_far(far)
        self._operating_point: Optional[OperatingPoint] = None

    # -- model facts -----------------------------------------------------------------------

    @property
    def model_sha256(self) -> str:
        """sha256 of the weights the model was converted from (combined with the calibration's
        digest when calibrated): what a gallery is bound to."""
        return gallery_key(self.embedder.manifest["source_sha256"], self.calibration)

    @property
    def descriptor_dim(self) -> int:
        return self.calibration.dim_out if self.calibration else self.embedder.descriptor_dim

    @property
    def calibration_info(self) -> Optional[dict]:
        """What outputs record about the calibration in use (None: raw descriptors)."""
        return self.calibration.summary() if self.calibration else None

    @property
    def operating_point(self) -> OperatingPoint:
        """The decision threshold in use (resolved on first use: ModelError if none is known)."""
        if self._operating_point is None:
            self._operating_point = (OperatingPoint(self._threshold, None, "given threshold")
                                     if self._threshold is not None else self.threshold_at(self._far))
        return self._operating_point

    @property
    def threshold(self) -> float:
        return self.operating_point.threshold

    def threshold_at(self, far: float) -> OperatingPoint:
        """The operating point at false-accept rate ``far`` for this model and flip setting."""
        far = _check_far(far)
        if self.calibration is not None:
            points, origin = operating_points({"thresholds": {"operating_points": self.calibration.operating_points}},
                                              self.flip)
            origin = origin.replace("manifest", "calibration")
            if not points:
                raise ModelError(f"the calibration of {self.embedder.model_dir} has no thresholds for detector "
                                 f"crops with flip={self.flip}; run `sfpn-edge calibrate --thresholds` (with the "
                                 "same --flip) or give a raw threshold (--threshold)")
        else:
            points, origin = operating_points(self.embedder.manifest, self.flip)
        if not points:
            raise ModelError(
                f"{self.embedder.model_dir}: no measured operating points for this model "
                f"(flip={self.flip}); give a raw threshold (--threshold) or measure them with `sfpn-edge eval`")
        measured_at = float(self.embedder.manifest["crop_margin"])
        if not math.isclose(self.margin, measured_at):
            origin += f"; measured at crop margin {measured_at:g}, this verifier uses {self.margin:g}"
        return _interpolate(points, far, origin)

    def describe(self) -> dict:
        return {
            "model": self.embedder.describe(),
            "detector": type(self.detector).__name__,
            "margin": self.margin,
            "flip": self.flip,
            "face_policy": self.face_policy,
            "threshold": self._threshold,
            "far": None if self._threshold is not None else self._far,
            "calibration": self.calibration_info,
        }

    # -- stages ----------------------------------------------------------------------------

    def load(self, image: Union[ImageSource, np.ndarray], label: Optional[str] = None) -> np.ndarray:
        """A uint8 BGR image from a path, encoded bytes or an already decoded array."""
        if isinstance(image, np.ndarray):
            return check_image(image)
        return read_image(image, label)

    def find_face(self, image: np.ndarray, label: str = "image") -> FaceFound:
        """The face to use in ``image`` under this verifier's face policy (see module docs)."""
        try:
            det: Detection = find_face(self.detector, image, retry_pad=RETRY_PAD, fallback="error",
                                       pick="largest")
        except ImageError:
            raise ImageError(f"{label}: no face found") from None
        if det.n_faces > 1 and self.face_policy == "error":
            raise ImageError(f"{label}: {det.n_faces} faces found, expected one (face policy 'error')")
        return FaceFound(det.face, det.source, det.n_faces)

    def crop(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """``crop_faces`` with this verifier's margin, flip, model input size and mean."""
        return crop_faces(images, faces, margin=self.margin, size=self.embedder.input_size[0],
                          mean=self.embedder.mean, flip=self.flip, threads=self.threads)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised descriptors of ``crop`` output (mirrored halves summed when flipping)."""
        desc = self.embedder.embed(crops)
        if self.flip:
            half = len(desc) // 2
            desc = desc[:half] + desc[half:]
        desc = l2_normalize(np.ascontiguousarray(desc))
        return self.calibration.apply(desc) if self.calibration is not None else desc

    def embed_faces(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """L2-normalised descriptors [N, D] of ``faces[i]`` in ``images[i]`` (crop, flip, embed).

        The shipped crop path: end-to-end evaluations call this with the detector's faces.
        """
        return self.embed_crops(self.crop(images, faces))

    def embed_images(self, images: Sequence[Union[ImageSource, np.ndarray]],
                     labels: Optional[Sequence[str]] = None,
                     timings: Optional[Dict[str, float]] = None) -> Tuple[np.ndarray, List[FaceFound]]:
        """Normalised descriptors [N, D] and the face used, one per image (errors name the image)."""
        if not len(images):
            raise ValueError("no images given")
        labels = list(labels) if labels is not None else [_label(im, i) for i, im in enumerate(images)]
        timings = timings if timings is not None else {}
        with _timer(timings, "decode"):
            decoded = [self.load(im, lab) for im, lab in zip(images, labels)]
        with _timer(timings, "detect"):
            found = [self.find_face(im, lab) for im, lab in zip(decoded, labels)]
        with _timer(timings, "crop"):
            crops = self.crop(decoded, [f.face for f in found])
        with _timer(timings, "embed"):
            desc = self.embed_crops(crops)
        return desc, found

    def embed_image(self, image: Union[ImageSource, np.ndarray]) -> Tuple[np.ndarray, FaceFound]:
        """Normalised descriptor [D] of the face in one image, and the face used."""
        desc, found = self.embed_images([image])
        return desc[0], found[0]

    def verify(self, image_a: Union[ImageSource, np.ndarray],
               image_b: Union[ImageSource, np.ndarray]) -> VerifyResult:
        """Same person in both photos? Score, decision, threshold, faces used and stage timings."""
        op = self.operating_point
        timings: Dict[str, float] = {}
        start = time.perf_counter()
        desc, found = self.embed_images([image_a, image_b], timings=timings)
        with _timer(timings, "score"):
            score = float(cosine_pairs(desc[:1], desc[1:])[0])
        timings["total"] = (time.perf_counter() - start) * 1e3
        return VerifyResult(score, score >= op.threshold, op.threshold, op.far, op.source,
                            (found[0], found[1]), timings)


def operating_points(manifest: dict, flip: bool) -> Tuple[Dict[float, float], str]:
    """Measured {FAR: threshold} for ``flip`` and where they come from.

    Manifest format (written by the evaluation / calibration code)::

        "thresholds": {"operating_points": [
            {"far": 0.001, "threshold": 0.87, "flip": false, "crop": "detect", "protocol": "CFP-FP"}, ...]}

    Points measured with another crop than the detector's are ignored. Without manifest points,
    the built-in table for the authors' weights is used.
    """
    entries = manifest.get("thresholds", {}).get("operating_points", [])
    points = {}
    for entry in entries if isinstance(entries, list) else []:
        try:
            if bool(entry.get("flip", False)) == flip and entry.get("crop", "detect") == "detect":
                points[float(entry["far"])] = float(entry["threshold"])
                protocol = entry.get("protocol", "manifest")
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ModelError(f"manifest 'thresholds' entry {entry!r} is not an operating point") from None
    if points:
        return points, f"manifest ({protocol})"
    builtin = BUILTIN_OPERATING_POINTS.get(manifest.get("source_sha256"), {}).get(flip, {})
    return dict(builtin), "built-in CFP-FP measurement for the DWC weights"


def _interpolate(points: Dict[float, float], far: float, origin: str) -> OperatingPoint:
    """Threshold at ``far``: exact point, else log-FAR linear interpolation between neighbours."""
    fars = sorted(points)
    for f in fars:
        if math.isclose(f, far, rel_tol=1e-6):
            return OperatingPoint(points[f], far, f"{origin}, FAR {far:g}")
    if not fars[0] < far < fars[-1]:
        raise SfpnError(f"FAR {far:g} is outside the measured operating points "
                        f"({fars[0]:g} … {fars[-1]:g}); give a raw threshold instead")
    hi = next(f for f in fars if f > far)
    lo = fars[fars.index(hi) - 1]
    w = (math.log(far) - math.log(lo)) / (math.log(hi) - math.log(lo))
    threshold = points[lo] + w * (points[hi] - points[lo])
    return OperatingPoint(threshold, far, f"{origin}, FAR {far:g} interpolated between {lo:g} and {hi:g}")


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise SfpnError(f"threshold must be a cosine score in [-1, 1], got {threshold!r}")
    return float(threshold)


def _check_far(far: float) -> float:
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < far < 1.0:
        raise SfpnError(f"FAR must be a number in (0, 1), got {far!r}")
    return float(far)


def _label(image, i: int) -> str:
    return f"image {i + 1}" if isinstance(image, (np.ndarray, bytes, bytearray, memoryview)) else str(image)


class _timer:
    """Adds the elapsed milliseconds of a ``with`` block to ``timings[stage]``."""

    def __init__(self, timings: Dict[str, float], stage: str):
        self.timings, self.stage = timings, stage

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        elapsed = (time.perf_counter() - self.start) * 1e3
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + elapsed
