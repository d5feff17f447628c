"""JSON lines: one line per processed frame, written in batches of whole lines.

Lines are gathered in memory and written with one system call per batch (every ``FLUSH_LINES``
lines or ``FLUSH_S`` seconds, whichever comes first), and at the end of the stream and on every
stop (``close``), so no line is lost and the file only ever holds whole lines, even if the process
is killed between two batches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import SinkError
from pipeline.frame import Frame
from pipeline.sinks import SinkBase, SinkContext, register_sink

if TYPE_CHECKING:
    from pipeline.config import SourceConfig
    from pipeline.sources.base import Source


class JsonlSink(SinkBase):
    """``{"source", "seq", "pts", "latency_ms", "detections": [{class_id, class_name, score, box}]}``.

    With tracking on, each detection has ``track_id`` and a frame where counting happened has
    ``events`` (line crossings, zone entries and exits).

    ``latency_ms`` is capture to sink: the frame's age when its result reaches the sinks.
    ``stages_ms`` gives each stage's own time for the frame, so any figure can be traced.
    """

    name = "jsonl"
    FLUSH_LINES = 64
    FLUSH_S = 0.5

    def __init__(self, path: Path, source_id: str, names: tuple[str, ...]) -> None:
        self.path = path
        self.source_id = source_id
        self.names = names
        try:
            # Unbuffered binary: each batch of whole lines is one write() call.
            self._fh = open(path, "wb", buffering=0)
        except OSError as exc:
            raise SinkError(f"{path}: cannot write JSON lines ({exc.strerror})") from None
        self.written = 0  # lines
        self._pending: list[str] = []
        self._flushed_at = time.monotonic()

    def write(self, frame: Frame) -> None:
        record = {
            "source": self.source_id,
            "seq": frame.seq,
            "pts": round(frame.pts, 4),
            "latency_ms": round(frame.latency_ms if frame.latency_ms is not None else frame.age_ms(), 2),
            "stages_ms": {k: round((v[1] - v[0]) / 1e6, 3) for k, v in frame.stamps.items()},
            "batch": frame.batch_size,
            "detections": frame.detections.to_records(self.names) if frame.detections is not None else [],
        }
        events = getattr(frame.tracking, "events", None)
        if events:  # line crossings, zone entries and exits, as they happen
            record["events"] = events
        self._pending.append(json.dumps(record, separators=(",", ":")))
        self.written += 1
        if len(self._pending) >= self.FLUSH_LINES or time.monotonic() - self._flushed_at >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the gathered lines (one system call; a short write is completed)."""
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        data = memoryview(("\n".join(self._pending) + "\n").encode("utf-8"))
        self._pending.clear()
        while data:
            data = data[self._fh.write(data):]

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self.flush()
            finally:
                self._fh.close()


def _jsonl(src: Source, scfg: SourceConfig, ctx: SinkContext) -> JsonlSink | None:
    if not ctx.output.jsonl:
        return None
    return JsonlSink(ctx.directory(scfg) / f"{src.id}.jsonl", src.id, ctx.names)


register_sink("jsonl", _jsonl, order=10)
