"""A window per source, where a display exists (X11/Wayland); 'q' or Esc asks the pipeline to stop."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import cv2

from pipeline.annotate import draw
from pipeline.frame import Frame

log = logging.getLogger(__name__)


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class DisplaySink:
    name = "display"

    def __init__(self, source_id: str, names: tuple[str, ...], request_stop: Callable[[], None]):
        self.window = f"inferpath: {source_id}"
        self.names = names
        self.request_stop = request_stop
        self._open = True

    def write(self, frame: Frame) -> None:
        if not self._open:
            return
        image = frame.image.copy()
        if frame.detections is not None:
            draw(image, frame.detections, self.names)
        try:
            cv2.imshow(self.window, image)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:  # e.g. opencv-python-headless: no GUI support
            log.warning("display disabled: %s", str(exc).strip().splitlines()[-1])
            self._open = False
            return
        if key in (ord("q"), 27):
            self.request_stop()

    def close(self) -> None:
        if self._open:
            try:
                cv2.destroyWindow(self.window)
            except cv2.error:
                pass
