"""Frame sources for ``sfpn-edge watch``: a camera index, a video file, an rtsp/http URL or a folder of frames.

    with open_source("door.avi") as source:          # file mode: every frame, times from the frame rate
        for frame in source:
            frame.index, frame.time, frame.image     # uint8 BGR
    ArraySource(images, fps=10)                      # frames you already hold (FaceStream takes any FrameSource)

Cameras and URLs are *live*: a reader thread keeps grabbing frames into a bounded queue and the
oldest waiting frame is dropped when the consumer is slower (``dropped`` counts them), so results
never lag the scene by more than ``QUEUE_FRAMES`` frames and memory stays flat. Files and folders
are read in the consumer's thread, every frame, so results are deterministic.

A live source that fails to open or stops delivering frames is reopened ``retries`` times with
exponential backoff (``backoff``, doubling, at most ``MAX_BACKOFF`` s), then ``SourceError``. A
video file that cannot be opened, decodes no frame, or ends before the frame count its header
declares (truncated or corrupt) raises ``SourceError`` too.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

import cv2
import numpy as np

from sfpn_edge.detect import check_image
from sfpn_edge.errors import SfpnError
from sfpn_edge.io import IMAGE_SUFFIXES, read_image

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own chatter would bypass our one-line errors
QUEUE_FRAMES = 2
MAX_BACKOFF = 8.0
DEFAULT_FPS = 25.0
LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class SourceError(SfpnError):
    """A camera, stream, video file or folder of frames cannot be read."""


@dataclass(frozen=True)
class Frame:
    """One frame: its index in the source, its time in seconds (file: index / fps; live: since the
    source opened) and the uint8 BGR image."""

    index: int
    time: float
    image: np.ndarray


def is_live(source: Union[str, int]) -> bool:
    """Cameras (an index) and network streams are live; files and folders are not."""
    text = str(source)
    return text.isdigit() or text.lower().startswith(LIVE_SCHEMES)


def open_source(source: Union[str, int, Path], *, fps: Optional[float] = None, retries: int = 3,
                backoff: float = 0.5, timeout: float = 5.0, realtime: Optional[bool] = None) -> "FrameSource":
    """The frame source ``source`` names. ``fps`` overrides the container's rate (folders: default
    ``DEFAULT_FPS``); ``timeout`` bounds opening and each read of a stream (seconds); ``realtime``
    (default: live sources only) reads in a thread and drops frames rather than lag."""
    if fps is not None and not fps > 0:
        raise SfpnError(f"fps must be positive, got {fps!r}")
    text = str(source)
    if is_live(text):
        capture = _Capture(int(text) if text.isdigit() else text, live=True, retries=retries,
                           backoff=backoff, timeout=timeout, fps=fps)
        return ThreadedSource(capture) if realtime is not False else capture
    path = Path(text)
    if path.is_dir():
        plain: FrameSource = FolderSource(path, fps or DEFAULT_FPS)
    elif path.is_file():
        plain = _Capture(text, live=False, retries=0, backoff=backoff, timeout=timeout, fps=fps)
    elif path.exists():
        raise SourceError(f"{text}: not a regular file or folder (a FIFO or device is not read, so it cannot hang)")
    else:
        raise SourceError(f"{text}: no such file or folder (nor a camera index or stream URL)")
    return ThreadedSource(plain) if realtime else plain


class FrameSource:
    """Iterable of ``Frame``; ``close()`` (or ``with``) releases it. ``dropped``: frames skipped to keep up."""

    name: str = ""
    live: bool = False
    fps: float = DEFAULT_FPS
    dropped: int = 0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def stop(self) -> None:
        """Make the iteration end soon (safe from a signal handler); ``close`` still releases."""

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySource(FrameSource):
    """Frames already in memory (uint8 BGR arrays, e.g. from picamera2), in file mode: every frame,
    times from ``fps``."""

    def __init__(self, images: Iterable[np.ndarray], fps: float = DEFAULT_FPS, name: str = "frames"):
        self.images, self.fps, self.name = images, fps, name

    def __iter__(self) -> Iterator[Frame]:
        for i, image in enumerate(self.images):
            yield Frame(i, i / self.fps, check_image(image))


class FolderSource(FrameSource):
    """The images of a folder in name order (``sfpn_edge.io.read_image``: same checks as photos)."""

    def __init__(self, folder: Path, fps: float):
        self.name, self.fps = str(folder), fps
        self.paths: List[Path] = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            yield Frame(i, i / self.fps, read_image(path))


class _Capture(FrameSource):
    """``cv2.VideoCapture`` with open/read timeouts, reconnection (live) and truncation checks (files)."""

    def __init__(self, target: Union[str, int], *, live: bool, retries: int, backoff: float,
                 timeout: float, fps: Optional[float]):
        if retries < 0 or backoff < 0 or not timeout > 0:
            raise SfpnError("retries and backoff must be >= 0 and timeout > 0")
        self.target, self.live = target, live
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.retries, self.backoff, self.timeout_ms = retries, backoff, int(timeout * 1000)
        self._stop = threading.Event()
        self._capture = self._open()
        rate = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps or (rate if 0 < rate < 1000 else DEFAULT_FPS)
        self.declared = 0 if live else int(max(self._capture.get(cv2.CAP_PROP_FRAME_COUNT), 0))

    def _open(self) -> cv2.VideoCapture:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
            level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a failed open is our error, not a warning
            try:
                capture = (cv2.VideoCapture(self.target) if isinstance(self.target, int)
                           else cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params))
            finally:
                cv2.utils.logging.setLogLevel(level)
            if capture.isOpened():
                return capture
            capture.release()
            if attempt < self.retries and not self._wait(delay):
                break
            delay = min(delay * 2, MAX_BACKOFF)
        tries = f" after {self.retries + 1} attempts" if self.retries else ""
        why = ("it" + tries + " (missing or busy)" if isinstance(self.target, int)
               else "the stream" + tries + " (unreachable or not a video stream)" if self.live
               else "the video file (corrupt, truncated, or not a video OpenCV's FFmpeg decodes)")
        raise SourceError(f"{self.name}: cannot open {why}")

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless closed meanwhile (False then)."""
        return not self._stop.wait(seconds)

    def __iter__(self) -> Iterator[Frame]:
        index, start = 0, time.monotonic()
        while not self._stop.is_set():
            ok, image = self._capture.read()
            if not ok or image is None:
                if not self.live:
                    self._check_complete(index)
                    return
                if self._stop.is_set():
                    return
                self._capture.release()
                self._capture = self._open()  # SourceError once the retries are spent
                continue
            yield Frame(index, time.monotonic() - start if self.live else index / self.fps, image)
            index += 1

    def _check_complete(self, frames: int) -> None:
        if frames == 0:
            raise SourceError(f"{self.name}: no frame could be decoded (corrupt or not a video)")
        if self.declared and frames < self.declared:
            raise SourceError(f"{self.name}: the video ends after {frames} of its {self.declared} frames "
                              "(truncated or corrupt)")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._capture.release()


class ThreadedSource(FrameSource):
    """Real-time reading: a thread reads ``inner`` into a queue of ``QUEUE_FRAMES``; when it is full
    the oldest frame is dropped (counted in ``dropped``). Errors of the reader reach the consumer.
    A file or folder is played at its frame rate, as a camera would deliver it."""

    def __init__(self, inner: FrameSource):
        self.inner, self.name, self.live, self.fps = inner, inner.name, True, inner.fps
        self._queue: "queue.Queue" = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="sfpn-frame-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        start = time.monotonic()
        try:
            for frame in self.inner:
                if not self.inner.live and self._stop.wait(max(0.0, start + frame.time - time.monotonic())):
                    return
                if self._stop.is_set():
                    return
                self._put(frame)
            self._put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    if self._queue.get_nowait() is not None:
                        self.dropped += 1
                except queue.Empty:
                    pass

    def __iter__(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stop.set()
        self.inner.stop()

    def close(self) -> None:
        self.stop()
        self._thread.join(timeout=getattr(self.inner, "timeout_ms", 0) / 1000 + 1.0)
        if not self._thread.is_alive():  # never release a capture a stuck read() still uses
            self.inner.close()
