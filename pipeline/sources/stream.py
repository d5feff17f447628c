"""Live sources: RTSP, HTTP(S) streams and webcams, with reconnect (exponential backoff + jitter).

The reader never queues stale frames itself: it grabs as fast as the camera delivers, and the
queue after it keeps the newest (``drop_oldest``). On a read failure or timeout it reconnects,
logging once per change of state (``up`` → ``reconnecting`` → ``up``), not once per attempt.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from pipeline.config import ReconnectConfig, SourceConfig
from pipeline.errors import ConfigError, SourceError, SourceTimeoutError
from pipeline.sources.base import Grab, redact_uri, register_source, source_kind, webcam_index
from pipeline.sources.nvdec import open_capture
from pipeline.sources.sender_clock import SenderClockCapture, carries_sender_time, to_monotonic

log = logging.getLogger(__name__)

# OpenCV reads FFmpeg capture options from this environment variable at open time; it is
# process-wide, so opens that set it are serialized.
_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_open_lock = threading.Lock()


def backoff_delays(cfg: ReconnectConfig, rng: random.Random | None = None):
    """Delays before each retry: initial * multiplier**k, capped, with +/- jitter."""
    rng = rng or random.Random()
    delay = cfg.initial_backoff_s
    attempt = 0
    while cfg.max_retries < 0 or attempt < cfg.max_retries:
        yield max(0.0, delay * (1.0 + rng.uniform(-cfg.jitter, cfg.jitter)))
        delay = min(cfg.max_backoff_s, delay * cfg.multiplier)
        attempt += 1


def open_ffmpeg(uri: str, params: list[int], rtsp_transport: str | None = None) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` through FFmpeg, with the RTSP transport set for this open only."""
    with _open_lock:
        old = os.environ.get(_FFMPEG_ENV)
        if rtsp_transport:
            os.environ[_FFMPEG_ENV] = f"rtsp_transport;{rtsp_transport}"
        try:
            return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        finally:
            if old is None:
                os.environ.pop(_FFMPEG_ENV, None)
            else:
                os.environ[_FFMPEG_ENV] = old


