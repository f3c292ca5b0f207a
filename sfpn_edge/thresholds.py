"""Operating points: cosine thresholds measured at false-accept rates, keyed by detector and flip.

    points = model.operating_points(detector="mtcnn", flip=False)   # sfpn_edge.model_dir.ModelDir
    op = points.at(1e-3)                    # OperatingPoint(threshold, far, source, genuine_accept, ...)
    points.at(SECURITY["high"])             # --security high|balanced|convenient: FAR 1e-4 / 1e-3 / 1e-2

Entries (in the manifest's ``thresholds`` or a calibration's ``operating_points``) look like
``{"far": 0.001, "threshold": 0.87, "flip": false, "crop": "detect", "detector": "mtcnn",
"protocol": "CFP-FP"}``; ``detector`` absent means MTCNN (the only detector before it was
recorded). Points measured on other crops (fiducials) are not detector thresholds and are ignored.
An entry's ``tar`` (a calibration's cross-fitted genuine pairs) and ``GENUINE_ACCEPT`` (the built-in
points) give the share of genuine pairs accepted at the threshold, with what it was measured on;
interpolated points and given thresholds have none: no rate is reported that was not measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.models import WEIGHTS_SHA256

DEFAULT_DETECTOR = "mtcnn"
SECURITY = {"high": 1e-4, "balanced": 1e-3, "convenient": 1e-2}  # --security level -> FAR

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


# Share of CFP's genuine pairs (3,500 per protocol) accepted at each BUILTIN threshold, same runs as
# BUILTIN (the thresholds reproduce it exactly): `python -m sfpn_edge.evaluate.framing --cfp
# ../shared/data/cfp --detector mtcnn --margins 0.1 [--flip]` and the BlazeFace command above (its
# "CFP-FF genuine accept" / "CFP-FP genuine accept" entries); accuracy numbers, not timings: the machine does not enter.
GENUINE_ACCEPT_ON = ("CFP genuine pairs (3,500 per protocol; FF frontal-frontal, FP frontal-profile), "
                     "{detector} pipeline, fp32 ONNX Runtime, authors' DWC weights")
GENUINE_ACCEPT: Dict[str, Dict[str, Dict[bool, Dict[float, Dict[str, float]]]]] = {
    WEIGHTS_SHA256: {
        "mtcnn": {
            False: {1e-3: {"CFP-FF": 0.7826, "CFP-FP": 0.3100}, 2e-3: {"CFP-FF": 0.8154, "CFP-FP": 0.3737},
                    5e-3: {"CFP-FF": 0.8629, "CFP-FP": 0.4814}, 1e-2: {"CFP-FF": 0.9026, "CFP-FP": 0.5854},
                    2e-2: {"CFP-FF": 0.9280, "CFP-FP": 0.6700}, 5e-2: {"CFP-FF": 0.9606, "CFP-FP": 0.7889},
                    1e-1: {"CFP-FF": 0.9751, "CFP-FP": 0.8506}},
            True: {1e-3: {"CFP-FF": 0.7603, "CFP-FP": 0.2777}, 2e-3: {"CFP-FF": 0.8174, "CFP-FP": 0.3909},
                    5e-3: {"CFP-FF": 0.8506, "CFP-FP": 0.4606}, 1e-2: {"CFP-FF": 0.8954, "CFP-FP": 0.5623},
                    2e-2: {"CFP-FF": 0.9260, "CFP-FP": 0.6589}, 5e-2: {"CFP-FF": 0.9626, "CFP-FP": 0.8011},
                    1e-1: {"CFP-FF": 0.9749, "CFP-FP": 0.8617}},
        },
        "blazeface": {
            False: {1e-3: {"CFP-FF": 0.7791, "CFP-FP": 0.2989}, 2e-3: {"CFP-FF": 0.8260, "CFP-FP": 0.3797},
                    5e-3: {"CFP-FF": 0.8797, "CFP-FP": 0.5077}, 1e-2: {"CFP-FF": 0.9111, "CFP-FP": 0.5820},
                    2e-2: {"CFP-FF": 0.9257, "CFP-FP": 0.6457}, 5e-2: {"CFP-FF": 0.9589, "CFP-FP": 0.7703},
                    1e-1: {"CFP-FF": 0.9769, "CFP-FP": 0.8534}},
            True: {1e-3: {"CFP-FF": 0.7934, "CFP-FP": 0.3283}, 2e-3: {"CFP-FF": 0.8137, "CFP-FP": 0.3649},
                    5e-3: {"CFP-FF": 0.8637, "CFP-FP": 0.4723}, 1e-2: {"CFP-FF": 0.9003, "CFP-FP": 0.5663},
                    2e-2: {"CFP-FF": 0.9243, "CFP-FP": 0.6457}, 5e-2: {"CFP-FF": 0.9614, "CFP-FP": 0.7826},
                    1e-1: {"CFP-FF": 0.9749, "CFP-FP": 0.8574}},
        },
    },
}

# FAR 1e-4, below what CFP-FP's 3,500 impostor pairs can measure: every CFP frontal-profile impostor
# pair instead (9,675,796), genuine shares over every same-person pair (FP 19,388, FF 21,997), same
# crops and rule (threshold rounded up), `python -m sfpn_edge.evaluate.low_far --cfp
# ../shared/data/cfp --boxes B --detector D --margin M [--shift S] [--flip]` on the boxes
# `evaluate.framing --save B` stored for the BUILTIN runs. {far: (threshold, genuine shares)}. At FAR
# 1e-3 the same runs give 0.8530 / 0.8574 (MTCNN raw / flip) and 0.8540 / 0.8580 (BlazeFace), within
# 0.003 of BUILTIN's protocol thresholds, so the two measurements line up.
LOW_FAR_ORIGIN = "built-in measurement on all 9,675,796 CFP frontal-profile impostor pairs for the DWC weights"
LOW_FAR_ON = ("all CFP same-person pairs (FF 21,997 frontal-frontal, FP 19,388 frontal-profile), {detector} "
              "pipeline, fp32 ONNX Runtime, authors' DWC weights")
LOW_FAR: Dict[str, Dict[str, Dict[bool, Dict[float, Tuple[float, Dict[str, float]]]]]] = {
    WEIGHTS_SHA256: {
        "mtcnn": {False: {1e-4: (0.8683, {"CFP-FF": 0.6270, "CFP-FP": 0.1276})},
                  True: {1e-4: (0.8724, {"CFP-FF": 0.6323, "CFP-FP": 0.1323})}},
        "blazeface": {False: {1e-4: (0.8694, {"CFP-FF": 0.6283, "CFP-FP": 0.1268})},
                      True: {1e-4: (0.8734, {"CFP-FF": 0.6327, "CFP-FP": 0.1331})}},
    },
}


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold, the false-accept rate it was measured at (None if unknown), its origin,
    and the measured share of genuine pairs it accepts ({protocol: rate}, None if not measured)
    with what that was measured on."""

    threshold: float
    far: Optional[float]
    source: str
    genuine_accept: Optional[Mapping[str, float]] = None
    genuine_accept_on: Optional[str] = None

    def to_dict(self) -> dict:
        """The fields every verify/identify result carries."""
        return {"threshold": round(self.threshold, 6), "far": self.far, "threshold_source": self.source,
                "genuine_accept_rate": None if self.genuine_accept is None else dict(self.genuine_accept),
                "genuine_accept_measured_on": self.genuine_accept_on}


