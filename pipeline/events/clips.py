"""Event clips: an H.264 mp4 around each line crossing or zone event, with ``pre_s`` before it.

Each stream's frames are drawn (boxes, trails) and encoded once, as they pass, by a thread of
their own (as the video sink does, :mod:`pipeline.sinks.video`); the encoded packets of the
last ``pre_s`` seconds (and back to the key frame before them) wait in a ring buffer. An event
opens a clip: the packets from the last key frame at least ``pre_s`` before the event are
written, then every new packet until ``post_s`` after it. An event while a clip is open extends
that clip (one clip for a burst of events, up to ``MAX_CLIP_S``). No frame is encoded twice for
a clip: writing one is a copy of packets into a file (a remux).

The encoder puts a key frame every ``KEYINT_S`` (so a clip starts at most that much earlier
than ``pre_s`` asks) and no B-frames (packets come out in display order, so cutting them at a
key frame is simple). Clips are ``<clips dir>/<source>/<UTC time>_<event>.mp4`` (the time of
the event that opened the clip); the event's ``clip`` field (JSON lines, MQTT, webhooks) names
it. All clips under the clips directory together stay under ``max_total_mb``: after each clip,
the oldest are deleted first. Counts: ``clips_written``, ``clips_deleted`` (the summary's
``events`` line), the directory's size in the log at the end.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipeline.errors import SinkError
from pipeline.frame import Frame
from pipeline.sinks import SinkBase, ensure_writable_dir, register_sink
from pipeline.sinks.video import PYAV_CODECS, EncodeWorker, frame_as_written
from pipeline.tracking.draw import draw_tracking

if TYPE_CHECKING:
    from pipeline.config import ClipsConfig, SourceConfig
    from pipeline.metrics import Metrics
    from pipeline.sinks import SinkContext
    from pipeline.sources.base import Source

log = logging.getLogger(__name__)

KEYINT_S = 1.0  # a key frame every second: a clip starts at most this much before pre_s asks
MAX_CLIP_S = 120.0  # events that keep coming extend one clip up to this long; then a new one starts
TIME_BASE = Fraction(1, 1000)  # packet times in ms of the stream's clock


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "event"


def event_label(event: dict) -> str:
    """``line-walkway-in``, ``zone-east_path-enter``: the event part of a clip's file name."""
    if event.get("type") == "line":
        return _safe(f"line-{event.get('line')}-{event.get('direction')}")
    return _safe(f"{event.get('type')}-{event.get('zone')}-{event.get('action')}")


