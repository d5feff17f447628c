"""A sink that writes nothing and watches: a model that finds nothing in a source's first frames.

A wrong normalization (a model trained on 0-255 input fed 0-1, RGB fed as BGR) rarely fails: the
model runs and finds nothing. One warning, once per source, points at the spec instead of leaving
an empty JSONL to puzzle over.
"""

from __future__ import annotations

import logging

from pipeline.frame import Frame
from pipeline.sinks import SinkBase

log = logging.getLogger(__name__)

WATCH_FRAMES = 100


class NothingFoundWatch(SinkBase):
    """Warns once if none of a source's first ``frames`` delivered frames has a detection."""

    name = "nothing-found-watch"

    def __init__(self, source_id: str, model: str, normalization: str, frames: int = WATCH_FRAMES) -> None:
        self.source_id, self.model, self.normalization, self.frames = source_id, model, normalization, frames
        self.empty = 0  # frames without a detection so far; -1 once something was found
        self.warned = False

    def write(self, frame: Frame) -> None:
        if self.empty < 0 or self.warned:
            return
        if frame.detections is not None and len(frame.detections):
            self.empty = -1
            return
        self.empty += 1
        if self.empty >= self.frames:
            self.warned = True
            log.warning("%s: %s found nothing in the first %d frames; check the model's spec: scale/mean/std/colour "
                        "(input %s; see README: model spec)", self.source_id, self.model, self.frames,
                        self.normalization)

    def close(self) -> None:
        pass
