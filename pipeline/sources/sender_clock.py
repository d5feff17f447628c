"""Frames stamped with the camera's clock: an RTSP stream read through PyAV.

An RTSP camera sends RTCP sender reports that tie its RTP timestamps to its wall clock (NTP).
FFmpeg turns them into a *producer reference time* on every packet after the first report
(``AV_PKT_DATA_PRFT`` side data: the sender's wall-clock time of that packet's RTP timestamp).
OpenCV's capture hides packets; PyAV shows them. :class:`SenderClockCapture` reads the stream with
PyAV, behind the few ``cv2.VideoCapture`` calls :class:`~pipeline.sources.stream.StreamSource`
makes, and keeps for each decoded frame the sender's time of its packet (``sender_wall_ns``).

:func:`to_monotonic` maps that wall-clock time onto our monotonic clock, so a frame's
``captured_ns`` is when the camera captured it, and the time the network, the jitter buffers and
the decoder took (``network`` stage) counts against the latency budget. This assumes the camera's
clock and ours agree (both on NTP); a camera clock ahead of ours is clamped to "no delay".
"""

from __future__ import annotations

import logging
import struct
import time
from collections import OrderedDict

import cv2
import numpy as np

log = logging.getLogger(__name__)

SENDER_CLOCK_SCHEMES = ("rtsp://", "rtsps://")  # streams whose RTCP sender reports FFmpeg reads
_PRFT = struct.Struct("<q")  # AVProducerReferenceTime.wallclock, microseconds since the Unix epoch


def carries_sender_time(uri: str) -> bool:
    """Whether a stream at ``uri`` can carry sender time (RTSP: RTCP sender reports)."""
    return uri.lower().startswith(SENDER_CLOCK_SCHEMES)


def to_monotonic(sender_wall_ns: int, now_mono_ns: int | None = None, now_wall_ns: int | None = None) -> int:
    """The monotonic time at which our wall clock read ``sender_wall_ns``, never in the future."""
    mono = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
    wall = time.time_ns() if now_wall_ns is None else now_wall_ns
    return min(mono, mono - (wall - sender_wall_ns))


class SenderClockCapture:
    """``cv2.VideoCapture``'s read/get/isOpened/release over PyAV, plus ``sender_wall_ns``: the
    sender's wall-clock time of the last frame read (None until the first RTCP sender report)."""

    def __init__(self, uri: str, transport: str | None, open_timeout_ms: int, read_timeout_ms: int) -> None:
        import av  # only streams read this way pay for it

        self.sender_wall_ns: int | None = None
        self._sent: OrderedDict[int, int] = OrderedDict()  # packet pts -> sender wall ns
        self._pos_ms = float("nan")
        self._container = None
        options = {"rtsp_transport": transport} if transport else {}
        try:
            self._container = av.open(uri, options=options,
                                      timeout=(open_timeout_ms / 1000.0, read_timeout_ms / 1000.0))
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            log.debug("PyAV could not open the stream: %s", exc)
            self.release()
            return
        self._stream.thread_type = "SLICE"  # frame threads would hold frames back
        self._frames = self._decode()
        ctx = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._props = {cv2.CAP_PROP_FPS: float(rate) if rate else 0.0,
                       cv2.CAP_PROP_FRAME_WIDTH: float(ctx.width or 0),
                       cv2.CAP_PROP_FRAME_HEIGHT: float(ctx.height or 0)}

    def _decode(self):
        for packet in self._container.demux(self._stream):
            if packet.pts is not None and packet.has_sidedata:
                prft = next((sd for sd in packet.iter_sidedata() if sd.data_type == "prft"), None)
                if prft is not None:
                    self._sent[packet.pts] = _PRFT.unpack_from(bytes(prft))[0] * 1000
                    while len(self._sent) > 64:  # frames come out within a few packets
                        self._sent.popitem(last=False)
            yield from packet.decode()

    def isOpened(self) -> bool:  # noqa: N802  (cv2.VideoCapture's name)
        return self._container is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        import av

        if self._container is None:
            return False, None
        try:
            frame = next(self._frames)
        except (StopIteration, av.FFmpegError, OSError) as exc:
            log.debug("PyAV read ended: %s", exc or "end of stream")
            return False, None
        self.sender_wall_ns = self._sent.pop(frame.pts, None) if frame.pts is not None else None
        self._pos_ms = float(frame.time * 1000.0) if frame.time is not None else float("nan")
        return True, frame.to_ndarray(format="bgr24")

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self._pos_ms
        return self._props.get(prop, 0.0) if self._container is not None else 0.0

    def release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
