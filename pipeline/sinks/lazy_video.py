"""The video sink as the pipeline uses it: opened at the first frame (a stream's size is known
only then), and, for a live stream, at the rate the stream really delivers."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.sinks import SinkBase, SinkContext, register_sink
from pipeline.sinks.video import VideoSink

if TYPE_CHECKING:
    from pipeline.config import SourceConfig
    from pipeline.sources.base import Source

log = logging.getLogger(__name__)


class LazyVideoSink(SinkBase):
    """Opens the VideoWriter at the first frame (a stream's size is known only then), but checks
    the path up front so an unwritable output fails before any work.

    A live source (``rate`` given) is written at its real rate: the first second of frames (at
    most ``BUFFER`` of them) waits here while the source measures how fast it delivers, then the
    writer opens at that rate and places every frame by its capture time."""

    name = "video"
    BUFFER = 12

    def __init__(self, path: Path, fps: float, size: tuple[int, int], names, codec: str,
                 rate: Callable[[], float] | None = None) -> None:
        self.path, self.fps, self.size, self.names, self.codec = path, fps, size, names, codec
        self.rate = rate
        self._sink: VideoSink | None = None
        self._pending: list = []
        if size != (0, 0) and rate is None:
            self._sink = VideoSink(path, fps, size, names, codec)

    @classmethod
    def for_source(cls, src: Source, path: Path, names: tuple[str, ...], codec: str) -> LazyVideoSink:
        """A video of ``src``: at the rate it measures when it is a live stream, else at its
        reported rate (25 fps when it reports none)."""
        if src.size == (0, 0):
            log.info("%s: video sink opens at the first frame", src.id)
        rate = (lambda: src.measured_fps) if src.is_live and not src.is_file else None
        return cls(path, src.fps or 25.0, src.size, names, codec, rate=rate)

    @property
    def written(self) -> int:
        return (self._sink.frames if self._sink else 0) + len(self._pending)

    def _open(self, frame) -> None:
        h, w = frame.image.shape[:2]
        fps = self.fps
        if self.rate is not None:
            measured = self.rate()
            if measured > 0:
                fps = round(measured, 2)
            log.info("%s: video at %.2f fps (%s)", self.path.name, fps,
                     "the rate the stream delivers" if measured > 0 else "the rate the stream reports")
        self._sink = VideoSink(self.path, fps, (w, h), self.names, self.codec, timed=self.rate is not None)

    def write(self, frame) -> None:
        if self._sink is None and self.rate is not None:
            self._pending.append(copy.copy(frame))  # the sink stage frees frame.image after delivery
            span_s = (frame.captured_ns - self._pending[0].captured_ns) / 1e9
            if len(self._pending) < self.BUFFER and span_s < 1.0:
                return
            self._flush()
            return
        if self._sink is None:
            self._open(frame)
        self._sink.write(frame)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._open(pending[0])
            for f in pending:
                self._sink.write(f)

    def close(self) -> None:
        if self._pending:
            self._flush()
        if self._sink is not None:
            self._sink.close()


def _video(src: Source, scfg: SourceConfig, ctx: SinkContext) -> LazyVideoSink | None:
    if not ctx.output.video:
        return None
    return LazyVideoSink.for_source(src, ctx.directory(scfg) / f"{src.id}.mp4", ctx.names, ctx.output.video_codec)


register_sink("video", _video, order=20, pixels=True)
