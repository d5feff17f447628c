"""One timing mechanism for everything the pipeline reports.

Stages call :meth:`Metrics.observe` with a duration, :meth:`Metrics.drop` with a reason, and
:meth:`Metrics.count` for events. The same numbers feed the periodic log line, the final summary
table, the Prometheus exporter (a listener, when enabled) and the benchmarks, so they agree.

Listeners receive each record as a typed event (:data:`MetricEvent`) through one method,
``on_metric``. A listener that raises is logged once, counted in :attr:`Metrics.listener_errors`,
and keeps receiving events; it never stops the pipeline or the other listeners.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

# The stages of the inference path, in order. "queue" is the time frames wait between stages.
STAGES = ("capture", "preprocess", "queue", "inference", "postprocess", "sink")
# With the camera's clock (sources[].clock): from the camera's capture to our reader having the
# decoded frame (network, jitter buffers, decoder). Reported only for frames that carry it.
NETWORK = "network"


# ---- events --------------------------------------------------------------------------------
# Plain slotted dataclasses, not frozen ones: an event is built per frame per stage, and a frozen
# dataclass costs about 4x as much to build (~620 ns against ~160 ns here). Treat them as read-only.
@dataclass(slots=True)
class Observed:
    """One duration of ``stage`` (``e2e``: capture to sink) for ``source``, in seconds."""

    source: str
    stage: str
    seconds: float


@dataclass(slots=True)
class FrameIn:
    """A frame read from ``source``."""

    source: str


@dataclass(slots=True)
class FrameOut:
    """A frame of ``source`` delivered to its sinks."""

    source: str


@dataclass(slots=True)
class Dropped:
    """``n`` frames of ``source`` dropped for ``reason`` (``late@<stage>``, ``queue_full@<queue>``, ...)."""

    source: str
    reason: str
    n: int


@dataclass(slots=True)
class Counted:
    """``n`` occurrences of any other ``event`` of ``source`` (reconnects, sink errors, ...)."""

    source: str
    event: str
    n: int


@dataclass(slots=True)
class GaugeSet:
    """Gauge ``name`` of ``source`` set to ``value`` (drift score, input statistics, ``up``, ...)."""

    source: str
    name: str
    value: float


MetricEvent = Observed | FrameIn | FrameOut | Dropped | Counted | GaugeSet


class MetricsListener(Protocol):
    """Receives every event :class:`Metrics` records, as it is recorded (on the recording thread)."""

    def on_metric(self, event: MetricEvent) -> None: ...


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
        self.listeners: tuple[MetricsListener, ...] = ()  # replaced, never mutated: safe to iterate unlocked
        self.listener_errors: dict[str, int] = defaultdict(int)  # listener name -> exceptions it raised
        self.started = time.monotonic()

    def add_listener(self, listener: MetricsListener) -> None:
        """Deliver every later event to ``listener.on_metric``."""
        with self._lock:
            self.listeners = (*self.listeners, listener)

    def _emit(self, event: MetricEvent) -> None:
        for lst in self.listeners:
            try:
                lst.on_metric(event)
            except Exception as exc:  # a listener never crashes the pipeline or starves the others
                self._listener_failed(lst, event, exc)

    def _listener_failed(self, listener: MetricsListener, event: MetricEvent, exc: Exception) -> None:
        name = f"{type(listener).__module__}.{type(listener).__qualname__}"
        with self._lock:
            self.listener_errors[name] += 1
            first = self.listener_errors[name] == 1
        if first:
            log.warning("metrics listener %s failed on %s: %s: %s (it keeps receiving events; "
                        "further errors are counted, not logged)", name, type(event).__name__,
                        type(exc).__name__, exc)
            log.debug("metrics listener %s failure", name, exc_info=exc)

    def observe(self, source: str, stage: str, seconds: float) -> None:
        """Record one duration of ``stage`` for ``source`` (``e2e`` for capture-to-sink)."""
        with self._lock:
            self.series[(source, stage)].add(seconds, time.monotonic())
        if self.listeners:  # no event is built when nobody listens
            self._emit(Observed(source, stage, seconds))

    def frame_in(self, source: str) -> None:
        with self._lock:
            st = self.sources[source]
            st.frames_in += 1
            now = time.monotonic_ns()
            st.first_ns = st.first_ns or now
        if self.listeners:
            self._emit(FrameIn(source))

    def frame_out(self, source: str, class_names: Iterable[str]) -> None:
        with self._lock:
            st = self.sources[source]
            st.frames_out += 1
            st.last_ns = time.monotonic_ns()
            for name in class_names:
                st.detections[name] += 1
        if self.listeners:
            self._emit(FrameOut(source))

    def drop(self, source: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.sources[source].drops[reason] += n
        if self.listeners:
            self._emit(Dropped(source, reason, n))

    def count(self, source: str, event: str, n: int = 1) -> None:
        with self._lock:
            self.sources[source].events[event] += n
        if self.listeners:
            self._emit(Counted(source, event, n))

    def gauge(self, source: str, name: str, value: float) -> None:
        with self._lock:
            self.sources[source].gauges[name] = value
        if self.listeners:
            self._emit(GaugeSet(source, name, value))

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes[size] += 1

    def forget(self, source: str) -> None:
        """Drop everything kept for ``source`` (a stream removed from a service: its summary has
        been taken), so streams that come and go cost no memory."""
        with self._lock:
            self.sources.pop(source, None)
            for key in [k for k in self.series if k[0] == source]:
                del self.series[key]

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