@dataclass(frozen=True)
class OperatingPoints:
    """Measured {FAR: threshold} for one detector and flip setting, and where they come from."""

    points: Dict[float, float]
    origin: str
    genuine_accept: Mapping[float, Mapping[str, float]] = field(default_factory=dict)
    genuine_accept_on: Optional[str] = None
    sources: Mapping[float, Tuple[str, str]] = field(default_factory=dict)  # FAR -> (origin, measured on) of
    # a point measured apart from the others (``LOW_FAR``)

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
                rates = self.genuine_accept.get(f)
                origin, measured_on = self.sources.get(f, (self.origin, self.genuine_accept_on))
                return OperatingPoint(self.points[f], far, f"{origin}, FAR {far:g}", rates,
                                      measured_on if rates else None)
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
    rates: Dict[float, Dict[str, float]] = {}
    protocol = where
    for entry in entries if isinstance(entries, list) else []:
        try:  # every entry is checked, not only the ones this verifier uses
            far, threshold = check_far(entry["far"]), check_threshold(entry["threshold"])
            if entry.get("crop", "detect") != "detect":
                continue
            if entry.get("detector", DEFAULT_DETECTOR) != detector or bool(entry.get("flip", False)) != flip:
                continue
        except (AttributeError, KeyError, TypeError, ValueError, SfpnError):
            raise ModelError(f"{where}: {entry!r} is not an operating point (far in (0, 1), "
                             "threshold in [-1, 1])") from None
        points[far] = threshold
        protocol = f"{where} ({entry.get('protocol', 'unnamed protocol')})"
        tar = entry.get("tar")
        if isinstance(tar, (int, float)) and not isinstance(tar, bool) and 0.0 <= tar <= 1.0:
            rates[far] = {str(entry.get("protocol", "genuine pairs")): float(tar)}
    return OperatingPoints(points, protocol, rates, f"the genuine pairs of the {protocol} measurement" if rates else None)


def for_model(manifest: Dict[str, Any], *, detector: str = DEFAULT_DETECTOR, flip: bool = False) -> OperatingPoints:
    """The manifest's measured points, else the built-in table for the authors' weights."""
    found = from_entries((manifest.get("thresholds") or {}).get("operating_points", []),
                         detector=detector, flip=flip, where="manifest")
    if found:
        return found
    sha = manifest.get("source_sha256")
    points = dict(BUILTIN.get(sha, {}).get(detector, {}).get(flip, {}))
    rates = dict(GENUINE_ACCEPT.get(sha, {}).get(detector, {}).get(flip, {}))
    sources = {}
    for far, (threshold, shares) in LOW_FAR.get(sha, {}).get(detector, {}).get(flip, {}).items():
        if points and far < min(points):
            points[far], rates[far] = threshold, shares
            sources[far] = (LOW_FAR_ORIGIN, LOW_FAR_ON.format(detector=detector))
    return OperatingPoints(points, "built-in CFP-FP measurement for the DWC weights", rates,
                           GENUINE_ACCEPT_ON.format(detector=detector) if rates else None, sources)


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
