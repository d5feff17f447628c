"""Tracking in the pipeline: one :class:`StreamTracking` per source (tracker, trails, counters),
all behind one :class:`Tracking` that the sink stage calls on each frame before its sinks.

The sink stage sees each stream's frames in order, after the last latency-budget check, so
every frame the tracker counts is also written: a crossing in ``summary.json`` is always an
event in the JSON lines. State is keyed by ``frame.source_id`` and never shared, so frames of
several streams batched together in one inference call cannot mix tracks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.frame import Detections, Frame
from pipeline.tracking.counting import LineCounter, ZoneCounter, anchors, check_inside_frame
from pipeline.tracking.tracker import StreamTracker, import_trackers

log = logging.getLogger(__name__)


@dataclass
class FrameTracking:
    """What tracking adds to one frame: its events, and the stream's state for drawing it."""

    events: list[dict]
    stream: StreamTracking


@dataclass
class StreamTracking:
    """One source's tracker, trails, class votes and counters."""

    source_id: str
    tracker: StreamTracker
    anchor: str
    lines: list[LineCounter]
    zones: list[ZoneCounter]
    trail_len: int
    trails: dict[int, deque] = field(default_factory=dict)
    votes: dict[int, dict[int, int]] = field(default_factory=dict)
    last_seen: dict[int, float] = field(default_factory=dict)
    frames: int = 0
    cost_ns: int = 0  # wall time in step (includes waiting for a core on a busy machine)
    cpu_ns: int = 0  # CPU time of the sink thread in step: what tracking itself costs
    t: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    restarted: dict[str, str] = field(default_factory=dict)  # line/zone name -> why its counts restarted

    def step(self, det: Detections, t: float, names: tuple[str, ...]) -> tuple[Detections, list[dict]]:
        """Track one frame's detections at stream time ``t``; returns them with ids, and the events."""
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        ids = self.tracker.update(det, t)
        tracked = ids >= 0
        tid = ids[tracked]
        points = anchors(det.xyxy[tracked], self.anchor)
        classes = []
        for i, c, p in zip(tid.tolist(), det.class_id[tracked].tolist(), points.tolist()):
            votes = self.votes.setdefault(i, {})
            votes[c] = votes.get(c, 0) + 1
            best = max(votes, key=votes.__getitem__)  # the track's class: the one it was seen as most often
            classes.append(names[best] if 0 <= best < len(names) else str(best))
            self.last_seen[i] = t
            if self.trail_len:
                self.trails.setdefault(i, deque(maxlen=self.trail_len)).append((round(p[0]), round(p[1])))
        alive = self.tracker.alive()
        gone = {i: s for i, s in self.last_seen.items() if i not in alive}
        events: list[dict] = []
        with self.lock:
            self.t = t
            self.frames += 1
            for line in self.lines:
                events += line.update(tid, points, classes)
                line.forget(gone)
            for zone in self.zones:
                events += zone.update(tid, points, classes, t, gone)
        for i in gone:
            self.last_seen.pop(i, None)
            self.votes.pop(i, None)
            self.trails.pop(i, None)
        for e in events:
            e["t"] = round(t, 4)
        self.cost_ns += time.perf_counter_ns() - t0
        self.cpu_ns += time.thread_time_ns() - c0
        return Detections(det.xyxy, det.confidence, det.class_id, ids), events

    def summary(self) -> dict:
        with self.lock:
            return {
                "tracks": self.tracker.tracks_started,
                "frames": self.frames,
                "ms_per_frame": round(self.cost_ns / 1e6 / self.frames, 4) if self.frames else None,
                "cpu_ms_per_frame": round(self.cpu_ns / 1e6 / self.frames, 4) if self.frames else None,
                "lines": {ln.name: ln.summary() for ln in self.lines},
                "zones": {z.name: z.summary(self.t) for z in self.zones},
                **({"restarted": dict(self.restarted)} if self.restarted else {}),
            }


