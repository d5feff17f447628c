"""Annotated video: same size and frame rate as the input; closed on every kind of stop.

Encoding runs in a thread of its own behind a bounded queue, so the sink stage (and with it the
model) never waits on the encoder: the sink thread hands the frame over and goes on. A full queue
makes the sink thread wait (a batch job drops nothing); the encoder is several times faster than
the model, so that only happens in a burst. The boxes are drawn in the encoder thread too.

Codecs (``output.video_codec``), measured on vtest.avi (768x576, 795 frames, 2-core CPU;
``docs/bench/outputs.md``):

* ``h264`` (default): H.264 through PyAV's FFmpeg (its wheels carry libx264), preset
  ``ultrafast`` with 3 B-frames (fixed pattern), CRF 26, yuv420p, ``+faststart``: every browser
  plays it, and it is 2x smaller than ``mp4v``. ``ultrafast`` costs far less than ``superfast``
  (2.3 against 3.9 ms of one core a frame with CABAC, issue 13) at the same picture quality (PSNR
  36.8 dB both). CABAC itself is left out: it decodes to the very same pictures, 4 % smaller, for
  0.4 ms more a frame (the encoder thread: drawing, conversion, encoding: 2.3 ms against 2.7 ms;
  ``docs/bench/startup.md``).
* ``vp9``: VP9 through PyAV (libvpx, realtime deadline), in the same .mp4 container.
* any other four-character code (``mp4v``, ``MJPG``, ...): OpenCV's VideoWriter, as before.
  ``mp4v`` (MPEG-4 Part 2) plays in VLC and OpenCV but in no browser.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline.annotate import draw
from pipeline.errors import SinkError
from pipeline.frame import Frame
from pipeline.tracking.draw import draw_tracking

log = logging.getLogger(__name__)

# name -> (PyAV encoder, its options). x264 "ultrafast" plus 3 B-frames (b-adapt off: the fixed
# pattern costs nothing to decide); "superfast" costs 1.6 ms more a frame at the same PSNR
# (docs/bench/outputs.md). CAVLC, ultrafast's own entropy coder: CABAC gives bit-identical
# pictures 4 % smaller for 0.4 ms more a frame (docs/bench/startup.md).
PYAV_CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "h264": ("libx264", {"preset": "ultrafast", "crf": "26", "x264-params": "bframes=3:b-adapt=0"}),
    "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "34", "b": "0"}),
}
QUEUE_FRAMES = 16  # frames waiting for the encoder, at most (then the sink thread waits: nothing is lost)


class _PyAvWriter:
    """H.264 / VP9 through PyAV. Frames go in as BGR; OpenCV converts them to I420 (about 8x
    cheaper than FFmpeg's swscale here)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], codec: str) -> None:
        try:
            import av
        except ImportError:
            raise SinkError(f"{path}: output.video_codec {codec!r} needs PyAV: pip install av "
                            "(or set output.video_codec: mp4v)") from None
        name, options = PYAV_CODECS[codec]
        rate = Fraction(round(fps * 1000), 1000) if fps > 0 else Fraction(25)
        try:
            self._container = av.open(str(path), "w", options={"movflags": "+faststart"})
            self._stream = self._container.add_stream(name, rate=rate, options=dict(options))
            self._stream.width, self._stream.height = size
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.thread_count = 1  # one core at most: the model keeps the other
            self._stream.codec_context.open()
        except Exception as exc:
            raise SinkError(f"{path}: cannot open a {codec} video writer ({size[0]}x{size[1]} at {fps:g} fps): "
                            f"{exc}") from None
        self._av = av
        self._last = None
        self._n = 0

    def write(self, image: np.ndarray | None) -> None:
        """Encode ``image``; None repeats the last frame (timed mode fills a gap)."""
        if image is not None:
            yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
            self._last = self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        self._last.pts = self._n
        self._n += 1
        for packet in self._stream.encode(self._last):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()


class _OpenCvWriter:
    """OpenCV's VideoWriter, for a four-character code (``mp4v``, ``MJPG``, ...)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], codec: str) -> None:
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec[:4].ljust(4)), fps, size)
        if not self._writer.isOpened():
            raise SinkError(f"{path}: cannot open a video writer (codec {codec!r}, {size[0]}x{size[1]} at {fps:g} fps)")
        self._last: np.ndarray | None = None

    def write(self, image: np.ndarray | None) -> None:
        if image is not None:
            self._last = image
        self._writer.write(self._last)

    def close(self) -> None:
        self._writer.release()


_STOP = object()


class EncodeWorker:
    """A thread of its own that runs ``step(*item)`` for each item handed to it, behind a queue of
    ``QUEUE_FRAMES``: the sink thread hands a frame over and goes on (it waits only while the
    queue is full). The first error is kept (``error``) for the caller to report; after it the
    queue is still emptied, so the sink thread never waits on a dead encoder."""

    def __init__(self, name: str, step: Callable[..., None]) -> None:
        self.error: BaseException | None = None
        self._step = step
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, item: tuple) -> bool:
        """Queue ``item``; False when the thread has ended (after ``finish``)."""
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue
            try:
                self._step(*item)
            except Exception as exc:  # reported by the caller (its next write, and close)
                self.error = exc

    def finish(self) -> None:
        """Run every queued item, then end the thread (safe to call twice)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()


def frame_as_written(image: np.ndarray, owned: bool, detections, names: tuple[str, ...],
                     input_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The picture an encoder gets: boxes drawn (on a copy unless ``owned``), scaled back to
    ``input_size`` (a stream that changed size on reconnect), cut to the even ``size``."""
    if detections is not None and len(detections):
        image = draw(image if owned else image.copy(), detections, names)
    if (image.shape[1], image.shape[0]) != input_size:
        image = cv2.resize(image, input_size)
    if size != input_size:
        image = np.ascontiguousarray(image[: size[1], : size[0]])
    return image


class VideoSink:
    """Writes annotated frames (``h264`` through PyAV by default; see the module docstring).

    ``timed`` (live sources): each frame is placed by its capture time, so the video lasts as
    long as the stream did: a frame that arrives after a gap (frames dropped, a slow camera, a
    reconnect) first repeats the previous one to fill the gap, and one that arrives ahead of its
    time (a burst of buffered frames at connect) is left out. Files are written frame by frame.

    The encoders need even sizes: an odd width or height loses its last column or row (said once
    in the log), rather than the picture being rescaled.

    ``write`` only queues the frame; the encoder thread draws and encodes it. ``frames`` counts
    the frames written to the file (final once ``close`` has returned).
    """

    name = "video"

    def __init__(self, path: Path, fps: float, size: tuple[int, int], names: tuple[str, ...], codec: str = "h264",
                 timed: bool = False):
        self.path = path
        self.names = names
        self.fps = fps
        self.timed = timed
        self.codec = codec
        self.input_size = size
        self.size = (size[0] - size[0] % 2, size[1] - size[1] % 2)
        if self.size != size:
            log.info("%s: written at %dx%d: the %s encoder needs even sizes, so the last %s of the %dx%d input "
                     "is cut", path.name, *self.size, codec,
                     " and ".join(w for w, odd in (("column", size[0] % 2), ("row", size[1] % 2)) if odd), *size)
        writer_cls = _PyAvWriter if codec in PYAV_CODECS else _OpenCvWriter
        self._writer: _PyAvWriter | _OpenCvWriter | None = writer_cls(path, fps, self.size, codec)
        self.frames = 0
        self._t0_ns: int | None = None
        self._worker = EncodeWorker(f"inferpath-encode-{path.stem}", self._encode)

    def write(self, frame: Frame) -> None:
        """Sink thread: hand the frame to the encoder (waits only while its queue is full)."""
        if self._worker.error is not None:
            raise SinkError(f"{self.path}: encoding failed: {self._worker.error}")
        if self._writer is None:
            return
        image = frame.image
        if frame.tracking is not None:  # trails are the stream's live state: draw them now, on a copy
            image = draw_tracking(image.copy(), frame.tracking)
        item = (image, image is not frame.image, frame.detections, frame.captured_ns)
        if not self._worker.put(item):
            raise SinkError(f"{self.path}: encoding failed: {self._worker.error}")

    def _encode(self, image: np.ndarray, owned: bool, detections, captured_ns: int) -> None:
        image = frame_as_written(image, owned, detections, self.names, self.input_size, self.size)
        if self.timed:
            if self._t0_ns is None:
                self._t0_ns = captured_ns
            slot = round((captured_ns - self._t0_ns) * self.fps / 1e9)
            if slot < self.frames - 1:  # ahead of real time (a burst of buffered frames at connect)
                return
            while self.frames and self.frames < slot:  # fill the gap: the video keeps real time
                self._writer.write(None)
                self.frames += 1
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Finish every queued frame, then close the file (safe to call twice)."""
        if self._writer is None:
            return
        self._worker.finish()
        writer, self._writer = self._writer, None
        writer.close()
        if self._worker.error is not None:
            raise SinkError(f"{self.path}: encoding failed: {self._worker.error}")
