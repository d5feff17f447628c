"""Video files: batch (every frame, as fast as the pipeline takes them) or realtime (paced)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from pipeline.errors import ConfigError, SourceError
from pipeline.policy import paced_frame_missed
from pipeline.sources.base import Grab, local_path, redact_uri, register_source, source_kind
from pipeline.sources.nvdec import open_capture
from pipeline.sources.stream import open_ffmpeg
from pipeline.videoio import check_video_path, video_info

if TYPE_CHECKING:
    from pipeline.config import SourceConfig

log = logging.getLogger(__name__)


class FileSource:
    """Reads a video file with OpenCV's FFmpeg backend: a local path, a ``file://`` URL, or an
    HTTP(S) URL to a finite file (read like a local one: every frame once, then the end).

    ``realtime``: frames are released at the file's frame rate (times ``speed``), like a camera;
    if the reader falls behind, frames whose time has passed are skipped without decoding, as a
    camera would not wait (``skipped`` counts them). ``loop`` restarts at the end (live stand-in).
    """

    is_file = True
    decoder = "cpu"  # or "nvdec" (sources[].decoder, resolved by pipeline.sources.nvdec.apply_decoders)
    measured_fps = 0.0  # a file's rate is its header's (``fps``), never measured
    down_at_end = False  # only a live stream can be down

    def __init__(self, path: str, source_id: str, realtime: bool = False, speed: float = 1.0, loop: bool = False,
                 cap: cv2.VideoCapture | None = None, start_frame: int = 0):
        self.is_url = source_kind(path) == "http"
        self._target = path if self.is_url else local_path(path)  # may hold credentials: never logged
        self.path = Path(self._target)
        self.id = source_id
        self.uri = redact_uri(path) if self.is_url else str(path)
        self.realtime = realtime
        self.is_live = realtime
        self.speed = speed
        self.loop = loop
        self.fps = 0.0
        self.size = (0, 0)
        self.claimed_frames = 0
        self.decoded = 0  # frames read in the current pass
        self.skipped = 0  # realtime frames skipped because their time had passed
        self._cap: cv2.VideoCapture | None = cap  # an HTTP file arrives already opened by the probe
        self._first: object = None  # a URL's first frame, read at open to prove the file is readable
        self._t0 = 0
        self._index = 0  # frame index in the timeline (across loops)
        self.ever_opened = False
        self.start_frame = start_frame  # the first frame read is this index (see _skip_to_start)

    def _open_capture(self) -> cv2.VideoCapture:
        if self.is_url:
            return open_ffmpeg(self._target, [])
        return open_capture(str(self.path), self.decoder,
                            lambda: cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG), label=self.id)

    def open(self) -> None:
        if not self.is_url:
            check_video_path(self.path)
        cap = self._cap if self._cap is not None else self._open_capture()
        if not cap.isOpened():
            cap.release()
            self._cap = None
            raise SourceError(f"{self.uri}: cannot open as a video (OpenCV/FFmpeg could not decode it)")
        self._cap = cap
        info = video_info(cap)
        self.fps = info.fps if 0 < info.fps < 1000 else 25.0
        self.size = (info.width, info.height)
        self.claimed_frames = info.claimed_frames
        self._t0 = time.monotonic_ns()
        self.ever_opened = True
        if self.is_url:
            ok, self._first = cap.read()
            if not ok:
                self.close()
                raise SourceError(
                    f"{self.uri}: the server sent the file's header ({self.claimed_frames} frames) but no frame "
                    "could be read: its index (an MP4 'moov' atom) is probably at the end, and the server ignores "
                    "HTTP Range requests, so FFmpeg cannot reach it; serve it from a server with range support, "
                    "or move the index to the front (ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4)")
        self._skip_to_start()

    def _skip_to_start(self) -> None:
        """Advance to ``start_frame`` by grabbing (decoding without converting) the frames before
        it: exact on every codec, where seeking by ``CAP_PROP_POS_FRAMES`` lands on a keyframe
        near it on some. A file shorter than that simply ends."""
        while self._index < self.start_frame and self._grab_next():
            pass

    def _rewind(self) -> bool:
        assert self._cap is not None
        self._cap.release()
        self._cap = self._open_capture()
        return self._cap.isOpened()

    def read(self) -> Grab | None:
        if self._cap is None:
            raise SourceError(f"{self.uri}: read before open")
        if self.realtime:
            period_ns = 1e9 / (self.fps * self.speed)
            if self._index == self.start_frame:  # the clock starts at the first read, not at open
                self._t0 = time.monotonic_ns() - int(self.start_frame * period_ns)
            due = self._t0 + int(self._index * period_ns)
            now = time.monotonic_ns()
            # Behind by more than a frame: skip frames whose time has passed, without decoding.
            while paced_frame_missed(now, due, period_ns):
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
        if self._first is not None:
            self._first = None
            ok = True
        else:
            ok = self._cap.grab()
        if not ok and self.loop and self.decoded and self._rewind():
            self.decoded = 0
            ok = self._cap.grab()
        if ok:
            self._index += 1
            self.decoded += 1
        return ok

    def _read_next(self) -> tuple[bool, object]:
        if self._first is not None:
            ok, image, self._first = True, self._first, None
        else:
            ok, image = self._cap.read()
        if not ok and self.loop and self.decoded and self._rewind():
            self.decoded = 0
            ok, image = self._cap.read()
        if ok:
            self._index += 1
            self.decoded += 1
        return ok, image

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def file_source(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None],
          cap=None) -> FileSource:
    """A file source from its config (``cap``: an already opened capture, from the HTTP probe)."""
    if cfg.clock == "sender":
        raise ConfigError(f"sources[{sid}].clock: sender needs a live stream that carries the sender's time "
                          f"(rtsp://); {redact_uri(cfg.uri)} is read as a file")
    return FileSource(cfg.uri, sid, realtime=cfg.realtime, speed=cfg.speed, loop=cfg.loop, cap=cap,
                      start_frame=cfg.start_frame)


register_source("file", file_source)  # no URI form: a URI no other kind claims is a file path
