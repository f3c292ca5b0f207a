"""FaceVerifier: photos in, decision out (decode -> detect -> crop -> embed -> score).

    verifier = FaceVerifier()                          # default model, BlazeFace, FAR = 1e-3
    verifier = FaceVerifier(detector="mtcnn")          # any registered detector, or a Detector object
    result = verifier.verify("a.jpg", "b.jpg")
    result.same, result.score, result.threshold, result.timings_ms

Face policy, per image: the detector runs on the image, then (if it found nothing) on a copy
with a 25 % border, which finds faces that fill the whole frame. A detector with a fallback chain
(``fallbacks=``; BlazeFace's default: full range, then MTCNN, each when its weights are cached)
tries the next detectors wherever the one before found nothing (``Face.found_by``). No face at all raises
``ImageError("<image>: no face found")``. Several faces: the largest box is used
(``face_policy="largest"``, the default; MTCNN then skips faces under ``MIN_FACE_FRACTION`` of the
short side, rerunning in full only when that finds nothing), every face, largest first
(``"all"``: ``embed_photos`` and ``identify``; ``verify`` refuses it), or ``ImageError`` is raised
(``"error"``).

Quality (``sfpn_edge.quality``): every face used gets its size, blur, yaw and roll, judged by the
"standard" gate; ``min_quality="standard"`` (or "frontal", or a ``QualityGate``) also refuses a
photo whose face fails it with ``ImageError("<image>: low-quality face: <reasons>")``.

Crop: a square of side max(w, h) of the detector box, enlarged by ``margin`` and moved down by
``shift`` sides (default: the framing measured for the detector: MTCNN 0.10 / 0, BlazeFace
0.30 / -0.06), warped to the model's input size by the alignment kernel (``ModelDir.crop_spec``).
Flip (``flip=None``: the calibration's setting when calibrated, else on): the mirrored crop is
embedded too and the two descriptors summed (CFP through BlazeFace, raw, fp32: FF / FP 96.37 /
87.61 off, 96.44 / 87.84 on; no measured change on int8). ``crop_faces`` /
``FaceVerifier.embed_faces`` are the same code path the
CFP end-to-end evaluation calls, so its numbers measure this pipeline.

Decision threshold (cosine, same person when ``score >= threshold``), first match wins:
``threshold=`` a raw score; else the operating point at ``far=`` (default 1e-3) measured for this
detector and flip setting (``sfpn_edge.thresholds``: the manifest's, else the built-in points for
the authors' DWC weights); else ModelError asking for a threshold.

Runtime: one ``Runtime`` (backend, device, precision, threads) runs the embedder, the detector's
nets (``Runtime.for_graphs``) and the crop kernel; pass ``runtime=`` or the loose settings.

Calibration: when the model directory holds one (``sfpn-edge calibrate``; ``calibration=`` picks
another or turns it off), descriptors are calibrated after flip averaging and normalisation, the
operating points come from the calibration only, and galleries bind to weights + calibration.
A gallery's own calibration (``sfpn_edge.gallery``) works on top of what the gallery stores;
``identify`` uses its cross-fitted threshold when it has one (``gallery_operating_point``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sfpn_edge import align, quality, thresholds
from sfpn_edge.calibration import Calibration, gallery_key, resolve_calibration
from sfpn_edge.detect import Detector, Face, check_image
from sfpn_edge.detect import registry as detectors
from sfpn_edge.detect.chain import DetectorChain
from sfpn_edge.detect.policy import RETRY_PAD, find_faces
from sfpn_edge.detect.registry import make_detector
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ImageError, ModelError, SfpnError
from sfpn_edge.io import ImageSource, read_image
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.model_dir import ModelDir
from sfpn_edge.runtime import Runtime, make_runtime
from sfpn_edge.score import cosine_pairs
from sfpn_edge.quality import Quality, QualityGate
from sfpn_edge.thresholds import OperatingPoint

if TYPE_CHECKING:
    from sfpn_edge.gallery import FaceGallery, Match

DEFAULT_FAR = 1e-3
FACE_POLICIES = ("largest", "all", "error")
STAGES = ("decode", "detect", "crop", "quality", "embed", "score")
MIN_FACE_FRACTION = 0.1
"""With ``face_policy="largest"``: faces under this fraction of the short side are not looked for
first (MTCNN's pyramid skips their levels); measured in the README's "Detectors"."""


@dataclass(frozen=True)
class FaceFound:
    """A face used in one image: the detection, how it was found, how many faces there were, and
    its quality (set once its crop is made)."""

    face: Face
    how: str  # "detected" or "padded" (found after adding a border)
    n_faces: int
    quality: Optional[Quality] = None

    def to_dict(self) -> dict:
        return {**self.face.to_dict(), "found": self.how, "faces_in_image": self.n_faces,
                "quality": None if self.quality is None else self.quality.to_dict()}


@dataclass(frozen=True)
class Identification:
    """One face of a photo against a gallery: best-first candidates and the decision."""

    face: FaceFound
    candidates: List[Match]
    threshold: float
    genuine_accept: Optional[Dict[str, float]] = None  # measured share of genuine pairs accepted at the threshold
    genuine_accept_on: Optional[str] = None  # what that share was measured on

    @property
    def score(self) -> float:
        return self.candidates[0].score

    @property
    def match(self) -> Optional[str]:
        """The best candidate's name when its score reaches the threshold, else None."""
        return self.candidates[0].name if self.score >= self.threshold else None

    def to_dict(self) -> dict:
        return {"face": self.face.to_dict(), "match": self.match, "score": round(self.score, 6),
                "candidates": [{"name": m.name, "score": round(m.score, 6)} for m in self.candidates]}


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
    genuine_accept: Optional[Dict[str, float]] = None  # measured share of genuine pairs accepted at the threshold
    genuine_accept_on: Optional[str] = None  # what that share was measured on

    def to_dict(self) -> dict:
        return {
            "score": round(self.score, 6),
            "same": self.same,
            **OperatingPoint(self.threshold, self.far, self.threshold_source, self.genuine_accept,
                             self.genuine_accept_on).to_dict(),
            "faces": [f.to_dict() for f in self.faces],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


def crop_faces(images: Sequence[np.ndarray], faces: Sequence[Face], *, margin: float, size: int,
               mean: Sequence[float], flip: bool = False, threads: Optional[int] = None) -> np.ndarray:
    """Model-ready crops float32 [N, 3, size, size] for ``faces[i]`` in ``images[i]`` (BGR uint8).

    Each crop is the square of side max(w, h) of the face box enlarged by ``margin``; with
    ``flip`` the N mirrored crops follow the N originals ([2N, ...]).
    """
    spec = align.CropSpec(size, tuple(mean)).with_margin(margin)
    return spec.crop_boxes(images, [face.box for face in faces], flip=flip, threads=threads)


def default_flip(calibration: Optional[Calibration]) -> bool:
    """Flip averaging unless told otherwise: the calibration's own setting when there is one (its
    thresholds were measured with it; calibrations that do not say were made without), else on."""
    return bool(calibration.info.get("flip", False)) if calibration is not None else True


class FaceVerifier:
    """Detector + SqueezeFacePoseNet embedder + a decision threshold, from one model directory."""

    def __init__(
        self,
        model_dir: Union[str, Path, ModelDir, None] = None,
        backend: Optional[str] = None,
        precision: Optional[str] = None,
        *,
        device: Optional[str] = None,
        threads: Optional[int] = None,
        runtime: Optional[Runtime] = None,
        detector: Union[Detector, str] = detectors.DEFAULT,
        detector_weights: Union[str, Path, None] = None,
        fallbacks: Optional[Sequence[str]] = None,
        margin: Optional[float] = None,
        flip: Optional[bool] = None,
        face_policy: str = "largest",
        min_quality: Union[str, QualityGate, None] = None,
        threshold: Optional[float] = None,
        far: Optional[float] = None,
        calibration: Union[bool, str, Path, Calibration] = True,
    ):
        if face_policy not in FACE_POLICIES:
            raise SfpnError(f"face_policy must be one of {FACE_POLICIES}, got {face_policy!r}")
        if threshold is not None and far is not None:
            raise SfpnError("give a threshold or a FAR, not both")
        self.model = ModelDir.of(model_dir)
        self.runtime = make_runtime(runtime, backend, precision, device, threads, int8_gate=self.model.int8_gate())
        self.embedder = FaceEmbedder(self.model, runtime=self.runtime)
        # True: the model directory's calibration when it has one (descriptors and thresholds).
        self.calibration = resolve_calibration(calibration, self.model.path, self.model.manifest)
        if isinstance(detector, str):
            model = self.model
            detector = make_detector(detector, detector_weights, self.runtime, fallbacks=fallbacks,
                                     framing=lambda name: (model.margin(name), model.shift(name)))
        self.detector = detector
        self.detector_name = getattr(detector, "name", type(detector).__name__.lower())
        try:
            self.crop_spec = self.model.crop_spec(self.detector_name, margin)
        except ValueError as exc:
            raise SfpnError(str(exc)) from None
        self.margin, self.threads = self.crop_spec.margin, self.runtime.threads
        self.flip = default_flip(self.calibration) if flip is None else bool(flip)
        self.face_policy = face_policy
        try:  # None: measured and judged by the default gate, never refused
            self.quality_gate = quality.gate(quality.DEFAULT_GATE if min_quality is None else min_quality)
        except ValueError as exc:
            raise SfpnError(str(exc)) from None
        self.refuse_low_quality = min_quality is not None
        self._threshold = None if threshold is None else thresholds.check_threshold(threshold)
        self._far = DEFAULT_FAR if far is None else thresholds.check_far(far)
        self._operating_point: Optional[OperatingPoint] = None

    # -- model facts -----------------------------------------------------------------------

    @property
    def model_sha256(self) -> str:
        """sha256 of the weights the model was converted from (combined with the calibration's
        digest when calibrated): what a gallery is bound to."""
        return gallery_key(self.model.source_sha256, self.calibration)

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
        """The operating point at false-accept rate ``far`` for this model, detector and flip setting."""
        far = thresholds.check_far(far)
        points = self.model.operating_points(self.detector_name, self.flip, self.calibration)
        if not points and self.calibration is not None:
            raise ModelError(f"the calibration of {self.model.path} has no thresholds for {self.detector_name} "
                             f"crops with flip={self.flip}; run `sfpn-edge calibrate --thresholds` (with the "
                             "same --flip) or give a raw threshold (--threshold)")
        if not points:
            raise ModelError(
                f"{self.model.path}: no measured operating points for this model with detector "
                f"{self.detector_name} (flip={self.flip}); give a raw threshold (--threshold) or measure "
                "them with `sfpn-edge eval`")
        op = points.at(far)
        measured_at = self.model.margin(self.detector_name)
        if not math.isclose(self.margin, measured_at):
            op = OperatingPoint(op.threshold, op.far, f"{op.source}; measured at crop margin {measured_at:g}, "
                                                      f"this verifier uses {self.margin:g}")  # rates not measured here
        return op

    def describe(self) -> dict:
        return {
            "model": self.embedder.describe(),
            "detector": self.detector_name,
            "fallbacks": self.detector.describe()["fallbacks"] if isinstance(self.detector, DetectorChain) else {},
            "margin": self.margin,
            "shift": self.crop_spec.shift,
            "flip": self.flip,
            "face_policy": self.face_policy,
            "min_quality": self.quality_gate.name if self.refuse_low_quality else None,
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

    def find_faces(self, image: np.ndarray, label: str = "image") -> List[FaceFound]:
        """The faces to use in ``image`` under this verifier's face policy (see module docs): one,
        or every face (largest first) with ``face_policy="all"``."""
        largest = self.face_policy == "largest"
        found = find_faces(self.detector, image, retry_pad=RETRY_PAD, pick="largest",
                           min_face_fraction=MIN_FACE_FRACTION if largest else None)
        if not found:
            raise ImageError(f"{label}: no face found")
        if len(found) > 1 and self.face_policy == "error":
            raise ImageError(f"{label}: {len(found)} faces found, expected one (face policy 'error')")
        faces = [FaceFound(det.face, det.source, det.n_faces) for det in found]
        return faces if self.face_policy == "all" else faces[:1]

    def find_face(self, image: np.ndarray, label: str = "image") -> FaceFound:
        """The face to use in ``image``: the largest (or, policy "error", the only one)."""
        return self.find_faces(image, label)[0]

    def crop(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """Crops of ``faces`` in ``images`` with this verifier's crop spec and flip setting."""
        return self.crop_spec.crop_boxes(images, [face.box for face in faces], flip=self.flip,
                                         threads=self.threads)

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

    def embed_photos(self, images: Sequence[Union[ImageSource, np.ndarray]],
                     labels: Optional[Sequence[str]] = None,
                     timings: Optional[Dict[str, float]] = None) -> List[Tuple[np.ndarray, List[FaceFound]]]:
        """Per image: normalised descriptors [F, D] and the F faces used (F = 1 unless the face
        policy is "all"), quality included. Errors name the image; nothing is embedded then."""
        if not len(images):
            raise ValueError("no images given")
        labels = list(labels) if labels is not None else [_label(im, i) for i, im in enumerate(images)]
        timings = timings if timings is not None else {}
        with _timer(timings, "decode"):
            decoded = [self.load(im, lab) for im, lab in zip(images, labels)]
        with _timer(timings, "detect"):
            found = [self.find_faces(im, lab) for im, lab in zip(decoded, labels)]
        owners = [i for i, faces in enumerate(found) for _ in faces]
        with _timer(timings, "crop"):
            crops = self.crop([decoded[i] for i in owners], [f.face for faces in found for f in faces])
        with _timer(timings, "quality"):
            flat = [replace(f, quality=quality.assess(f.face, crop, self.quality_gate))
                    for f, crop in zip((f for faces in found for f in faces), crops)]
            if self.refuse_low_quality:
                for face, i in zip(flat, owners):
                    if not face.quality.passed:
                        raise ImageError(f"{labels[i]}: low-quality face ({'; '.join(face.quality.reasons)}; "
                                         f"gate {self.quality_gate.name})")
        with _timer(timings, "embed"):
            desc = self.embed_crops(crops)
        bounds = np.cumsum([0] + [len(faces) for faces in found])
        return [(desc[a:b], flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def embed_images(self, images: Sequence[Union[ImageSource, np.ndarray]],
                     labels: Optional[Sequence[str]] = None,
                     timings: Optional[Dict[str, float]] = None) -> Tuple[np.ndarray, List[FaceFound]]:
        """Normalised descriptors [N, D] and the face used, one per image (errors name the image)."""
        self._one_face_each("embed_images")
        photos = self.embed_photos(images, labels, timings)
        return np.concatenate([desc for desc, _ in photos]), [faces[0] for _, faces in photos]

    def embed_image(self, image: Union[ImageSource, np.ndarray]) -> Tuple[np.ndarray, FaceFound]:
        """Normalised descriptor [D] of the face in one image, and the face used."""
        desc, found = self.embed_images([image])
        return desc[0], found[0]

    def identify(self, image: Union[ImageSource, np.ndarray], gallery: FaceGallery, k: int = 5,
                 timings: Optional[Dict[str, float]] = None) -> List[Identification]:
        """Each face used in ``image`` (face policy) against ``gallery``: its ``k`` best candidates
        and the decision at this verifier's threshold. SfpnError for an empty gallery."""
        op, calibrated = self.gallery_operating_point(gallery)
        if len(gallery) == 0:
            raise SfpnError(f"{gallery.path}: the gallery is empty; enrol someone first")
        timings = timings if timings is not None else {}
        ((desc, faces),) = self.embed_photos([image], timings=timings)
        with _timer(timings, "search"):
            matches = gallery.identify_batch(desc, k, calibrated=calibrated)
        return [Identification(face, cands, op.threshold, op.genuine_accept, op.genuine_accept_on)
                for face, cands in zip(faces, matches)]

    def gallery_operating_point(self, gallery: FaceGallery) -> Tuple[OperatingPoint, bool]:
        """(threshold for scores against ``gallery``, whether they are its calibrated scores): the
        gallery's own cross-fitted point at this verifier's FAR when it has one, else this
        verifier's (a given threshold, the manifest's or the built-in table) on raw scores."""
        own = None if self._threshold is not None else gallery.operating_point(self._far)
        return (own, True) if own is not None else (self.operating_point, False)

    def _one_face_each(self, what: str) -> None:
        if self.face_policy == "all":
            raise SfpnError(f"{what} uses one face per photo; face policy 'all' needs embed_photos or identify")

    def verify(self, image_a: Union[ImageSource, np.ndarray],
               image_b: Union[ImageSource, np.ndarray]) -> VerifyResult:
        """Same person in both photos? Score, decision, threshold, faces used and stage timings."""
        op = self.operating_point
        self._one_face_each("verify")
        timings: Dict[str, float] = {}
        start = time.perf_counter()
        desc, found = self.embed_images([image_a, image_b], timings=timings)
        with _timer(timings, "score"):
            score = float(cosine_pairs(desc[:1], desc[1:])[0])
        timings["total"] = (time.perf_counter() - start) * 1e3
        return VerifyResult(score, score >= op.threshold, op.threshold, op.far, op.source,
                            (found[0], found[1]), timings, op.genuine_accept, op.genuine_accept_on)


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
