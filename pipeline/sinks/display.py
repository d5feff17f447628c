"""A window per source, where a display exists (X11/Wayland); 'q' or Esc asks the pipeline to stop.

HighGUI (Qt, GTK, Cocoa) must be driven from one thread, and some toolkits insist on the main
thread. So the sink thread only hands the newest annotated frame over (``write``), and the main
thread, which runs the pipeline's watch loop, shows it (``pump``) and closes the window
(``destroy``). A slow display never holds the sinks back: it shows the newest frame, skipping
the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.annotate import draw
from pipeline.frame import Frame
from pipeline.sinks import SinkBase, SinkContext, register_sink
from pipeline.tracking.draw import draw_tracking

if TYPE_CHECKING:
    from pipeline.config import SourceConfig
    from pipeline.sources.base import Source

log = logging.getLogger(__name__)


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class DisplaySink(SinkBase):
    name = "display"
    needs_main_thread = True  # HighGUI: pump() and destroy() run in the main thread

    def __init__(self, source_id: str, names: tuple[str, ...], request_stop: Callable[..., None]):
        self.window = f"inferpath: {source_id}"
        self.names = names
        self.request_stop = request_stop
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        self._enabled = True
        self._shown = False
        self.written = 0  # frames handed over to the main thread
        self.frames_shown = 0

    def write(self, frame: Frame) -> None:
        """Sink thread: keep the newest annotated frame for the main thread to show."""
        if not self._enabled:
            return
        image = frame.image.copy()
        if frame.detections is not None:
            draw(image, frame.detections, self.names)
        if frame.tracking is not None:
            draw_tracking(image, frame.tracking)
        with self._lock:
            self._latest = image
        self.written += 1

    def pump(self) -> None:
        """Main thread: show the newest frame, if any, and handle a key press."""
        with self._lock:
            image, self._latest = self._latest, None
        if not self._enabled:
            return
        try:
            if image is not None:
                cv2.imshow(self.window, image)
                self._shown = True
                self.frames_shown += 1
            if self._shown and (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
                self.request_stop("key pressed in the display window")
        except cv2.error as exc:  # e.g. opencv-python-headless: no GUI support
            log.warning("display disabled: %s", str(exc).strip().splitlines()[-1])
            self._enabled = False

    def close(self) -> None:
        """Sink thread, at the end of the stream: nothing more to show."""
        self._enabled = False

    def destroy(self) -> None:
        """Main thread: close the window."""
        if self._shown:
            try:
                cv2.destroyWindow(self.window)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._shown = False


def _display(src: Source, scfg: SourceConfig, ctx: SinkContext) -> DisplaySink | None:
    if not ctx.output.display:
        return None
    if not display_available():
        log.warning("output.display: no display ($DISPLAY unset); display sink skipped")
        return None
    return DisplaySink(src.id, ctx.names, ctx.request_stop)


register_sink("display", _display, order=30, pixels=True)
