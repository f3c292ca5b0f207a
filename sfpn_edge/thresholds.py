"""Operating points: cosine thresholds measured at false-accept rates, keyed by detector and flip.

    points = model.operating_points(detector="mtcnn", flip=False)   # sfpn_edge.model_dir.ModelDir
    op = points.at(1e-3)                                           # OperatingPoint(threshold, far, source)

Entries (in the manifest's ``thresholds`` or a calibration's ``operating_points``) look like
``{"far": 0.001, "threshold": 0.87, "flip": false, "crop": "detect", "detector": "mtcnn",
"protocol": "CFP-FP"}``; ``detector`` absent means MTCNN (the only detector before it was
recorded). Points measured on other crops (fiducials) are not detector thresholds and are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.models import WEIGHTS_SHA256

DEFAULT_DETECTOR = "mtcnn"

# Fallback points (cosine thresholds at false-accept rates) for the authors' DWC weights when the
# manifest has none: the MTCNN pipeline (margin 0.10, fp32 ONNX Runtime), CFP-FP, all 7,000 pairs
# (3,500 impostors: FAR 1e-3 rests on ~4 of them); threshold = lowest score whose FAR does not
# exceed the target (sfpn_edge.evaluate.metrics.tar_at_far). Same run: 10-fold accuracy FF 96.57 /
# FP 87.43 % raw, 96.60 / 88.06 % with flip. Produced by
#   python benchmarks/measure_pipeline.py --cfp ../shared/data/cfp --model DIR --cache /tmp/cfp_faces.npz
BUILTIN: Dict[str, Dict[str, Dict[bool, Dict[float, float]]]] = {
    WEIGHTS_SHA256: {
        "mtcnn": {
            False: {1e-3: 0.8506, 2e-3: 0.8461, 5e-3: 0.8384, 1e-2: 0.8308, 2e-2: 0.8240, 5e-2: 0.8123,
                    1e-1: 0.8037},
            True: {1e-3: 0.8581, 2e-3: 0.8500, 5e-3: 0.8447, 1e-2: 0.8371, 2e-2: 0.8297, 5e-2: 0.8158,
                   1e-1: 0.8077},
        },
        # BlazeFace short range, its measured framing (margin 0.30, shift -0.06), same protocol and
        # rule: `python -m sfpn_edge.evaluate.framing --cfp ../shared/data/cfp --detector blazeface
        # --margins 0.3 --shifts -0.06 [--flip]` (FF / FP 96.37 / 87.64 raw, 96.44 / 87.89 flip).
        "blazeface": {
            False: {1e-3: 0.8527, 2e-3: 0.8461, 5e-3: 0.8361, 1e-2: 0.8303, 2e-2: 0.8252, 5e-2: 0.8135,
                    1e-1: 0.8032},
            True: {1e-3: 0.8550, 2e-3: 0.8520, 5e-3: 0.8437, 1e-2: 0.8364, 2e-2: 0.8302, 5e-2: 0.8174,
                   1e-1: 0.8077},
        },
        # BlazeFace full range at its framing (0.20, -0.09): `... --detector blazeface-full --margins 0.2
        # --shifts -0.09 [--flip]` (95.73 / 82.84 raw, 95.73 / 83.19 flip; a sixth of CFP's photos fall
        # back to the whole image, so these are rough: full range is for far faces).
        "blazeface-full": {
            False: {1e-3: 0.8572, 2e-3: 0.8513, 5e-3: 0.8446, 1e-2: 0.8389, 2e-2: 0.8306, 5e-2: 0.8196,
                    1e-1: 0.8084},
            True: {1e-3: 0.8615, 2e-3: 0.8574, 5e-3: 0.8483, 1e-2: 0.8428, 2e-2: 0.8363, 5e-2: 0.8233,
                   1e-1: 0.8131},
        },
    },
}


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold, the false-accept rate it was measured at (None if unknown), and its origin."""

    threshold: float
    far: Optional[float]
    source: str


@dataclass(frozen=True)
class OperatingPoints:
    """Measured {FAR: threshold} for one detector and flip setting, and where they come from."""

    points: Dict[float, float]
    origin: str

    def __bool__(self) -> bool:
        return bool(self.points)

    def at(self, far: float) -> OperatingPoint:
        """Threshold at ``far``: an exact point, else log-FAR linear interpolation between neighbours."""
        far = check_far(far)
        if not self.points:
            raise ModelError(f"no measured operating points ({self.origin})")
        fars = sorted(self.points)
        for f in fars:
            if math.isclose(f, far, rel_tol=1e-6):
                return OperatingPoint(self.points[f], far, f"{self.origin}, FAR {far:g}")
        if not fars[0] < far < fars[-1]:
            raise SfpnError(f"FAR {far:g} is outside the measured operating points "
                            f"({fars[0]:g} … {fars[-1]:g}); give a raw threshold instead")
        hi = next(f for f in fars if f > far)
        lo = fars[fars.index(hi) - 1]
        w = (math.log(far) - math.log(lo)) / (math.log(hi) - math.log(lo))
        threshold = self.points[lo] + w * (self.points[hi] - self.points[lo])
        return OperatingPoint(threshold, far, f"{self.origin}, FAR {far:g} interpolated between {lo:g} and {hi:g}")


def from_entries(entries: Any, *, detector: str, flip: bool, where: str) -> OperatingPoints:
    """The points among ``entries`` for ``detector`` and ``flip`` (ModelError for a malformed entry)."""
    points: Dict[float, float] = {}
    protocol = where
    for entry in entries if isinstance(entries, list) else []:
        try:
            if entry.get("crop", "detect") != "detect":
                continue
            if entry.get("detector", DEFAULT_DETECTOR) != detector or bool(entry.get("flip", False)) != flip:
                continue
            far, threshold = check_far(entry["far"]), check_threshold(entry["threshold"])
        except (AttributeError, KeyError, TypeError, ValueError, SfpnError):
            raise ModelError(f"{where}: {entry!r} is not an operating point (far in (0, 1), "
                             "threshold in [-1, 1])") from None
        points[far] = threshold
        protocol = f"{where} ({entry.get('protocol', 'unnamed protocol')})"
    return OperatingPoints(points, protocol)


def for_model(manifest: Dict[str, Any], *, detector: str = DEFAULT_DETECTOR, flip: bool = False) -> OperatingPoints:
    """The manifest's measured points, else the built-in table for the authors' weights."""
    found = from_entries((manifest.get("thresholds") or {}).get("operating_points", []),
                         detector=detector, flip=flip, where="manifest")
    if found:
        return found
    builtin = BUILTIN.get(manifest.get("source_sha256"), {}).get(detector, {}).get(flip, {})
    return OperatingPoints(dict(builtin), "built-in CFP-FP measurement for the DWC weights")


def for_calibration(entries: Iterable, *, detector: str = DEFAULT_DETECTOR, flip: bool = False) -> OperatingPoints:
    """A calibration's own points (never the raw model's: they belong to another descriptor space)."""
    return from_entries(list(entries), detector=detector, flip=flip, where="calibration")


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float cosine score in [-1, 1] (NaN refused), else SfpnError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise SfpnError(f"threshold must be a cosine score in [-1, 1], got {threshold!r}")
    return float(threshold)


def check_far(far: Any) -> float:
    """``far`` as a float in (0, 1) (NaN refused), else SfpnError."""
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < far < 1.0:
        raise SfpnError(f"FAR must be a number in (0, 1), got {far!r}")
    return float(far)
