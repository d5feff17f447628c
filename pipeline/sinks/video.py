"""Annotated video: same size and frame rate as the input; closed on every kind of stop."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from pipeline.annotate import draw
from pipeline.errors import SinkError
from pipeline.frame import Frame
from pipeline.tracking.draw import draw_tracking

log = logging.getLogger(__name__)


class VideoSink:
    """Writes annotated frames with OpenCV's VideoWriter (``mp4v`` in an .mp4 by default).

    ``timed`` (live sources): each frame is placed by its capture time, so the video lasts as
    long as the stream did: a frame that arrives after a gap (frames dropped, a slow camera, a
    reconnect) first repeats the previous one to fill the gap, and one that arrives ahead of its
    time (a burst of buffered frames at connect) is left out. Files are written frame by frame.

    The encoders need even sizes: an odd width or height loses its last column or row (said once
    in the log), rather than OpenCV rescaling the picture.
    """

    name = "video"

    def __init__(self, path: Path, fps: float, size: tuple[int, int], names: tuple[str, ...], codec: str = "mp4v",
                 timed: bool = False):
        self.path = path
        self.names = names
        self.fps = fps
        self.timed = timed
        self.input_size = size
        self.size = (size[0] - size[0] % 2, size[1] - size[1] % 2)
        if self.size != size:
            log.info("%s: written at %dx%d: the %s encoder needs even sizes, so the last %s of the %dx%d input "
                     "is cut", path.name, *self.size, codec,
                     " and ".join(w for w, odd in (("column", size[0] % 2), ("row", size[1] % 2)) if odd), *size)
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec[:4].ljust(4)), fps, self.size)
        if not self._writer.isOpened():
            raise SinkError(f"{path}: cannot open a video writer (codec {codec!r}, {size[0]}x{size[1]} at {fps:g} fps)")
        self.frames = 0
        self._t0_ns: int | None = None
        self._last: np.ndarray | None = None

    def write(self, frame: Frame) -> None:
        image = frame.image
        if frame.detections is not None and len(frame.detections):
            image = draw(image.copy(), frame.detections, self.names)
        if frame.tracking is not None:  # trails, counting lines and zones
            image = draw_tracking(image if image is not frame.image else image.copy(), frame.tracking)
        if (image.shape[1], image.shape[0]) != self.input_size:  # a stream that changed size on reconnect
            image = cv2.resize(image, self.input_size)
        if self.size != self.input_size:
            image = np.ascontiguousarray(image[: self.size[1], : self.size[0]])
        if self.timed:
            if self._t0_ns is None:
                self._t0_ns = frame.captured_ns
            slot = round((frame.captured_ns - self._t0_ns) * self.fps / 1e9)
            if slot < self.frames - 1:  # ahead of real time (a burst of buffered frames at connect)
                return
            while self._last is not None and self.frames < slot:  # fill the gap: the video keeps real time
                self._writer.write(self._last)
                self.frames += 1
            self._last = image
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
