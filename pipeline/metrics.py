"""One timing mechanism for everything the pipeline reports.

Stages call :meth:`Metrics.observe` with a duration, :meth:`Metrics.drop` with a reason, and
:meth:`Metrics.count` for events. The same numbers feed the periodic log line, the final summary
table, the Prometheus exporter (a listener, when enabled) and the benchmarks, so they agree.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# The stages of the inference path, in order. "queue" is the time frames wait between stages.
STAGES = ("capture", "preprocess", "queue", "inference", "postprocess", "sink")


class MetricsListener(Protocol):
    def on_observe(self, source: str, stage: str, seconds: float) -> None: ...
    def on_count(self, source: str, name: str, reason: str, n: int) -> None: ...
    def on_gauge(self, source: str, name: str, value: float) -> None: ...


class Series:
    """Samples of one quantity (seconds) with the time each was taken, in bounded memory.

    The most recent ``capacity`` samples are kept in numpy ring buffers (12 bytes a sample, so a
    series never grows past ~0.4 MB however long a live deployment runs); ``count`` is the total
    ever added. Percentiles over a run are exact while it has fewer samples than ``capacity``
    (about 18 minutes of a 30 fps stream), and over the most recent ``capacity`` after that.
    """

    __slots__ = ("capacity", "count", "_values", "_times")

    def __init__(self, capacity: int = 32768) -> None:
        self.capacity = capacity
        self.count = 0
        self._values = np.empty(min(capacity, 1024), np.float32)
        self._times = np.empty(min(capacity, 1024), np.float64)

    def add(self, seconds: float, at: float) -> None:
        i = self.count % self.capacity
        if i >= len(self._values):  # grow geometrically up to the capacity
            size = min(self.capacity, 2 * len(self._values))
            self._values = np.resize(self._values, size)
            self._times = np.resize(self._times, size)
        self._values[i] = seconds
        self._times[i] = at
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def _order(self) -> np.ndarray | slice:
        if self.count <= self.capacity:
            return slice(0, self.count)
        start = self.count % self.capacity
        return np.r_[start:self.capacity, 0:start]

    def values(self, since: float | None = None) -> np.ndarray:
        """Kept samples in the order they were added (optionally only those taken at/after ``since``)."""
        order = self._order()
        v = self._values[order].astype(np.float64)
        if since is None:
            return v
        return v[self._times[order] >= since]

    def times(self) -> np.ndarray:
        return self._times[self._order()].copy()


def percentiles(values: np.ndarray, qs: Iterable[float] = (50, 95, 99)) -> list[float]:
    """Percentiles (NaN for no samples)."""
    if len(values) == 0:
        return [float("nan") for _ in qs]
    return [float(x) for x in np.percentile(values, list(qs))]


@dataclass
class SourceStats:
    frames_in: int = 0
    frames_out: int = 0
    detections: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    drops: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gauges: dict[str, float] = field(default_factory=dict)
    first_ns: int | None = None
    last_ns: int | None = None


class Metrics:
    """Thread-safe store of stage latencies, end-to-end latency, counters and drops, per source."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.series: dict[tuple[str, str], Series] = defaultdict(Series)
        self.sources: dict[str, SourceStats] = defaultdict(SourceStats)
        self.batch_sizes: dict[int, int] = defaultdict(int)
        self.listeners: list[MetricsListener] = []
        self.started = time.monotonic()

    def add_listener(self, listener: MetricsListener) -> None:
        self.listeners.append(listener)

    def _notify(self, method: str, *args) -> None:
        for lst in self.listeners:
            try:
                getattr(lst, method)(*args)
            except Exception:  # an observer never crashes the pipeline
                pass

    def observe(self, source: str, stage: str, seconds: float) -> None:
        """Record one duration of ``stage`` for ``source`` (``e2e`` for capture-to-sink)."""
        with self._lock:
            self.series[(source, stage)].add(seconds, time.monotonic())
        self._notify("on_observe", source, stage, seconds)

    def frame_in(self, source: str) -> None:
        with self._lock:
            st = self.sources[source]
            st.frames_in += 1
            now = time.monotonic_ns()
            st.first_ns = st.first_ns or now
        self._notify("on_count", source, "frames_in", "", 1)

    def frame_out(self, source: str, class_names: Iterable[str]) -> None:
        with self._lock:
            st = self.sources[source]
            st.frames_out += 1
            st.last_ns = time.monotonic_ns()
            for name in class_names:
                st.detections[name] += 1
        self._notify("on_count", source, "frames_out", "", 1)

    def drop(self, source: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.sources[source].drops[reason] += n
        self._notify("on_count", source, "drops", reason, n)

    def count(self, source: str, event: str, n: int = 1) -> None:
        with self._lock:
            self.sources[source].events[event] += n
        self._notify("on_count", source, event, "", n)

    def gauge(self, source: str, name: str, value: float) -> None:
        with self._lock:
            self.sources[source].gauges[name] = value
        self._notify("on_gauge", source, name, value)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes[size] += 1

    # ---- reading -------------------------------------------------------------------------
    def stage_values(self, stage: str, source: str | None = None, since: float | None = None) -> np.ndarray:
        with self._lock:
            parts = [s.values(since) for (src, stg), s in self.series.items()
                     if stg == stage and (source is None or src == source)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def source_ids(self) -> list[str]:
        with self._lock:
            return list(self.sources)

    def snapshot(self, source: str) -> SourceStats:
        """A consistent copy of one source's counters, drops, events and gauges (for live views)."""
        with self._lock:
            st = self.sources.get(source) or SourceStats()
            return SourceStats(st.frames_in, st.frames_out, dict(st.detections), dict(st.drops), dict(st.events),
                               dict(st.gauges), st.first_ns, st.last_ns)

    def total_drops(self, source: str | None = None) -> int:
        with self._lock:
            return sum(sum(st.drops.values()) for sid, st in self.sources.items() if source in (None, sid))
