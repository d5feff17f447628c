"""Annotated video: same size and frame rate as the input; closed on every kind of stop."""

from __future__ import annotations

from pathlib import Path

import cv2

from pipeline.annotate import draw
from pipeline.errors import SinkError
from pipeline.frame import Frame
from pipeline.tracking.draw import draw_tracking


class VideoSink:
    """Writes annotated frames with OpenCV's VideoWriter (``mp4v`` in an .mp4 by default)."""

    name = "video"

    def __init__(self, path: Path, fps: float, size: tuple[int, int], names: tuple[str, ...], codec: str = "mp4v"):
        self.path = path
        self.names = names
        self.size = size
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec[:4].ljust(4)), fps, size)
        if not self._writer.isOpened():
            raise SinkError(f"{path}: cannot open a video writer (codec {codec!r}, {size[0]}x{size[1]} at {fps:g} fps)")
        self.frames = 0

    def write(self, frame: Frame) -> None:
        image = frame.image
        if frame.detections is not None and len(frame.detections):
            image = draw(image.copy(), frame.detections, self.names)
        if frame.tracking is not None:  # trails, counting lines and zones
            image = draw_tracking(image if image is not frame.image else image.copy(), frame.tracking)
        if (image.shape[1], image.shape[0]) != self.size:  # a stream that changed size on reconnect
            image = cv2.resize(image, self.size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