class Tracking:
    """Every stream's tracking, built from ``tracking:``; call it with each delivered frame.

    ``sources`` are the pipeline's :class:`~pipeline.sources.base.Source` objects (their ``fps``
    and ``size`` are read when a stream's first frame arrives). ``on_refuse`` is called before a
    line or zone outside a live stream's frame is refused (the pipeline stops its readers).
    """

    def __init__(self, cfg: TrackingConfig, names: tuple[str, ...], sources: Iterable[Any] = (),
                 on_refuse: Callable[[str], None] | None = None) -> None:
        import_trackers()  # one line saying what to install, before any work
        self.cfg = cfg
        self.names = tuple(names)
        self.sources = {s.id: s for s in sources}
        self.on_refuse = on_refuse
        self.streams: dict[str, StreamTracking] = {}
        self._lock = threading.Lock()
        self._check(cfg)

    def _check(self, cfg: TrackingConfig) -> None:
        known = set(self.names)
        for kind, items in (("lines", cfg.lines), ("zones", cfg.zones)):
            for i, item in enumerate(items):
                unknown = [c for c in item.classes or [] if c not in known]
                if unknown and known:
                    raise ConfigError(f"tracking.{kind}[{i}].classes: {unknown[0]!r} is not a class of the model "
                                      f"(e.g. {', '.join(self.names[:5])})")
                if item.source is not None and self.sources and item.source not in self.sources:
                    raise ConfigError(f"tracking.{kind}[{i}].source: no source with id {item.source!r} "
                                      f"(sources: {', '.join(self.sources)})")

    def _geometry(self, source_id: str, cfg: TrackingConfig | None = None):
        cfg = cfg or self.cfg
        lines = [(i, ln) for i, ln in enumerate(cfg.lines) if ln.source in (None, source_id)]
        zones = [(i, z) for i, z in enumerate(cfg.zones) if z.source in (None, source_id)]
        return lines, zones

    def check_frame_size(self, source_id: str, size: tuple[int, int], cfg: TrackingConfig | None = None) -> None:
        """Refuse (ConfigError) a line or zone of ``source_id`` outside its ``size`` (w, h) frame."""
        lines, zones = self._geometry(source_id, cfg)
        for i, ln in lines:
            check_inside_frame("lines", i, ln.name, np.asarray(ln.points, float), size, source_id)
        for i, z in zones:
            check_inside_frame("zones", i, z.name, np.asarray(z.polygon, float), size, source_id)

    def stream(self, source_id: str, size: tuple[int, int] | None = None) -> StreamTracking:
        """The state of ``source_id``, created (and its geometry checked against ``size``) on first use."""
        st = self.streams.get(source_id)
        if st is not None:
            return st
        if size is not None:
            self.check_frame_size(source_id, size)
        lines, zones = self._geometry(source_id)
        src = self.sources.get(source_id)
        fps = float(getattr(src, "fps", 0.0) or 25.0)
        st = StreamTracking(source_id, StreamTracker(self.cfg, fps), self.cfg.anchor,
                            [_line_counter(ln) for _, ln in lines], [_zone_counter(z) for _, z in zones],
                            self.cfg.trail)
        with self._lock:
            self.streams[source_id] = st
        return st

    def __call__(self, frame: Frame) -> None:
        """Track ``frame`` (its stream's next frame, in order): sets ``track_id`` and ``frame.tracking``."""
        st = self.streams.get(frame.source_id)
        if st is None:
            h, w = frame.image.shape[:2]
            try:
                st = self.stream(frame.source_id, (w, h))
            except ConfigError as exc:
                if self.on_refuse is not None:
                    self.on_refuse(str(exc))
                raise
        det = frame.detections if frame.detections is not None else Detections.empty()
        frame.detections, events = st.step(det, frame.pts, self.names)
        frame.tracking = FrameTracking(events, st)

    def forget(self, source_id: str) -> None:
        """A stream removed from a service: its tracks and counts go (its summary was taken)."""
        with self._lock:
            self.streams.pop(source_id, None)
            self.sources.pop(source_id, None)

    def check(self, cfg: TrackingConfig) -> list:
        """Refuse (ConfigError) lines and zones that :meth:`update` would refuse; changes nothing.
        Returns the streams it checked."""
        self._check(cfg)
        with self._lock:
            streams = list(self.streams.values())
        for st in streams:
            size = getattr(self.sources.get(st.source_id), "size", None)
            if size and size != (0, 0):
                self.check_frame_size(st.source_id, size, cfg)
        return streams

    def update(self, cfg: TrackingConfig) -> None:
        """Edit the lines and zones of a running service (from each stream's next frame). Tracks
        go on; a line or zone that is unchanged (same name, geometry, classes) keeps its counts,
        an edited one restarts from zero and its stream's summary says so (``restarted``); a new
        one starts, a removed one goes. Checked first (classes, sources, inside each known
        frame): a bad edit changes nothing."""
        streams = self.check(cfg)
        self.cfg = cfg
        for st in streams:
            lines, zones = self._geometry(st.source_id, cfg)
            with st.lock:
                st.lines = _keep_or_restart(st, st.lines, [_line_counter(ln) for _, ln in lines], _same_line)
                st.zones = _keep_or_restart(st, st.zones, [_zone_counter(z) for _, z in zones], _same_zone)

    def summary(self, source_id: str) -> dict | None:
        st = self.streams.get(source_id)
        return st.summary() if st is not None else None

    def snapshot(self) -> dict[str, dict]:
        """Every stream's summary (for the Prometheus collector; thread-safe)."""
        with self._lock:
            streams = list(self.streams.values())
        return {st.source_id: st.summary() for st in streams}

    def collector(self) -> Any:
        """A prometheus_client collector of the counts, read at scrape time."""
        return _CountsCollector(self)


