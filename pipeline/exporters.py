"""Prometheus endpoint: the pipeline's metrics, served at ``http://HOST:PORT/metrics``.

The exporter is a listener on :class:`~pipeline.metrics.Metrics`: every observation, count and
gauge the pipeline records (a typed event) is mirrored, as it happens, into Prometheus metrics held in the
exporter's own :class:`prometheus_client.CollectorRegistry` (not the process-global one, so
several pipelines, or tests, in one process never collide). The same numbers therefore appear in
the summary table, the log line and the scrape.

============================================  =========  =====================================
metric                                        type       labels
============================================  =========  =====================================
``inferpath_stage_latency_seconds``           histogram  ``source``, ``stage`` (capture ... sink)
``inferpath_e2e_latency_seconds``             histogram  ``source`` (capture to sink)
``inferpath_frames_total``                    counter    ``source``, ``direction`` (in, out)
``inferpath_drops_total``                     counter    ``source``, ``reason`` (e.g. late@inference)
``inferpath_reconnects_total``                counter    ``source``
``inferpath_disconnects_total``               counter    ``source``
``inferpath_events_total``                    counter    ``source``, ``event`` (anything else counted)
``inferpath_events_sent_total``               counter    ``source``, ``sink`` (messages out: pipeline.events)
``inferpath_events_dropped_total``            counter    ``source``, ``sink``, ``reason`` (queue_full, ...)
``inferpath_queue_depth``                     gauge      ``queue`` (frames waiting; with a pipeline)
``inferpath_input_drift_score``               gauge      ``source`` (see :mod:`pipeline.drift`)
``inferpath_input_brightness`` / ``_contrast``
/ ``_sharpness``                              gauge      ``source`` (rolling-window means)
``inferpath_source_up``                       gauge      ``source`` (1 connected, 0 down; live sources)
``inferpath_canary_frames_total``             counter    ``source`` (frames the FP32 canary checked)
``inferpath_canary_agreement``                gauge      ``source`` (its window's margin-agreement recall, 0-1)
``inferpath_canary_map50``                    gauge      ``source`` (its window's pseudo-mAP@0.5, FP32 as truth)
``inferpath_gauge``                           gauge      ``source``, ``name`` (any other gauge)
============================================  =========  =====================================

The HTTP server is bound when the exporter is constructed, so a port already in use fails
before any frame is read; :meth:`PrometheusExporter.stop` shuts it down. The registry (and so
the final numbers) stays readable in-process after ``stop``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.errors import ConfigError
from pipeline.metrics import (
    NETWORK,
    STAGES,
    Counted,
    Dropped,
    FrameIn,
    FrameOut,
    GaugeSet,
    MetricEvent,
    Metrics,
    Observed,
)

log = logging.getLogger(__name__)

# 1 ms .. 10 s, roughly three buckets a decade: fine where real-time budgets sit (10-200 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25,
                   0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
INSTALL_HINT = ("metrics.prometheus.enabled: prometheus-client is not installed (a core dependency of inferpath); "
                "pip install prometheus-client, or reinstall inferpath")


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return prometheus_client


class PrometheusExporter:
    """Serves the pipeline's metrics for Prometheus: an observer (:mod:`pipeline.observers`), built by
    the plan when ``metrics.prometheus`` is on, or added with ``pipe.add_observer``.

    ``pipeline`` (optional) adds ``inferpath_queue_depth``, read from its queues at scrape time.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9464, pipeline: Any = None, serve_http: bool = True) -> None:
        """``serve_http`` False: no server of its own; another one (a service's port) serves
        :attr:`registry` at ``/metrics``."""
        prom = _import_prometheus()
        self.host = host
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_latency = prom.Histogram(
            "inferpath_stage_latency_seconds", "Time a frame spends in one stage of the inference path.",
            ["source", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = prom.Histogram(
            "inferpath_e2e_latency_seconds", "Capture-to-sink latency of each frame delivered.",
            ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.frames = prom.Counter(
            "inferpath_frames", "Frames read from a source (direction=in) and delivered to its sinks (out).",
            ["source", "direction"], registry=r)
        self.drops = prom.Counter(
            "inferpath_drops", "Frames dropped, by reason (late@<stage>, queue_full@<queue>, shutdown).",
            ["source", "reason"], registry=r)
        self.reconnects = prom.Counter(
            "inferpath_reconnects", "Successful reconnections of a live source.", ["source"], registry=r)
        self.disconnects = prom.Counter(
            "inferpath_disconnects", "Times a live source was lost.", ["source"], registry=r)
        self.events = prom.Counter(
            "inferpath_events", "Other counted events (sink errors, drift warnings, ...).",
            ["source", "event"], registry=r)
        self.events_sent = prom.Counter(
            "inferpath_events_sent", "Event messages delivered to an MQTT broker or a webhook.",
            ["source", "sink"], registry=r)
        self.events_dropped = prom.Counter(
            "inferpath_events_dropped", "Event messages dropped (queue_full, rejected, cooldown, shutdown).",
            ["source", "sink", "reason"], registry=r)
        self.drift_score = prom.Gauge(
            "inferpath_input_drift_score",
            "Input drift: max over input statistics of |window mean - reference mean| / reference std.",
            ["source"], registry=r)
        self.input_stats = {
            "brightness": prom.Gauge("inferpath_input_brightness", "Mean gray level of recent frames (0-255).",
                                     ["source"], registry=r),
            "contrast": prom.Gauge("inferpath_input_contrast", "Std of the gray level of recent frames.",
                                   ["source"], registry=r),
            "sharpness": prom.Gauge("inferpath_input_sharpness",
                                    "Variance of the Laplacian of recent frames (at 160 px wide).",
                                    ["source"], registry=r),
        }
        self.source_up = prom.Gauge("inferpath_source_up", "1 while a live source is connected, 0 while it is down.",
                                    ["source"], registry=r)
        self.canary_frames = prom.Counter(
            "inferpath_canary_frames", "Sampled frames the FP32 canary re-ran and compared (pipeline.canary).",
            ["source"], registry=r)
        self.canary_gauges = {
            "canary_agreement": prom.Gauge(
                "inferpath_canary_agreement", "FP32 canary: share of FP32 boxes (>= conf + margin) the deployed "
                "model finds (>= conf - margin), over its window of sampled frames (0-1).", ["source"], registry=r),
            "canary_map50": prom.Gauge(
                "inferpath_canary_map50", "FP32 canary: pseudo-mAP@0.5 of the deployed model with FP32's boxes as "
                "truth, over its window of sampled frames.", ["source"], registry=r),
        }
        self.other_gauges = prom.Gauge("inferpath_gauge", "Any other gauge the pipeline publishes.",
                                       ["source", "name"], registry=r)
        self._queues: Callable[[], Iterable[Any]] | None = None
        if pipeline is not None:
            self.watch_queues(lambda: pipeline.queues)
            if pipeline.tracking is not None:  # line crossings, zone occupancy
                self.registry.register(pipeline.tracking.collector())
        self._started = False
        self._server: Any = None
        self._thread: threading.Thread | None = None
        if not serve_http:
            self.port = None
            return
        try:
            self._server, self._thread = prom.start_http_server(port, addr=host, registry=r)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ConfigError(f"metrics.prometheus: cannot serve on {host}:{port} ({why}); "
                              "choose another metrics.prometheus.port") from None
        self.port = self._server.server_address[1]  # the real port (when 0 asked for any free one)
        log.info("prometheus metrics at http://%s:%d/metrics", host, self.port)

    # ---- exporter protocol ------------------------------------------------------------------
    def start(self, metrics: Metrics) -> None:
        """Mirror ``metrics`` from now on. The pipeline calls this before its stages start, so
        every frame is seen."""
        if not self._started:
            self._started = True
            metrics.add_listener(self)

    def stop(self) -> None:
        """Shut the HTTP server down (the registry stays readable in-process)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    close = stop

    def __enter__(self) -> PrometheusExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def watch_queues(self, queues: Callable[[], Iterable[Any]]) -> None:
        """Report ``inferpath_queue_depth{queue}``: frames waiting, summed over queues of the same
        name (one ``preprocess`` and one ``inference`` queue per source), read at scrape time."""
        if self._queues is None:
            self.registry.register(_QueueDepthCollector(self))
        self._queues = queues

    # ---- listener ---------------------------------------------------------------------------
    def on_metric(self, event: MetricEvent) -> None:
        """Mirror one event of :class:`~pipeline.metrics.Metrics` (kinds it does not know are ignored)."""
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _observed(self, e: Observed) -> None:
        if e.stage == "e2e":
            self.e2e_latency.labels(e.source).observe(e.seconds)
        elif e.stage in STAGES or e.stage == NETWORK:
            self.stage_latency.labels(e.source, e.stage).observe(e.seconds)

    def _frame_in(self, e: FrameIn) -> None:
        self.frames.labels(e.source, "in").inc()

    def _frame_out(self, e: FrameOut) -> None:
        self.frames.labels(e.source, "out").inc()

    def _dropped(self, e: Dropped) -> None:
        self.drops.labels(e.source, e.reason).inc(e.n)

    def _counted(self, e: Counted) -> None:
        if e.event == "reconnects":
            self.reconnects.labels(e.source).inc(e.n)
        elif e.event == "disconnects":
            self.disconnects.labels(e.source).inc(e.n)
        elif e.event == "canary_frames":
            self.canary_frames.labels(e.source).inc(e.n)
        elif e.event.startswith(("events_sent:", "events_dropped:")):  # pipeline/events/delivery.py
            kind, *labels = e.event.split(":")
            (self.events_sent if kind == "events_sent" else self.events_dropped).labels(e.source, *labels).inc(e.n)
        else:
            self.events.labels(e.source, e.event).inc(e.n)

    def _gauge(self, e: GaugeSet) -> None:
        if e.name == "drift_score":
            self.drift_score.labels(e.source).set(e.value)
        elif e.name in self.input_stats:
            self.input_stats[e.name].labels(e.source).set(e.value)
        elif e.name in self.canary_gauges:
            self.canary_gauges[e.name].labels(e.source).set(e.value)
        elif e.name == "up":
            self.source_up.labels(e.source).set(e.value)
        else:
            self.other_gauges.labels(e.source, e.name).set(e.value)

    _HANDLERS: dict[type, Callable[[PrometheusExporter, Any], None]] = {
        Observed: _observed, FrameIn: _frame_in, FrameOut: _frame_out,
        Dropped: _dropped, Counted: _counted, GaugeSet: _gauge,
    }


class _QueueDepthCollector:
    """``inferpath_queue_depth{queue}``, computed when scraped."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def describe(self) -> list[Any]:
        return []  # do not call collect() at registration: the pipeline may not be built yet

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("inferpath_queue_depth", "Frames waiting in a queue between stages.",
                                   labels=["queue"])
        depths: dict[str, int] = {}
        fn = self.exporter._queues
        for q in (fn() if fn else []) or []:
            depths[q.name] = depths.get(q.name, 0) + len(q)
        for name, depth in sorted(depths.items()):
            family.add_metric([name], depth)
        yield family


__all__ = ["PrometheusExporter", "LATENCY_BUCKETS"]
