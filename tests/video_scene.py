"""A short test video built from real CFP photos: enrolled people and a stranger entering, moving,
leaving, and one person returning. Ground truth: which actor is where on every frame."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

SIZE = (320, 240)  # width, height
FPS = 10.0
FRAMES = 90
TILE = 104  # a photo's longer side in the video, px


@dataclass(frozen=True)
class Actor:
    """A CFP person's photo moving along ``path``: (frame, x, y) keyframes of its top-left corner,
    linearly interpolated, visible from the first keyframe to the last."""

    name: str
    person: int
    path: Tuple[Tuple[int, float, float], ...]

    def where(self, frame: int) -> Optional[Tuple[float, float]]:
        frames = [p[0] for p in self.path]
        if not frames[0] <= frame <= frames[-1]:
            return None
        return (float(np.interp(frame, frames, [p[1] for p in self.path])),
                float(np.interp(frame, frames, [p[2] for p in self.path])))


ENROLLED = ("p010", "p011", "p013")  # p013 is enrolled but never appears
ACTORS = (
    Actor("p010", 10, ((0, -80, 70), (8, 10, 70), (20, 40, 80), (30, -110, 80))),         # enters, leaves left
    Actor("p011", 11, ((6, 320, 50), (16, 200, 50), (50, 190, 70), (89, 205, 60))),       # enters right, stays
    Actor("stranger", 14, ((34, -80, 60), (46, 70, 70), (54, 70, 130), (64, 70, 250))),  # enters, leaves down
    Actor("p010", 10, ((62, -80, 90), (70, 30, 80), (89, 50, 75))),                       # returns
)


def photo(cfp_root: Path, person: int, n: int = 1) -> Path:
    return Path(cfp_root) / "Data" / "Images" / f"{person:03d}" / "frontal" / f"{n:02d}.jpg"


def tile(cfp_root: Path, person: int) -> np.ndarray:
    image = cv2.imread(str(photo(cfp_root, person)))
    scale = TILE / max(image.shape[:2])
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def render(cfp_root: Path, frames: int = FRAMES, actors: Sequence[Actor] = ACTORS) -> List[np.ndarray]:
    tiles = {a.person: tile(cfp_root, a.person) for a in actors}
    out = []
    for f in range(frames):
        canvas = np.full((SIZE[1], SIZE[0], 3), 150, np.uint8)
        canvas[:, :, 1] = 140 + (np.arange(SIZE[0]) // 8 % 2 * 10).astype(np.uint8)  # faint stripes: not flat
        for actor in actors:
            at = actor.where(f)
            if at is None:
                continue
            t = tiles[actor.person]
            x, y = int(round(at[0])), int(round(at[1]))
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + t.shape[1], SIZE[0]), min(y + t.shape[0], SIZE[1])
            if x1 > x0 and y1 > y0:
                canvas[y0:y1, x0:x1] = t[y0 - y:y1 - y, x0 - x:x1 - x]
        out.append(canvas)
    return out


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = FPS) -> Path:
    """An MJPG .avi (what headless OpenCV's FFmpeg writes everywhere)."""
    size = (frames[0].shape[1], frames[0].shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def actor_at(box: Sequence[float], frame: int, cfp_root: Path, actors: Sequence[Actor] = ACTORS) -> Optional[Actor]:
    """The actor whose photo holds the centre of ``box`` on ``frame`` (None: background)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for actor in actors:
        at = actor.where(frame)
        if at is None:
            continue
        h, w = tile_shape(cfp_root, actor.person)
        if at[0] <= cx < at[0] + w and at[1] <= cy < at[1] + h:
            return actor
    return None


_SHAPES: Dict[int, Tuple[int, int]] = {}


def tile_shape(cfp_root: Path, person: int) -> Tuple[int, int]:
    if person not in _SHAPES:
        _SHAPES[person] = tile(cfp_root, person).shape[:2]
    return _SHAPES[person]


def fully_visible(actor: Actor, frame: int, cfp_root: Path) -> bool:
    at = actor.where(frame)
    if at is None:
        return False
    h, w = tile_shape(cfp_root, actor.person)
    return at[0] >= 0 and at[1] >= 0 and at[0] + w <= SIZE[0] and at[1] + h <= SIZE[1]
