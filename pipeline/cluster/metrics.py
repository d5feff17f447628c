"""The driver's view of every worker: a Prometheus collector with a ``worker`` label, and the
periodic log line.

The per-source families (``inferpath_frames_total``, ``inferpath_drops_total``, the latency
histograms, ...) are the local run's own: the driver feeds its :class:`~pipeline.metrics.Metrics`
from the workers' results and counters, so they cover the whole cluster. This collector adds,
read at scrape time:

==========================================  =========  =========================================
``inferpath_worker_frames_total``           counter    ``worker``, ``node``, ``source``: delivered by it
``inferpath_worker_up``                     gauge      ``worker``, ``node``, ``pid``: 1 while it runs
``inferpath_worker_restarts_total``         counter    ``worker``: times it was lost and replaced
==========================================  =========  =========================================
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pipeline.metrics import percentiles
from pipeline.progress import latency_text

if TYPE_CHECKING:
    from pipeline.cluster.driver import ClusterRun

log = logging.getLogger("pipeline.cluster")


class WorkerCollector:
    """A ``prometheus_client`` custom collector over the driver's worker slots."""

    def __init__(self, run: ClusterRun) -> None:
        self.run = run

    def describe(self):
        return []  # families are only known at collect time

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        frames = CounterMetricFamily("inferpath_worker_frames", "Frames a Ray worker delivered to the driver.",
                                     labels=["worker", "node", "source"])
        up = GaugeMetricFamily("inferpath_worker_up", "1 while a Ray worker runs its streams, 0 once finished "
                               "or lost.", labels=["worker", "node", "pid"])
        restarts = CounterMetricFamily("inferpath_worker_restarts", "Times a Ray worker was lost and replaced.",
                                       labels=["worker"])
        for slot in list(self.run.slots):
            node = str(slot.info.get("ip", ""))
            for sid, n in list(slot.frames.items()):
                frames.add_metric([slot.name, node, sid], n)
            running = slot.info and slot.start_ref is None and not slot.finished
            up.add_metric([slot.name, node, str(slot.info.get("pid", ""))], 1.0 if running else 0.0)
            restarts.add_metric([slot.name], slot.restarts)
        yield from (frames, up, restarts)


class ClusterMonitor:
    """Every ``interval`` seconds, one log line: the cluster's fps and latency, then each worker's."""

    def __init__(self, run: ClusterRun, interval: float) -> None:
        self.run = run
        self.interval = interval
        self.last = time.monotonic()
        self.last_frames: dict[str, int] = {}

    def tick(self) -> None:
        now = time.monotonic()
        if not self.interval or now - self.last < self.interval:
            return
        since, self.last = self.last, now
        m = self.run.metrics
        parts = []
        total = 0
        for slot in self.run.slots:
            done = sum(slot.frames.values())
            d = done - self.last_frames.get(slot.name, 0)
            self.last_frames[slot.name] = done
            total += d
            state = "finished" if slot.finished else ("starting" if slot.start_ref is not None else "up")
            parts.append(f"{slot.name} {d / (now - since):.1f} fps ({state}, {slot.where()}"
                         + (f", replaced {slot.restarts}x" if slot.restarts else "") + ")")
        latency = latency_text(m, since)
        delivery = m.stage_values("delivery", since=since) * 1000
        if len(delivery):
            latency += f", to the driver p50 {percentiles(delivery)[0]:.1f} ms"
        log.info("%.1f fps over the last %.0f s, %s, %d dropped so far; %s", total / (now - since), now - since,
                 latency, m.total_drops(), "; ".join(parts))


__all__ = ["ClusterMonitor", "WorkerCollector"]
