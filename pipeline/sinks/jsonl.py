"""JSON lines: one line per processed frame, flushed line by line so a stop leaves whole lines."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import SinkError
from pipeline.frame import Frame


class JsonlSink:
    """``{"source", "seq", "pts", "latency_ms", "detections": [{class_id, class_name, score, box}]}``.

    With tracking on, each detection has ``track_id`` and a frame where counting happened has
    ``events`` (line crossings, zone entries and exits).

    ``latency_ms`` is capture to sink: the frame's age when its result reaches the sinks.
    ``stages_ms`` gives each stage's own time for the frame, so any figure can be traced.
    """

    name = "jsonl"

    def __init__(self, path: Path, source_id: str, names: tuple[str, ...]) -> None:
        self.path = path
        self.source_id = source_id
        self.names = names
        try:
            # Line-buffered text: every write of a line is flushed whole.
            self._fh = open(path, "w", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"{path}: cannot write JSON lines ({exc.strerror})") from None
        self.lines = 0

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
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()
