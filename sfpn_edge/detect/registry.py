"""The detector registry: every face detector declared once, built by one factory.

    detector = make_detector("mtcnn", weights=None, runtime=rt)   # weights None: the cache

A detector is one module with a class taking ``(weights, runtime, **options)`` and implementing
the ``Detector`` protocol, plus one :func:`register` call. ``margin`` and ``shift`` are the framing
its boxes want when a model directory has none measured for it (``ModelDir.crop_spec``; measured
with ``python -m sfpn_edge.evaluate.framing``); thresholds are looked
up under the detector's name, so a new detector never inherits another's operating points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

from sfpn_edge import plugins
from sfpn_edge.registry import Registry, import_impl


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    impl: str  # "module:Class"
    margin: Optional[float] = None
    shift: float = 0.0
    summary: str = ""
    fallbacks: Tuple[str, ...] = ()
    """Detectors tried, in order, on images this one finds no face in (``detect.chain``)."""

    def load(self) -> type:
        return import_impl(self.impl)


DEFAULT = "blazeface"
"""The photo commands' and ``FaceVerifier``'s detector: the fastest that keeps CFP accuracy (README
"Detectors": BlazeFace short range ~10x faster than MTCNN per photo, CFP e2e within noise of it)."""

_REGISTRY: Registry[DetectorSpec] = Registry("detector")
names, specs, get, unregister = _REGISTRY.names, _REGISTRY.specs, _REGISTRY.get, _REGISTRY.remove


def register(spec: DetectorSpec) -> DetectorSpec:
    """Add (or replace) a detector; returns ``spec``."""
    return _REGISTRY.add(spec.name, spec)


def make_detector(name: str = DEFAULT, weights: Optional[Union[str, Path]] = None, runtime=None, *,
                  fallbacks: Optional[Sequence[str]] = None,
                  framing: Optional[Callable[[str], Tuple[float, float]]] = None, **options):
    """The detector ``name`` with ``weights`` (None: its cached default) on ``runtime``
    (None: ``Runtime.resolve()``); ``options`` go to the detector's constructor.

    ``fallbacks`` (None: the spec's; ``()`` for none) wraps it in a ``DetectorChain`` whose
    fallbacks use their cached weights and are re-boxed with ``framing`` (name -> (margin, shift);
    None: the registry's, :func:`framing_of`)."""
    from sfpn_edge.runtime import Runtime

    runtime = runtime if runtime is not None else Runtime.resolve()
    spec = get(name)
    chain = tuple(spec.fallbacks if fallbacks is None else fallbacks)
    for other in chain:
        get(other)  # unknown names fail here, not on the first missed face
    detector = spec.load()(weights, runtime, **options)
    if not chain:
        return detector
    from sfpn_edge.detect.chain import DetectorChain

    return DetectorChain(detector, [(other, _builder(other, runtime)) for other in chain], framing or framing_of)


def framing_of(name: str) -> Tuple[float, float]:
    """(margin, shift) the registry declares for detector ``name`` (margin None reads as 0)."""
    spec = get(name)
    return (spec.margin or 0.0, spec.shift)


def _builder(name: str, runtime) -> Callable[[], object]:
    return lambda: get(name).load()(None, runtime)


register(DetectorSpec("mtcnn", "sfpn_edge.detect.mtcnn:MTCNN", margin=0.10,
                      summary="MTCNN (P/R/O-Net on our backends, 5 landmarks)"))
# BlazeFace boxes are square, tighter than MTCNN's (1.17x smaller side on CFP) and centred lower
# (by 0.076 of their side). Measured with `python -m sfpn_edge.evaluate.framing --detector blazeface`
# (CFP FF/FP, 10-fold, fp32 ONNX Runtime) over margins 0-0.35 and shifts -0.08-0.05: margin 0.30,
# shift -0.06 gave FF 96.37 / FP 87.64 (0.20 / 0: 96.46 / 86.79; 0.25 / -0.08: 96.34 / 87.27).
# A finer grid around it (margins 0.25-0.325 x shifts -0.03 / -0.045 / -0.06, fallback chain on)
# is a plateau whose neighbours differ by up to +-0.4 (fold std 0.6-0.9): 0.275 / -0.045 gave
# 96.43 / 87.59 raw but 96.34 / 87.33 with flip (0.30 / -0.06: 96.44 / 87.89), so 0.30 / -0.06 stays.
register(DetectorSpec("blazeface", "sfpn_edge.detect.blazeface:BlazeFace", margin=0.30, shift=-0.06,
                      fallbacks=("blazeface-full", "mtcnn"),
                      summary="MediaPipe BlazeFace short range on LiteRT (one 128x128 pass, 6 keypoints)"))
# Full range boxes are larger: same tool, margins 0-0.35 x shifts 0 to -0.135: 0.20 / -0.09 gave
# 95.73 / 82.84 (0 / -0.09: 95.46 / 81.91; 0.275 / -0.045: 94.76 / 81.21). CFP's faces are mostly too
# big for it (4,271 of 6,905 found as given), so these are rough; it is for far faces.
register(DetectorSpec("blazeface-full", "sfpn_edge.detect.blazeface:BlazeFaceFull", margin=0.20, shift=-0.09,
                      summary="MediaPipe BlazeFace full range on LiteRT (192x192: small, far faces)"))
register(DetectorSpec("yunet", "sfpn_edge.detect.yunet:YuNet",
                      summary="OpenCV's YuNet (cv2.FaceDetectorYN); bring the .onnx file"))
plugins.load()
