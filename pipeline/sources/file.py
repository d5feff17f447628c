"""Video files: batch (every frame, as fast as the pipeline takes them) or realtime (paced)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2

from pipeline.errors import SourceError
from pipeline.sources.base import Grab

log = logging.getLogger(__name__)


class FileSource:
    """Reads a video file with OpenCV's FFmpeg backend.

    ``realtime``: frames are released at the file's frame rate (times ``speed``), like a camera;
    if the reader falls behind, frames whose time has passed are skipped without decoding, as a
    camera would not wait (``skipped`` counts them). ``loop`` restarts at the end (live stand-in).
    """

    is_live = False

    def __init__(self, path: str, source_id: str, realtime: bool = False, speed: float = 1.0, loop: bool = False):
        self.path = Path(path)
        self.id = source_id
        self.uri = str(path)
        self.realtime = realtime
        self.is_live = realtime
        self.speed = speed
        self.loop = loop
        self.fps = 0.0
        self.size = (0, 0)
        self.claimed_frames = 0
        self.decoded = 0  # frames read in the current pass
        self.skipped = 0  # realtime frames skipped because their time had passed
        self._cap: cv2.VideoCapture | None = None
        self._t0 = 0
        self._index = 0  # frame index in the timeline (across loops)
        self._loop_offset = 0.0

    def open(self) -> None:
        if not self.path.exists():
            raise SourceError(f"{self.path}: video file not found")
        if not self.path.is_file():
            raise SourceError(f"{self.path}: not a file; expected a video file")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: cannot open as a video (OpenCV/FFmpeg could not decode it)")
        self._cap = cap
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not 0 < self.fps < 1000:
            self.fps = 25.0
        self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.claimed_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._t0 = time.monotonic_ns()

    def _rewind(self) -> bool:
        assert self._cap is not None
        self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        return self._cap.isOpened()

    def read(self) -> Grab | None:
        if self._cap is None:
            raise SourceError(f"{self.path}: read before open")
        if self.realtime:
            if self._index == 0:  # the clock starts at the first read, not at open
                self._t0 = time.monotonic_ns()
            period_ns = 1e9 / (self.fps * self.speed)
            due = self._t0 + int(self._index * period_ns)
            now = time.monotonic_ns()
            # Behind by more than a frame: skip frames whose time has passed, without decoding.
            while now - due > period_ns:
                if not self._grab_next():
                    return None
                self.skipped += 1
                due = self._t0 + int(self._index * period_ns)
            if due > now:
                time.sleep((due - now) / 1e9)
            ok, image = self._read_next()
            if not ok:
                return None
            return Grab(image, (self._index - 1) / self.fps, due)
        ok, image = self._read_next()
        if not ok:
            return None
        return Grab(image, (self._index - 1) / self.fps, time.monotonic_ns())

    def _grab_next(self) -> bool:
        ok = self._cap.grab()
        if not ok and self.loop and self.decoded and self._rewind():
            self.decoded = 0
            ok = self._cap.grab()
        if ok:
            self._index += 1
            self.decoded += 1
        return ok

    def _read_next(self) -> tuple[bool, object]:
        ok, image = self._cap.read()
        if not ok and self.loop and self.decoded and self._rewind():
            self.decoded = 0
            ok, image = self._cap.read()
        if ok:
            self._index += 1
            self.decoded += 1
        return ok, image

    @property
    def truncated(self) -> bool:
        """True when fewer frames decoded than the header claims (a damaged or cut file)."""
        return not self.realtime and not self.loop and 0 < self.decoded < self.claimed_frames - 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