def _line_counter(ln: Any) -> LineCounter:
    return LineCounter(ln.name, np.asarray(ln.points[0], float), np.asarray(ln.points[1], float),
                       frozenset(ln.classes) if ln.classes else None)


def _zone_counter(z: Any) -> ZoneCounter:
    return ZoneCounter(z.name, np.asarray(z.polygon, float), frozenset(z.classes) if z.classes else None)


def _same_line(a: LineCounter, b: LineCounter) -> bool:
    return np.array_equal(a.a, b.a) and np.array_equal(a.b, b.b) and a.classes == b.classes


def _same_zone(a: ZoneCounter, b: ZoneCounter) -> bool:
    return np.array_equal(a.polygon, b.polygon) and a.classes == b.classes


def _keep_or_restart(st: StreamTracking, old: list, new: list, same: Callable[[Any, Any], bool]) -> list:
    """The counters after a live edit: an unchanged one (by name) is kept with its counts; an
    edited one is the new, empty one, noted in ``st.restarted``."""
    by_name = {c.name: c for c in old}
    out = []
    for counter in new:
        kept = by_name.get(counter.name)
        if kept is not None and same(kept, counter):
            out.append(kept)
            continue
        if kept is not None:
            st.restarted[counter.name] = f"edited live at stream time {st.t:.2f} s: counts restarted from zero"
        out.append(counter)
    return out


class _CountsCollector:
    """``inferpath_line_crossings_total{source,line,direction,class}``,
    ``inferpath_zone_occupancy{source,zone,class}`` and ``inferpath_zone_peak_occupancy``,
    ``inferpath_tracks_total{source}``."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        crossings = CounterMetricFamily("inferpath_line_crossings", "Tracks that crossed a counting line.",
                                        labels=["source", "line", "direction", "class"])
        occupancy = GaugeMetricFamily("inferpath_zone_occupancy", "Tracks now inside a counting zone.",
                                      labels=["source", "zone", "class"])
        peak = GaugeMetricFamily("inferpath_zone_peak_occupancy", "Most tracks inside a counting zone at once.",
                                 labels=["source", "zone", "class"])
        tracks = CounterMetricFamily("inferpath_tracks", "Tracks started.", labels=["source"])
        for sid, s in sorted(self.tracking.snapshot().items()):
            tracks.add_metric([sid], s["tracks"])
            for line, dirs in s["lines"].items():
                for direction, per_class in dirs.items():
                    for cls, n in per_class.items():
                        crossings.add_metric([sid, line, direction, cls], n)
            for zone, z in s["zones"].items():
                for cls in sorted(set(z["peak"]) | set(z["current"])):
                    occupancy.add_metric([sid, zone, cls], z["current"].get(cls, 0))
                    peak.add_metric([sid, zone, cls], z["peak"].get(cls, 0))
        yield from (crossings, occupancy, peak, tracks)


def _per_class(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def summary_lines(source_id: str, s: dict) -> list[str]:
    """The summary table's tracking lines for one source (from :meth:`StreamTracking.summary`)."""
    cost = (f", {s['cpu_ms_per_frame']:.2f} ms CPU ({s['ms_per_frame']:.2f} ms wall) per frame"
            if s.get("ms_per_frame") is not None else "")
    out = [f"tracking {source_id}: {s['tracks']} tracks over {s['frames']} frames{cost}"]
    for name, dirs in s["lines"].items():
        out.append(f"  line {name}: in {_per_class(dirs['in'])}; out {_per_class(dirs['out'])}")
    for name, z in s["zones"].items():
        dwell = "; ".join(f"{k} {v['visits']} visits, mean {v['mean']:.1f} s, max {v['max']:.1f} s"
                          for k, v in z["dwell_s"].items()) or "no visits"
        out.append(f"  zone {name}: now {_per_class(z['current'])}; peak {_per_class(z['peak'])}; dwell {dwell}")
    return out
