"""FaceStream: frames in (camera, video, stream, folder), tracked and identified faces out.

    verifier = FaceVerifier(threads=1, fallbacks=())       # detector, crop, embedder, threshold
    with FaceGallery("people.db", model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                     readonly=True) as gallery:
        stream = FaceStream("door.avi", verifier, gallery)
        for result in stream:                              # one FrameResult per frame processed
            for event in result.events:                    # enter / identify / leave
                print(event.to_dict())
        stream.summary()

Build the verifier without a fallback chain (``fallbacks=()``): most frames of a camera hold no face,
and each would run the fallback detectors.

Per frame: the detector runs every ``detect_every`` frames, and on the next frame whenever a track
is new (its velocity unknown), missed a detection or left the picture; in between, tracks move by
their motion model (``sfpn_edge.track``). Each detected face of a track is cropped and judged by the
verifier's quality gate (``sfpn_edge.quality``) and must lie inside the frame (``MIN_INSIDE``);
faces that pass are embedded while the track needs them (undecided, near the threshold, or due for
re-identification), and the track keeps its ``best_crops`` best descriptors (ranked by blur score x
min(1, size / 113 px): sharp and at the model's resolution). Once it has ``min_crops`` of them it is
identified from their normalised mean against the gallery at the verifier's threshold (the
gallery's calibration and operating point, as ``identify`` uses): the best identity when its score
reaches the threshold, else unknown, never the nearest name below it. A track is identified again
``reid_after`` seconds later, and at every new crop while its score is within ``reid_margin`` of the
threshold; an unknown track may become named, a named track keeps its name until it is lost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from sfpn_edge import quality
from sfpn_edge.detect.policy import find_faces
from sfpn_edge.errors import SfpnError
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.track import Track, Tracker, visible_fraction
from sfpn_edge.video import Frame, FrameSource, open_source

if TYPE_CHECKING:
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier

EVENTS = ("enter", "identify", "leave")
MIN_INSIDE = 0.95
"""A crop counts only when this share of its face box is inside the frame: a face cut by the frame's
edge (entering, leaving) embeds as somebody else (measured: a stranger entering at the edge reached
0.86 against an enrolled person, above the 0.85 threshold)."""


@dataclass(frozen=True)
class Event:
    """A track change: it appeared (``enter``), got or changed its identity (``identify``; identity
    None = decided unknown), or was lost (``leave``)."""

    kind: str
    track_id: int
    identity: Optional[str]
    score: Optional[float]
    threshold: float
    box: Tuple[float, float, float, float]
    frame: int
    time: float

    def to_dict(self) -> dict:
        return {"event": self.kind, "track_id": self.track_id, "identity": self.identity,
                "score": None if self.score is None else round(self.score, 4),
                "threshold": round(self.threshold, 4), "box": [round(float(v), 1) for v in self.box],
                "frame": self.frame, "time": round(self.time, 3)}


@dataclass(frozen=True)
class TrackState:
    """A track on one frame: its box (detected, or predicted by the motion model) and identity so far."""

    track_id: int
    box: Tuple[float, float, float, float]
    detected: bool
    identity: Optional[str]
    score: Optional[float]

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "box": [round(float(v), 1) for v in self.box],
                "detected": self.detected, "identity": self.identity,
                "score": None if self.score is None else round(self.score, 4)}


@dataclass(frozen=True)
class FrameResult:
    """What ``FaceStream`` saw on one frame."""

    frame: int
    time: float
    detected: bool
    tracks: Tuple[TrackState, ...]
    events: Tuple[Event, ...]

    def to_dict(self) -> dict:
        return {"frame": self.frame, "time": round(self.time, 3), "detected": self.detected,
                "tracks": [t.to_dict() for t in self.tracks]}


@dataclass
class _Identity:
    """A track's identification state: its best descriptors (rank, vector) and the decision."""

    best: List[Tuple[float, np.ndarray]] = field(default_factory=list)
    decided: bool = False
    name: Optional[str] = None
    score: Optional[float] = None
    at: float = 0.0
    fresh: bool = False  # a crop arrived since the last identification


