"""Choosing the one face to use from an image, with an explicit fallback.

``find_face`` tries the detector on the image as given; if it finds nothing (faces that fill
the whole frame, e.g. already-cropped benchmark images), it tries again with a border around
the image; if that fails too, the ``fallback`` decides: "whole-image" uses the full frame as the
face box (``Detection.source`` says so, so callers can count it), "error" raises ImageError.

The default retry border, 25 % replicated edge pixels, is the best measured on the CFP images
the protocols use (``python -m sfpn_edge.evaluate.detection_survey``): of the 79 profiles MTCNN misses
as given, it rescues 44, a black border 38, 50 % borders 39-41.

Huge photos are detected on a shrunk copy (``DETECT_MAX_PIXELS``) and the boxes scaled back, so
a 100 MP photo costs what an 8 MP one does; the padded retry, which looks for faces that fill
the frame, runs on a copy of at most ``RETRY_MAX_PIXELS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from sfpn_edge.align import whole_image_box
from sfpn_edge.detect import (PAD_MODES, Detector, Face, SizedDetector, check_image, pad_image, scale_face,
                              shift_face, shrink_image)
from sfpn_edge.errors import ImageError, SfpnError

RETRY_PAD = 0.25
"""Border added for the second try (fraction of the image's height/width on each side)."""
DETECT_MAX_PIXELS = 8_000_000
"""Detection input cap. A 12 MP photo is shrunk 1.22x, so MTCNN's smallest face (20 px) becomes
24 px of the original, still far below the 113 px the model sees; a 100 MP one 3.5x (faces under
71 px lost). Detection time grows with the pixels: 1.3 s for 8 MP without a face (one thread,
retry included, on the 2-core Xeon of the bench table)."""
RETRY_MAX_PIXELS = 1_000_000
"""The padded retry looks for a face that fills the frame: at 1 MP such a face is still ~1000 px."""
SOURCES = ("detected", "padded", "whole-image")
FALLBACKS = ("whole-image", "error")
PICKS: Dict[str, Callable[[Face], float]] = {
    "largest": lambda face: face.area,
    "score": lambda face: face.score,
}


@dataclass(frozen=True)
class Detection:
    """The face chosen in one image, how it was found, and how many faces the detector saw."""

    face: Face
    source: str  # one of SOURCES
    n_faces: int


def find_faces(
    detector: Detector,
    image: np.ndarray,
    *,
    retry_pad: Optional[float] = RETRY_PAD,
    pad_mode: str = "replicate",
    pick: str = "largest",
    min_face_fraction: Optional[float] = None,
) -> List[Detection]:
    """Every face in ``image``, best by ``pick`` first ("largest" box or best "score"): detect,
    else detect on a padded copy; [] when both find nothing.

    ``retry_pad`` None or 0 disables the padded retry. ``min_face_fraction`` (for callers that
    keep only the largest face) first asks a ``SizedDetector`` for faces of at least that
    fraction of the image's short side, and runs the full detector only when that finds none.
    """
    check_image(image)
    if pick not in PICKS:
        raise SfpnError(f"pick must be one of {sorted(PICKS)}, got {pick!r}")
    if retry_pad is not None and not 0.0 <= retry_pad <= 2.0:
        raise SfpnError(f"retry_pad must be None or a fraction in [0, 2], got {retry_pad!r}")
    if pad_mode not in PAD_MODES:
        raise SfpnError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    if min_face_fraction is not None and not 0.0 < min_face_fraction <= 1.0:
        raise SfpnError(f"min_face_fraction must be None or in (0, 1], got {min_face_fraction!r}")
    view, factor = shrink_image(image, DETECT_MAX_PIXELS)
    faces = []
    if min_face_fraction and isinstance(detector, SizedDetector):
        faces = detector.detect_sized(view, min_face_fraction * min(view.shape[:2]))
    if not faces:
        faces = detector.detect(view)
    faces = [scale_face(f, factor) for f in faces]
    source = "detected"
    if not faces and retry_pad:
        view, factor = shrink_image(image, RETRY_MAX_PIXELS)
        padded, (dx, dy) = pad_image(view, retry_pad, pad_mode)
        faces = [scale_face(shift_face(f, dx, dy), factor) for f in detector.detect(padded)]
        source = "padded"
    faces.sort(key=PICKS[pick], reverse=True)
    return [Detection(face, source, len(faces)) for face in faces]


def find_face(
    detector: Detector,
    image: np.ndarray,
    *,
    retry_pad: Optional[float] = RETRY_PAD,
    pad_mode: str = "replicate",
    fallback: str = "whole-image",
    pick: str = "largest",
    min_face_fraction: Optional[float] = None,
) -> Detection:
    """The face to use in ``image``: the first of :func:`find_faces`, else ``fallback``."""
    if fallback not in FALLBACKS:
        raise SfpnError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    found = find_faces(detector, image, retry_pad=retry_pad, pad_mode=pad_mode, pick=pick,
                       min_face_fraction=min_face_fraction)
    if found:
        return found[0]
    if fallback == "error":
        raise ImageError("no face found in the image")
    return Detection(Face(whole_image_box(image), 0.0, None), "whole-image", 0)


def count_sources(detections: Iterable[Detection]) -> Dict[str, int]:
    """How many detections came from each source (all SOURCES present, zeros included)."""
    counts = {source: 0 for source in SOURCES}
    for det in detections:
        counts[det.source] += 1
    return counts

