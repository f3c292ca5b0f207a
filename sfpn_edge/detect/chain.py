"""A fallback chain: the primary detector, then others only for the images it finds no face in.

    chain = DetectorChain(blazeface, [("blazeface-full", build_full), ("mtcnn", build_mtcnn)], framing)

Each detector's boxes want their own framing (margin and centre shift, ``ModelDir.crop_spec``);
a face found by a fallback is re-boxed into the primary's convention, so the primary's crop spec
turns it into exactly the crop the fallback's own framing would give. ``Face.found_by`` names the
detector that found each face. Fallbacks are built on first use (a Pi that never needs MTCNN never
loads it); one whose weights are missing is skipped and ``describe()`` says why.

The padded retry of ``detect.policy.find_faces`` runs the whole chain again on the padded image,
so the order is: every detector on the image as given, then every detector on the padded copy.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sfpn_edge.detect import Detector, Face
from sfpn_edge.errors import SfpnError

Framing = Callable[[str], Tuple[float, float]]
"""Detector name -> (margin, shift) of its crop spec."""


def reframe(face: Face, source: Tuple[float, float], target: Tuple[float, float]) -> Face:
    """``face`` (boxed the way the detector with framing ``source`` boxes faces) with a square box
    that framing ``target`` crops exactly as ``source`` would (see ``align.box_matrix``)."""
    (src_margin, src_shift), (dst_margin, dst_shift) = source, target
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * (1.0 + src_margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0 + (src_shift - dst_shift) * side
    half = side / (1.0 + dst_margin) / 2.0
    return replace(face, box=(cx - half, cy - half, cx + half, cy + half))


class DetectorChain:
    """``primary``, then each fallback in order when the ones before it found no face."""

    def __init__(self, primary: Detector, fallbacks: Sequence[Tuple[str, Callable[[], Detector]]],
                 framing: Framing):
        self.primary = primary
        self.name = getattr(primary, "name", type(primary).__name__.lower())
        self._framing = framing
        self._builders = list(fallbacks)
        self._built: Dict[str, Optional[Detector]] = {}
        self._missing: Dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def fallbacks(self) -> Tuple[str, ...]:
        return tuple(name for name, _ in self._builders)

    def detect(self, image: np.ndarray) -> List[Face]:
        """The primary's faces; if none, the first fallback's that finds any, re-boxed."""
        faces = self.primary.detect(image)
        if faces:
            return [replace(f, found_by=f.found_by or self.name) for f in faces]
        target = self._framing(self.name)
        for name, _ in self._builders:
            detector = self._member(name)
            if detector is None:
                continue
            faces = detector.detect(image)
            if faces:
                source = self._framing(name)
                return [replace(reframe(f, source, target), found_by=name) for f in faces]
        return []

    def _member(self, name: str) -> Optional[Detector]:
        with self._lock:
            if name not in self._built:
                build = dict(self._builders)[name]
                try:
                    self._built[name] = build()
                except SfpnError as exc:  # weights not fetched: the chain is shorter, and says so
                    self._built[name] = None
                    self._missing[name] = str(exc)
            return self._built[name]

    def describe(self) -> dict:
        """The chain and each fallback's state: "ready", "not loaded yet" or why it is skipped."""
        state = {}
        for name in self.fallbacks:
            if name in self._missing:
                state[name] = f"skipped: {self._missing[name]}"
            else:
                state[name] = "ready" if self._built.get(name) is not None else "not loaded yet"
        return {"detector": self.name, "fallbacks": state}
