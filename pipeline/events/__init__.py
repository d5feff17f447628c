"""Events out: line crossings, zone entries and exits (and, if asked, each frame's detections)
sent to MQTT brokers and webhooks as they happen; event clips (:mod:`.clips`).

The ``events`` sink (registered in :mod:`pipeline.sinks`) runs in the sink thread like every
sink, but only builds the messages and hands each to its targets' queues; it never waits on a
network. Each target (``output.events[i]``) has its own thread behind its own bounded queue
(:class:`~pipeline.events.delivery.Delivery`)::

    sink thread ──build──► [queue mqtt]    ──► thread ──► broker   (reconnects with backoff)
                       └─► [queue webhook] ──► thread ──► POST     (retries with backoff)

A message that cannot be delivered stays at the head of its queue and is retried (backoff
doubling from ``initial_backoff_s`` to ``max_backoff_s``) while the queue has room; when the
queue is full, the oldest waiting message is dropped and counted
(``inferpath_events_dropped_total{source,sink,reason}``, the summary's ``events`` line). So a
slow or dead broker costs the pipeline one ``deque.append`` per message, never a wait.

Messages are JSON objects: ``{"id", "source", "type": "line"|"zone"|"detection", "seq", "t"
(stream time, s), "captured_at" (UTC), ...}`` with the event's own fields (``line``,
``direction`` or ``zone``, ``action``, ``dwell_s``; ``class``, ``track_id``, ``score``) and
``clip`` when an event clip is being written for it. ``detection`` messages carry the frame's
``detections`` (as the JSON lines), at most ``max_rate_hz`` per source. ``id`` is unique per
message (``<source>-<seq>-<n>``): a receiver can drop the duplicates that at-least-once
delivery (MQTT QoS 1, a retried POST) may bring.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pipeline.frame import Frame
from pipeline.sinks import SinkBase, register_sink

if TYPE_CHECKING:
    from pipeline.config import EventSinkConfig, SourceConfig
    from pipeline.events.delivery import Delivery
    from pipeline.metrics import Metrics
    from pipeline.sinks import SinkContext
    from pipeline.sources.base import Source

log = logging.getLogger(__name__)


def captured_at(captured_ns: int) -> str:
    """The UTC wall-clock time of a monotonic capture stamp, ISO 8601 with milliseconds."""
    wall = time.time() - (time.monotonic_ns() - captured_ns) / 1e9
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _track_scores(frame: Frame) -> dict[int, float]:
    det = frame.detections
    if det is None or det.tracker_id is None:
        return {}
    return {int(t): float(s) for t, s in zip(det.tracker_id.tolist(), det.confidence.tolist()) if t >= 0}


class EventSelector:
    """What one target sends: the kinds in ``on``, of ``classes``, at ``min_score`` or more;
    ``detection`` messages at most ``max_rate_hz`` per source (by capture time)."""

    def __init__(self, cfg: EventSinkConfig, names: tuple[str, ...]) -> None:
        self.kinds = frozenset(cfg.on)
        self.classes = frozenset(cfg.classes) if cfg.classes else None
        self.min_score = cfg.min_score
        self.names = names
        self.period_ns = int(1e9 / cfg.max_rate_hz)
        self._next_ns = 0

    def events(self, base: list[dict]) -> list[dict]:
        """The line and zone messages of this frame that this target sends."""
        out = []
        for msg in base:
            if msg["type"] not in self.kinds:
                continue
            if self.classes is not None and msg.get("class") not in self.classes:
                continue
            score = msg.get("score")
            if score is not None and score < self.min_score:
                continue
            out.append(msg)
        return out

    def detection_due(self, frame: Frame) -> bool:
        """Whether this target sends a ``detection`` message for ``frame`` if it has any left
        after the filters (on, and not rate-limited now)."""
        return "detection" in self.kinds and frame.captured_ns >= self._next_ns and frame.detections is not None

    def detections(self, frame: Frame, stamp: dict) -> dict | None:
        """This frame's ``detection`` message, or None (off, rate-limited, or nothing left after
        the class and score filters)."""
        if not self.detection_due(frame):
            return None
        records = [r for r in frame.detections.to_records(self.names)
                   if r["score"] >= self.min_score and (self.classes is None or r["class_name"] in self.classes)]
        if not records:
            return None
        self._next_ns = frame.captured_ns + self.period_ns
        return {"id": f"{stamp['source']}-{stamp['seq']}-d", "type": "detection", **stamp, "detections": records}


class EventsSink(SinkBase):
    """One source's events, handed to every configured target (each its own thread and queue).

    ``write`` builds the frame's messages (only when it has events, or a target wants
    detections) and offers them; it never blocks on delivery. ``close`` lets each target
    deliver what is queued for at most its ``drain_s``, then counts the rest as dropped (see
    :meth:`close`)."""

    name = "events"

    def __init__(self, source_id: str, targets: list[tuple[EventSelector, Delivery]]) -> None:
        self.source_id = source_id
        self.targets = targets
        self.written = 0  # messages offered
        self._closing = False

    def write(self, frame: Frame) -> None:
        events = getattr(frame.tracking, "events", None) or []
        if not events and not any(sel.detection_due(frame) for sel, _ in self.targets):
            return  # nothing to send (most frames: detection messages are rate-limited)
        stamp = {"source": self.source_id, "seq": frame.seq, "t": round(frame.pts, 4),
                 "captured_at": captured_at(frame.captured_ns)}
        base = []
        if events:
            scores = _track_scores(frame)
            for i, e in enumerate(events):
                score = scores.get(e.get("track_id"))
                base.append({"id": f"{self.source_id}-{frame.seq}-{i}", **stamp, **e,
                             "score": round(score, 4) if score is not None else None})
        for selector, delivery in self.targets:
            for msg in selector.events(base):
                delivery.offer(msg)
                self.written += 1
            det = selector.detections(frame, stamp)
            if det is not None:
                delivery.offer(det)
                self.written += 1

    def close(self) -> None:
        """The first call (the sink thread, at the stream's end) starts each target's drain and
        returns, so other streams' frames never wait on a broker; a second call (the pipeline
        closes every sink again when the run ends) waits for the drains."""
        if not self._closing:
            self._closing = True
            for _, delivery in self.targets:
                delivery.begin_close()
            return
        for _, delivery in self.targets:
            delivery.close()


def sink_labels(configs: list[EventSinkConfig]) -> list[str]:
    """Each target's label in metrics: its ``name``, else its type (numbered when repeated)."""
    types = [c.type for c in configs]
    return [c.name.replace(":", "_") if c.name else (c.type if types.count(c.type) == 1 else f"{c.type}{types[:i].count(c.type)}")
            for i, c in enumerate(configs)]


def make_delivery(cfg: EventSinkConfig, label: str, source_id: str, metrics: Metrics | None) -> Delivery:
    """The delivery thread of one target for one source (``mqtt`` or ``webhook``)."""
    if cfg.type == "mqtt":
        from pipeline.events.mqtt import MqttDelivery

        return MqttDelivery(cfg, label, source_id, metrics)
    from pipeline.events.webhook import WebhookDelivery

    return WebhookDelivery(cfg, label, source_id, metrics)


def event_sinks(src: Source, ctx: SinkContext) -> EventsSink:
    """The ``events`` sink of ``src``: one delivery thread per ``output.events`` entry."""
    configs = list(ctx.output.events)
    targets: list[tuple[EventSelector, Any]] = []
    try:
        for cfg, label in zip(configs, sink_labels(configs)):
            targets.append((EventSelector(cfg, ctx.names), make_delivery(cfg, label, src.id, ctx.metrics)))
    except BaseException:
        for _, d in targets:
            d.close(drain_s=0)
        raise
    return EventsSink(src.id, targets)


def _events(src: Source, scfg: SourceConfig, ctx: SinkContext) -> EventsSink | None:
    return event_sinks(src, ctx) if ctx.output.events else None


register_sink("events", _events, order=40)