class ClipStore:
    """The clips directory of a run: its total size kept under ``max_bytes`` (oldest deleted
    first, never a clip still being written). One per directory, shared by its streams."""

    _stores: dict[Path, ClipStore] = {}
    _stores_lock = threading.Lock()

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.open: set[Path] = set()
        self.lock = threading.Lock()
        self.bytes = 0

    @classmethod
    def for_dir(cls, root: Path, max_bytes: int) -> ClipStore:
        with cls._stores_lock:
            store = cls._stores.get(root)
            if store is None or store.max_bytes != max_bytes:
                store = cls._stores[root] = cls(root, max_bytes)
            return store

    def enforce(self) -> int:
        """Delete the oldest clips until the directory fits; returns how many were deleted."""
        with self.lock:
            clips = []
            for p in self.root.rglob("*.mp4"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                clips.append((st.st_mtime, p, st.st_size))
            clips.sort()
            total = sum(size for _, _, size in clips)
            deleted = 0
            for _, p, size in clips:
                if total <= self.max_bytes:
                    break
                if p in self.open:
                    continue
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("clips: cannot delete %s (%s)", p, exc.strerror)
                    continue
                total -= size
                deleted += 1
            self.bytes = total
            return deleted


@dataclass
class _Packet:
    ms: int  # presentation time on the stream's clock
    key: bool
    data: bytes


class _Clip:
    """One clip file being written: packets muxed as they come, times from its first packet."""

    def __init__(self, av: Any, template: Any, path: Path, end_ms: int) -> None:
        self.path = path
        self.end_ms = end_ms
        self._container = av.open(str(path), "w", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream_from_template(template)
        self._av = av
        self._t0: int | None = None
        self.frames = 0

    def mux(self, p: _Packet) -> None:
        if self._t0 is None:
            self._t0 = p.ms
        packet = self._av.Packet(p.data)
        packet.pts = packet.dts = p.ms - self._t0
        packet.time_base = TIME_BASE
        packet.is_keyframe = p.key
        packet.stream = self._stream
        self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        self._container.close()


class ClipSink(SinkBase):
    """One stream's event clips (see the module docstring).

    ``write`` (sink thread) decides which clip each event belongs to and names it in the event
    (``event["clip"]``) before the JSON lines and the event sinks see it; it draws the trails
    (the stream's live state) on a copy and hands the frame to the encoder thread, waiting only
    while that queue is full, as the video sink does. ``written`` counts the clips written."""

    name = "clips"

    def __init__(self, source_id: str, directory: Path, cfg: ClipsConfig, names: tuple[str, ...], fps: float,
                 live: bool, store: ClipStore, metrics: Metrics | None = None) -> None:
        try:
            import av
        except ImportError:
            raise SinkError("output.clips needs PyAV: pip install av") from None
        self._av = av
        self.source_id = source_id
        self.directory = ensure_writable_dir(directory, "output.clips.dir")
        self.cfg = cfg
        self.names = names
        self.fps = fps if fps > 0 else 25.0
        self.live = live
        self.store = store
        self.metrics = metrics
        self.kinds = frozenset(cfg.on)
        self.written = 0
        self.deleted = 0
        self.frames = 0
        # CPU time: "sink" (the sink thread: trails on a copy, the events' clips), "encode" (the encoder
        # thread: boxes, colour conversion, x264), "clip" (the encoder thread: ring buffer, clip files)
        self.cpu_ns = {"sink": 0, "encode": 0, "clip": 0}
        self._last_ms = -1
        self._clip_open: tuple[Path, float, float] | None = None  # (path, first event ms, end ms), sink thread
        self._ring: deque[_Packet] = deque()
        self._clip: _Clip | None = None
        self._encoder: Any = None
        self._holder: Any = None
        self._size: tuple[int, int] | None = None
        self._closed = False
        self._worker = EncodeWorker(f"inferpath-clips-{source_id}", self._step)

    # ---- the sink thread ------------------------------------------------------------------------
    def _clock_ms(self, frame: Frame) -> int:
        """The frame's time on the clip clock: stream time for a file, capture time when live
        (a camera's own clock may restart on reconnect); always increasing."""
        ms = round(frame.captured_ns / 1e6) if self.live else round(frame.pts * 1000)
        ms = max(ms, self._last_ms + 1)
        self._last_ms = ms
        return ms

    def write(self, frame: Frame) -> None:
        if self._worker.error is not None:
            raise SinkError(f"clips {self.source_id}: {self._worker.error}")
        c0 = time.thread_time_ns()
        ms = self._clock_ms(frame)
        command = None
        for event in getattr(frame.tracking, "events", None) or []:
            if event.get("type") not in self.kinds:
                continue
            end = ms + round(self.cfg.post_s * 1000)
            clip = self._clip_open
            if clip is not None and ms <= clip[2] and ms - clip[1] < MAX_CLIP_S * 1000:
                self._clip_open = (clip[0], clip[1], end)  # overlaps the open clip: extends it
                command = (command[0] if command else "extend", clip[0], ms, end)
            else:
                self._clip_open = (self._clip_path(frame, event), ms, end)
                command = ("open", self._clip_open[0], ms, end)
            event["clip"] = str(self._clip_open[0])
        image = frame.image
        if frame.tracking is not None:  # trails are the stream's live state: draw them now, on a copy
            image = draw_tracking(image.copy(), frame.tracking)
        item = (image, image is not frame.image, frame.detections, ms, command)
        self.cpu_ns["sink"] += time.thread_time_ns() - c0
        if not self._worker.put(item):
            raise SinkError(f"clips {self.source_id}: the encoder stopped: {self._worker.error}")

    def _clip_path(self, frame: Frame, event: dict) -> Path:
        wall = time.time() - (time.monotonic_ns() - frame.captured_ns) / 1e9
        stamp = datetime.fromtimestamp(wall, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        path = self.directory / f"{stamp}_{event_label(event)}.mp4"
        n = 1
        while path.exists():  # two clips opened in one millisecond (a restarted clip)
            path = self.directory / f"{stamp}-{n}_{event_label(event)}.mp4"
            n += 1
        return path

    def close(self) -> None:
        """Encode what is queued, finish the open clip, keep the directory in its budget."""
        if self._closed:
            return
        self._closed = True
        self._worker.finish()
        try:
            if self._worker.error is None and self._encoder is not None:
                self._take(list(self._encoder.encode(None)))  # the encoder's last frames
            self._finish_clip()
        finally:
            self._encoder = None
            holder, self._holder = self._holder, None
            if holder is not None:
                try:
                    holder.close()
                except Exception:  # the in-memory header holder: nothing of it is kept
                    pass
        per_frame = {k: round(v / 1e6 / self.frames, 3) for k, v in self.cpu_ns.items()} if self.frames else {}
        log.info("clips %s: %d written, %d deleted; %s holds %.1f MB of %g MB (CPU per frame: %s ms)",
                 self.source_id, self.written, self.deleted, self.store.root, self.store.bytes / 1e6,
                 self.cfg.max_total_mb, per_frame)
        if self._worker.error is not None:
            raise SinkError(f"clips {self.source_id}: {self._worker.error}")

    # ---- the encoder thread ---------------------------------------------------------------------
    def _step(self, image: np.ndarray, owned: bool, detections, ms: int, command) -> None:
        c0 = time.thread_time_ns()
        if self._encoder is None:
            self._open_encoder(image.shape[1], image.shape[0])
        image = frame_as_written(image, owned, detections, self.names, self._input_size, self._size)
        frame = self._av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = ms
        frame.time_base = TIME_BASE
        packets = list(self._encoder.encode(frame))
        c1 = time.thread_time_ns()
        self.cpu_ns["encode"] += c1 - c0
        self.frames += 1
        if command is not None:
            self._command(*command)
        self._take(packets)
        self.cpu_ns["clip"] += time.thread_time_ns() - c1

    def _open_encoder(self, width: int, height: int) -> None:
        """libx264 as the video sink sets it up (ultrafast, no CABAC), with a key frame every
        KEYINT_S and no B-frames; a stream of an in-memory mp4 so its header (SPS/PPS) is the clips' template."""
        av = self._av
        name, options = PYAV_CODECS["h264"]
        keyint = max(1, round(self.fps * KEYINT_S))
        options = {**options, "x264-params": f"bframes=0:keyint={keyint}:min-keyint={keyint}"}
        self._input_size = (width, height)
        self._size = (width - width % 2, height - height % 2)
        self._holder = av.open(io.BytesIO(), "w", format="mp4")
        stream = self._holder.add_stream(name, rate=Fraction(round(self.fps * 1000), 1000), options=options)
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.codec_context.thread_count = 1  # one core at most, as the video sink
        stream.codec_context.open()
        self._holder.start_encoding()  # the stream's parameters (with its SPS/PPS) are final now
        self._encoder = stream

    def _command(self, kind: str, path: Path, event_ms: int, end_ms: int) -> None:
        if kind == "extend" and self._clip is not None and self._clip.path == path:
            self._clip.end_ms = end_ms
            return
        self._finish_clip()
        self.store.open.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clip = _Clip(self._av, self._encoder, path, end_ms)
        start = event_ms - round(self.cfg.pre_s * 1000)
        keys = [i for i, p in enumerate(self._ring) if p.key]
        first = max((i for i in keys if self._ring[i].ms <= start), default=keys[0] if keys else len(self._ring))
        for i in range(first, len(self._ring)):
            self._clip.mux(self._ring[i])

    def _take(self, packets: list) -> None:
        """New packets: into the ring (trimmed to pre_s back to a key frame) and the open clip."""
        keep_from = None
        for packet in packets:
            p = _Packet(int(packet.pts), bool(packet.is_keyframe), bytes(packet))
            self._ring.append(p)
            keep_from = p.ms - round(self.cfg.pre_s * 1000)
            if self._clip is not None:
                if p.ms > self._clip.end_ms:
                    self._finish_clip()
                else:
                    self._clip.mux(p)
        if keep_from is None:
            return
        # drop what precedes the last key frame at or before keep_from
        last_key = None
        for i, p in enumerate(self._ring):
            if p.ms > keep_from:
                break
            if p.key:
                last_key = i
        for _ in range(last_key or 0):
            self._ring.popleft()

    def _finish_clip(self) -> None:
        clip, self._clip = self._clip, None
        if clip is None:
            return
        try:
            clip.close()
        finally:
            self.store.open.discard(clip.path)
        self.written += 1
        deleted = self.store.enforce()
        self.deleted += deleted
        if self.metrics is not None:
            self.metrics.count(self.source_id, "clips_written")
            if deleted:
                self.metrics.count(self.source_id, "clips_deleted", deleted)
        log.debug("clip %s: %d frames", clip.path, clip.frames)


def clip_sink(src: Source, scfg: SourceConfig, ctx: SinkContext) -> ClipSink:
    """The ``clips`` sink of ``src``: ``<clips dir>/<source>/``, the directory budget shared."""
    cfg = ctx.output.clips
    root = Path(cfg.dir).expanduser() if cfg.dir else ctx.directory(scfg) / "clips"
    ensure_writable_dir(root, "output.clips.dir")
    store = ClipStore.for_dir(root.resolve(), int(cfg.max_total_mb * 1e6))
    return ClipSink(src.id, root / _safe(src.id), cfg, ctx.names, src.fps, src.is_live and not src.is_file, store,
                    ctx.metrics)


def _clips(src: Source, scfg: SourceConfig, ctx: SinkContext) -> ClipSink | None:
    return clip_sink(src, scfg, ctx) if ctx.output.clips is not None else None


register_sink("clips", _clips, order=5, pixels=True)