def probe_finite(uri: str, open_timeout_ms: int, read_timeout_ms: int) -> cv2.VideoCapture | None:
    """Open an HTTP(S) URL once: if the stream reports a length (a frame count, i.e. a duration),
    it is a file, and the open capture is returned to read it as one. None for a live stream, or
    when it does not open now (it is then treated as live, and retried)."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms]
    cap = open_ffmpeg(uri, params)
    if cap.isOpened() and (cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) > 0:
        return cap
    cap.release()
    return None


class StreamSource:
    """A camera or network stream read through OpenCV (FFmpeg for URLs, V4L2 for webcams)."""

    is_live = True
    decoder = "cpu"  # or "nvdec" for RTSP (sources[].decoder; see pipeline.sources.nvdec)
    is_file = False
    claimed_frames = 0  # a stream has no length
    skipped = 0  # a stream is never paced: what it misses, the queues drop
    start_frame = 0

    def __init__(
        self,
        uri: str,
        source_id: str,
        transport: str = "tcp",
        open_timeout_ms: int = 10000,
        read_timeout_ms: int = 5000,
        reconnect: ReconnectConfig | None = None,
        stop: threading.Event | None = None,
        on_event: Callable[[str], None] | None = None,
        clock: str = "reader",
    ) -> None:
        self._uri = uri  # may hold credentials: never logged
        self.uri = redact_uri(uri)
        self.id = source_id
        self.kind = source_kind(uri)
        self.transport = transport
        self.open_timeout_ms = open_timeout_ms
        self.read_timeout_ms = read_timeout_ms
        self.reconnect_cfg = reconnect or ReconnectConfig()
        self.stop = stop or threading.Event()
        self.on_event = on_event or (lambda event: None)
        self.fps = 0.0
        self.size = (0, 0)
        self.reconnects = 0
        self.state = "closed"
        self.frames_read = 0
        self.ever_opened = False
        self.down_at_end = False  # set by close(): the stream was not up when the run ended
        self._retries = 0  # failed attempts since the last frame: an open that delivers nothing does not reset it
        self._first_ns = 0
        self._pts_last: float | None = None  # the stream's own timestamps (CAP_PROP_POS_MSEC), for measured_fps
        self._pts_span_ms = 0.0
        self._pts_intervals = 0
        self._cap: cv2.VideoCapture | None = None
        self._t0 = 0
        # the camera's clock (sources[].clock): read through PyAV, which shows RTCP sender time
        self.sender_clock = clock != "reader" and carries_sender_time(uri)
        self.clock = clock
        self.sender_frames = 0  # frames stamped with the sender's time
        if self.kind == "webcam":
            webcam_index(uri)  # refuse webcam:abc now

    # ---- opening ---------------------------------------------------------------------------
    def _open_once(self) -> cv2.VideoCapture | None:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms]
        if self.kind == "webcam":
            index = webcam_index(self._uri)
            if not Path(f"/dev/video{index}").exists():
                raise SourceError(f"{self.uri}: no camera at /dev/video{index} (no such device)")
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        elif self.sender_clock and (self.clock == "sender" or self.decoder != "nvdec"):
            # the camera's clock needs PyAV's packets; an NVDEC decoder asked for wins over clock: auto
            cap = SenderClockCapture(self._uri, self.transport, self.open_timeout_ms, self.read_timeout_ms)
        else:
            cap = open_capture(self._uri, self.decoder if self.kind == "rtsp" else "cpu", lambda: open_ffmpeg(
                self._uri, params, self.transport if self.kind == "rtsp" else None), label=self.id)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def open(self) -> None:
        """Open, retrying with backoff; SourceTimeoutError once ``max_retries`` are spent."""
        cap = self._open_once()
        if cap is None:
            retries = self.reconnect_cfg.max_retries
            log.warning("%s: cannot open %s; retrying with backoff (%s)", self.id, self.uri,
                        "forever" if retries < 0 else f"up to {retries} retries")
            self.on_event("disconnect")
            cap = self._retry("cannot open")
            if cap is None:  # stopped while retrying: not an error, the stream just ends
                return
        self._attach(cap)
        self._t0 = time.monotonic_ns()
        self.on_event("open")
        log.info("%s: %s open, %dx%d at %.1f fps", self.id, self.uri, *self.size, self.fps)

    def _attach(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not 0 < self.fps < 1000:
            self.fps = 25.0
        self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.state = "up"
        self.ever_opened = True
        self._pts_last = None  # a new connection starts its own timeline

    @property
    def measured_fps(self) -> float:
        """The rate the stream really delivers (0 until two frames came): from the stream's own
        timestamps where it has them (a connect often arrives as a burst of buffered frames, which
        arrival times would misread), else frames read per second of wall time."""
        if self._pts_intervals and self._pts_span_ms > 0:
            return self._pts_intervals * 1000.0 / self._pts_span_ms
        if self.frames_read < 2:
            return 0.0
        return (self.frames_read - 1) / max((time.monotonic_ns() - self._first_ns) / 1e9, 1e-9)

    def _note_timestamp(self) -> None:
        pos = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self._cap is not None else float("nan")
        if pos == pos and self._pts_last is not None and pos > self._pts_last:
            self._pts_span_ms += pos - self._pts_last
            self._pts_intervals += 1
        self._pts_last = pos if pos == pos else None

    def _note_no_sender_time(self) -> None:
        """``clock: sender`` and still no sender time after 10 s of frames: say so, once (frames
        until the first RTCP sender report carry the reader's time)."""
        if (self.clock == "sender" and not self.sender_frames and self.frames_read == int(10 * self.fps) + 1):
            log.warning("%s: clock: sender, but no RTCP sender report in the first %d frames; "
                        "frames keep the reader's time until one comes", self.id, self.frames_read)

    def _retry(self, why: str) -> cv2.VideoCapture | None:
        """Reopen with backoff; None if the pipeline is stopped meanwhile."""
        self.state = "reconnecting"
        delays = backoff_delays(self.reconnect_cfg)
        for _ in range(self._retries):  # an outage continues where the last one left off
            next(delays, None)
        for delay in delays:
            if self.stop.wait(delay):
                return None
            self._retries += 1
            cap = self._open_once()
            if cap is not None:
                return cap
        raise SourceTimeoutError(
            f"{self.uri}: {why}; gave up after {self._retries} retries "
            f"(reconnect.max_retries={self.reconnect_cfg.max_retries})"
        )

    # ---- reading ---------------------------------------------------------------------------
    def read(self) -> Grab | None:
        """The next frame; reconnects on failure. None only when stopped."""
        while not self.stop.is_set():
            if self._cap is None:
                if self.state == "reconnecting":  # open() was stopped while retrying
                    return None
                raise SourceError(f"{self.uri}: read before open")
            ok, image = self._cap.read()
            now = time.monotonic_ns()
            if ok and image is not None:
                if not self.frames_read:
                    self._first_ns = now
                self.frames_read += 1
                self._retries = 0
                self._note_timestamp()
                sent = getattr(self._cap, "sender_wall_ns", None)
                if sent is None:
                    self._note_no_sender_time()
                    return Grab(image, (now - self._t0) / 1e9, now)
                if not self.sender_frames:
                    log.info("%s: frames stamped with the camera's clock (RTCP sender reports)", self.id)
                self.sender_frames += 1
                return Grab(image, (now - self._t0) / 1e9, to_monotonic(sent, now), received_ns=now)
            self._cap.release()
            self._cap = None
            log.warning("%s: stream lost (%s); reconnecting with backoff", self.id, self.uri)
            self.on_event("disconnect")
            cap = self._retry("stream lost and did not come back")
            if cap is None:
                return None
            self._attach(cap)
            self.reconnects += 1
            self.on_event("reconnect")
            log.info("%s: reconnected to %s (reconnect #%d)", self.id, self.uri, self.reconnects)
        return None

    def close(self) -> None:
        self.down_at_end = self.state != "up"
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self.state = "closed"


def stream_source(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None]) -> StreamSource:
    """A live stream (RTSP and the like, a camera) from its config."""
    if cfg.clock == "sender" and not carries_sender_time(cfg.uri):
        raise ConfigError(f"sources[{sid}].clock: sender needs a stream that carries the sender's time "
                          f"(rtsp://: RTCP sender reports); {redact_uri(cfg.uri)} does not")
    return StreamSource(
        cfg.uri, sid, transport=cfg.transport, open_timeout_ms=cfg.open_timeout_ms,
        read_timeout_ms=cfg.read_timeout_ms, reconnect=cfg.reconnect, stop=stop, on_event=on_event,
        clock=cfg.clock,
    )


def _is_stream(uri: str) -> bool:
    return uri.lower().startswith(("rtsp://", "rtsps://", "rtmp://", "udp://", "srt://"))


def _is_webcam(uri: str) -> bool:
    return uri.lower().startswith("webcam:") or bool(re.fullmatch(r"/dev/video\d+", uri)) or uri.isdigit()


register_source("rtsp", stream_source, _is_stream, order=10)
register_source("webcam", stream_source, _is_webcam, order=30)
