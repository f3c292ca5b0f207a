"""Face tracks between detections: IoU / centroid association and a constant-velocity motion model.

    tracker = Tracker()
    update = tracker.update(faces, frame_index)       # on frames where the detector ran
    update.matched, update.new, update.lost
    track.box_at(frame_index)                         # any frame: last detection moved by the velocity

Why our own: opencv-python-headless 5.x (checked with ``[n for n in dir(cv2) if "Tracker" in n]``)
ships only TrackerMIL (tens of ms per face per frame on a Pi-class CPU) and the DNN trackers
DaSiamRPN / Nano / Vit, which need separate ONNX weights; KCF, CSRT, MOSSE, MedianFlow and the
multi-object ``legacy`` API live in opencv-contrib, which clashes with the headless wheel. A face
detector every few frames plus a motion model is cheaper and, for faces that move smoothly, enough.

Association (greedy, best pair first): a detection and a track's predicted box pair up when their
IoU is at least ``iou_threshold``, or, failing that, when their centres are closer than
``centroid_gate`` times the larger box side (fast motion between detections). The velocity is the
per-frame displacement of the box between two matched detections, smoothed exponentially. A track
missing from more than ``max_misses`` detections in a row, or predicted out of the frame, is lost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

from sfpn_edge.detect import Face

MAX_TRACKS = 32
"""Tracks kept at once (bounded memory); extra detections in a crowded frame are not tracked."""


@dataclass(eq=False)
class Track:
    """One face over time: ``box`` is its last detected box (x0, y0, x1, y1), seen at frame ``seen``."""

    id: int
    face: Face
    seen: int
    first: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    misses: int = 0
    hits: int = 1

    @property
    def box(self) -> np.ndarray:
        return np.asarray(self.face.box, np.float64)

    def box_at(self, frame: int) -> np.ndarray:
        """The box predicted for ``frame`` (constant velocity from the last detection)."""
        return self.box + self.velocity * (frame - self.seen)


@dataclass(frozen=True)
class Update:
    """What one detection round did: (track, face) pairs matched, new tracks, tracks lost."""

    matched: List[Tuple[Track, Face]]
    new: List[Track]
    lost: List[Track]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def visible_fraction(box: np.ndarray, width: int, height: int) -> float:
    """Share of ``box``'s area inside a ``width`` x ``height`` frame."""
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    inside = max(min(box[2], width) - max(box[0], 0), 0) * max(min(box[3], height) - max(box[1], 0), 0)
    return float(inside / area) if area > 0 else 0.0


class Tracker:
    """Tracks of faces; ids count up from 1 and are never reused."""

    def __init__(self, *, iou_threshold: float = 0.3, centroid_gate: float = 0.6, max_misses: int = 1,
                 smoothing: float = 0.6):
        self.iou_threshold, self.centroid_gate = iou_threshold, centroid_gate
        self.max_misses, self.smoothing = max_misses, smoothing
        self.tracks: List[Track] = []
        self._next_id = 1

    def _affinity(self, predicted: np.ndarray, box: np.ndarray) -> float:
        overlap = iou(predicted, box)
        if overlap >= self.iou_threshold:
            return 1.0 + overlap
        side = max(predicted[2] - predicted[0], predicted[3] - predicted[1], box[2] - box[0], box[3] - box[1])
        dist = np.hypot(*((predicted[:2] + predicted[2:]) / 2 - (box[:2] + box[2:]) / 2))
        return 1.0 - dist / (self.centroid_gate * side) if side > 0 and dist < self.centroid_gate * side else 0.0

    def update(self, faces: Sequence[Face], frame: int) -> Update:
        """Associate the detector's ``faces`` of ``frame`` with the tracks (see module docs)."""
        predicted = [t.box_at(frame) for t in self.tracks]
        boxes = [np.asarray(f.box, np.float64) for f in faces]
        pairs = sorted(((self._affinity(p, b), ti, fi) for ti, p in enumerate(predicted)
                        for fi, b in enumerate(boxes)), key=lambda x: -x[0])
        used_t, used_f, matched = set(), set(), []
        for score, ti, fi in pairs:
            if score <= 0 or ti in used_t or fi in used_f:
                continue
            used_t.add(ti), used_f.add(fi)
            track = self.tracks[ti]
            step = (boxes[fi] - track.box) / max(frame - track.seen, 1)
            track.velocity = self.smoothing * step + (1 - self.smoothing) * track.velocity
            track.face, track.seen, track.misses = faces[fi], frame, 0
            track.hits += 1
            matched.append((track, faces[fi]))
        lost = []
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.misses += 1
                if track.misses > self.max_misses:
                    lost.append(track)
        self.tracks = [t for t in self.tracks if t not in lost]
        new = []
        for fi, face in enumerate(faces):
            if fi not in used_f and len(self.tracks) < MAX_TRACKS:
                track = Track(self._next_id, face, frame, frame)
                self._next_id += 1
                self.tracks.append(track)
                new.append(track)
        return Update(matched, new, lost)

    def uncertain(self) -> bool:
        """A track was missed by the last detection, or has no velocity yet (seen once)."""
        return any(t.misses or t.hits < 2 for t in self.tracks)

    def leaving(self, frame: int, width: int, height: int, min_visible: float = 0.5) -> List[Track]:
        """Remove and return the tracks predicted mostly outside the frame at ``frame``."""
        gone = [t for t in self.tracks if visible_fraction(t.box_at(frame), width, height) < min_visible]
        self.tracks = [t for t in self.tracks if t not in gone]
        return gone