@dataclass
class Stats:
    """Counters of one stream (``FaceStream.stats``)."""

    frames: int = 0
    detections: int = 0
    embedded: int = 0
    detect_ms: float = 0.0
    embed_ms: float = 0.0
    dropped: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"frames": self.frames, "dropped": self.dropped,
                "fps": round(self.frames / self.seconds, 2) if self.seconds else None,
                "detect_ms": round(self.detect_ms / self.detections, 2) if self.detections else None,
                "embed_ms": round(self.embed_ms / self.embedded, 2) if self.embedded else None,
                "detections": self.detections, "faces_embedded": self.embedded,
                "seconds": round(self.seconds, 3)}


class FaceStream:
    """An iterator of ``FrameResult`` over ``source`` (a name for ``video.open_source`` or a ``FrameSource``),
    for one pass: the source is closed when the iteration ends."""

    def __init__(self, source: Union[str, int, Path, FrameSource], verifier: "FaceVerifier", gallery: "FaceGallery",
                 *, detect_every: int = 5, min_crops: int = 2, best_crops: int = 5, reid_after: float = 10.0,
                 reid_margin: float = 0.05, max_faces: int = 8, **source_options):
        if min(detect_every, min_crops, best_crops, max_faces) < 1 or min_crops > best_crops:
            raise SfpnError("detect_every, min_crops, best_crops and max_faces must be >= 1, min_crops <= best_crops")
        if len(gallery) == 0:
            raise SfpnError(f"{gallery.path}: the gallery is empty; enrol someone first")
        self.verifier, self.gallery = verifier, gallery
        # Fails here when no threshold is known; taken again at each lookup (a refit may change it).
        self.threshold = verifier.gallery_operating_point(gallery)[0].threshold
        self.detect_every, self.min_crops, self.best_crops = detect_every, min_crops, best_crops
        self.reid_after, self.reid_margin, self.max_faces = reid_after, reid_margin, max_faces
        self.source = source if isinstance(source, FrameSource) else open_source(source, **source_options)
        self.tracker = Tracker()
        self.stats = Stats()
        self._ids: Dict[int, _Identity] = {}  # live tracks only: memory stays bounded
        self._ended: Dict[Optional[str], int] = {}  # tracks that left, by identity (None: unknown)
        self._stopped = False

    def stop(self) -> None:
        """End the iteration after the current frame (safe from a signal handler)."""
        self._stopped = True
        self.source.stop()

    def __iter__(self) -> Iterator[FrameResult]:
        v = self.verifier  # warm up (a backend's first run is slow) so the first face costs what later ones do
        v.embed_crops(np.zeros((2 if v.flip else 1, 3, v.crop_spec.size, v.crop_spec.size), np.float32))
        start = time.perf_counter()
        last_detect, force = 0, True
        try:
            for frame in self.source:
                if self._stopped:
                    break
                due = force or frame.index - last_detect >= self.detect_every
                events = self._detect(frame) if due else []
                if due:
                    last_detect = frame.index
                height, width = frame.image.shape[:2]
                gone = self.tracker.leaving(frame.index, width, height)
                events += [self._leave(t, frame) for t in gone]
                force = bool(gone) or self.tracker.uncertain()
                self.stats.frames += 1
                self.stats.dropped = self.source.dropped
                self.stats.seconds = time.perf_counter() - start
                yield FrameResult(frame.index, frame.time, due, self._states(frame.index, due), tuple(events))
                if self._stopped:
                    break
        finally:
            self.stats.seconds = time.perf_counter() - start
            self.source.close()

    def _detect(self, frame: Frame) -> List[Event]:
        t0 = time.perf_counter()
        found = find_faces(self.verifier.detector, frame.image, retry_pad=None, pick="largest")
        faces = [d.face for d in found[:self.max_faces]]
        self.stats.detect_ms += (time.perf_counter() - t0) * 1e3
        self.stats.detections += 1
        update = self.tracker.update(faces, frame.index)
        events = [self._leave(t, frame) for t in update.lost]
        for track in update.new:
            self._ids[track.id] = _Identity()
            events.append(self._event("enter", track, frame))
        fresh = [t for t, _ in update.matched] + update.new
        if fresh:
            self._add_crops(frame, fresh)
        for track in fresh:
            events += self._identify(track, frame)
        return events

    def _add_crops(self, frame: Frame, tracks: List[Track]) -> None:
        v = self.verifier
        height, width = frame.image.shape[:2]
        tracks = [t for t in tracks if visible_fraction(t.box, width, height) >= MIN_INSIDE
                  and self._wants_crops(self._ids[t.id], frame.time)]
        faces = [t.face for t in tracks]
        if not faces:
            return
        crops = v.crop_spec.crop_boxes([frame.image] * len(faces), [f.box for f in faces], threads=v.threads)
        judged = [quality.assess(f, c, v.quality_gate) for f, c in zip(faces, crops)]
        keep = [i for i, q in enumerate(judged) if q.passed]
        if not keep:
            return
        t0 = time.perf_counter()
        desc = v.embed_faces([frame.image] * len(keep), [faces[i] for i in keep])
        self.stats.embed_ms += (time.perf_counter() - t0) * 1e3
        self.stats.embedded += len(keep)
        for i, d in zip(keep, desc):
            state = self._ids[tracks[i].id]
            rank = judged[i].blur * min(1.0, judged[i].size_px / v.crop_spec.size)
            state.best = sorted(state.best + [(rank, d)], key=lambda x: -x[0])[:self.best_crops]
            state.fresh = True

    def _wants_crops(self, state: _Identity, now: float) -> bool:
        """Undecided, near the threshold, or due for re-identification: only then is a crop embedded."""
        near = state.score is not None and abs(state.score - self.threshold) < self.reid_margin
        return not state.decided or near or now - state.at >= self.reid_after

    def _identify(self, track: Track, frame: Frame) -> List[Event]:
        state = self._ids[track.id]
        if len(state.best) < self.min_crops or not state.fresh or not self._wants_crops(state, frame.time):
            return []
        template = l2_normalize(np.ascontiguousarray(np.mean([d for _, d in state.best], axis=0)[None], np.float32))
        op, calibrated = self.verifier.gallery_operating_point(self.gallery)
        self.threshold = op.threshold
        best = self.gallery.identify_batch(template, 1, calibrated=calibrated)[0][0]
        name = best.name if best.score >= self.threshold else None
        state.at, state.fresh = frame.time, False
        first = not state.decided
        if state.name is None or name == state.name:
            state.score = best.score
        if first or (state.name is None and name is not None):
            state.decided, state.name = True, name
            return [self._event("identify", track, frame)]
        return []

    def _leave(self, track: Track, frame: Frame) -> Event:
        event = self._event("leave", track, frame, track.box_at(frame.index))
        name = self._ids.pop(track.id).name
        self._ended[name] = self._ended.get(name, 0) + 1
        return event

    def _event(self, kind: str, track: Track, frame: Frame, box=None) -> Event:
        state = self._ids.get(track.id) or _Identity()
        box = track.box if box is None else box
        return Event(kind, track.id, state.name, state.score, self.threshold,
                     tuple(float(v) for v in box), frame.index, frame.time)

    def _states(self, index: int, detected: bool) -> Tuple[TrackState, ...]:
        out = []
        for t in self.tracker.tracks:
            state = self._ids[t.id]
            box = t.box if t.seen == index else t.box_at(index)
            out.append(TrackState(t.id, tuple(float(v) for v in box), detected and t.seen == index,
                                  state.name, state.score))
        return tuple(out)

    def summary(self) -> dict:
        """Tracks seen, how many tracks each identity was named in, unknown tracks, and the stats."""
        counts = dict(self._ended)
        for state in self._ids.values():
            counts[state.name] = counts.get(state.name, 0) + 1
        names = {name: n for name, n in sorted(counts.items(), key=lambda x: str(x[0])) if name is not None}
        return {"source": self.source.name, "tracks": sum(counts.values()), "identities": names,
                "unknown_tracks": counts.get(None, 0),
                "threshold": round(self.threshold, 4), **self.stats.to_dict()}
