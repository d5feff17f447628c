"""Observers: what watches a run without being part of the frame path.

One protocol (:class:`Observer`): ``start(metrics)`` before the first frame is read, ``stop()``
after every sink has closed. The Prometheus exporter, the live web view, the drift monitor, the
FP32 canary and the ``on_result`` callback runner are observers. Those the config asks for
(``metrics.prometheus``, ``output.web``, ``metrics.drift``) are built by the plan
(:func:`pipeline.runtime.plan.plan`) through :func:`from_config`, so ``inferpath run`` and
``Pipeline(cfg)`` in Python serve the same endpoints; the CLI's flags only edit the config. A
user's own observer joins with :meth:`pipeline.runtime.Pipeline.add_observer`.

An observer that needs the frames too brings what it needs with it: a sink factory (the live
view's per-source sink) or a frame hook (drift, in each preprocess thread). Failing observers
are logged; they never stop the pipeline (see :func:`stop_all`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pipeline.config import MetricsConfig, WebConfig
    from pipeline.frame import Frame
    from pipeline.metrics import Metrics
    from pipeline.queues import FrameQueue

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Watches a run: ``start`` with the run's metrics before any frame, ``stop`` at the end."""

    def start(self, metrics: Metrics) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Observers:
    """The observers a config asks for, and the sinks and frame hooks they bring."""

    observers: list[Observer] = field(default_factory=list)
    sink_factories: list[Callable[..., Any]] = field(default_factory=list)  # (source, source config) -> sink
    frame_hooks: list[Callable[[Frame], None]] = field(default_factory=list)
    prometheus: Any = None  # the PrometheusExporter, when on (the Ray engine adds its worker collector)

    def close(self) -> None:
        """Stop every observer (those that bound a port release it); for a run that never started."""
        stop_all(self.observers)


def from_config(metrics: MetricsConfig, web: WebConfig, names: tuple[str, ...],
                queues: Callable[[], Iterable[FrameQueue]], tracking: Any = None, frames_here: bool = True,
                serve: bool = False, canary: Callable[[], Any] | None = None) -> Observers:
    """Build the observers ``metrics:`` and ``output.web`` turn on. Ports are bound here, so a busy
    one fails before any frame is read. ``queues`` gives the run's queues at scrape time; ``tracking`` adds the line and
    zone counters to Prometheus. ``frames_here`` False (the Ray driver, where the frames stay on
    the workers): the live view is built without a sink (the driver gives it the streams, and
    the workers the JPEGs of those watched); drift, which needs every frame's pixels, is not built
    and a warning says so. ``serve`` (a service) with the live view on: its port also serves
    ``/metrics`` (always on) and the service's API; Prometheus binds no port of its own. ``canary`` (``model.canary`` on, with an
    INT8/FP16 model): builds the FP32 canary (:mod:`pipeline.canary`), which brings a frame hook
    (sampling) and a sink (the hand-over)."""
    out = Observers()
    try:
        prom = metrics.prometheus
        registry = None
        on_web = serve and web.enabled
        if prom.enabled or on_web:
            from pipeline.exporters import PrometheusExporter

            out.prometheus = PrometheusExporter(prom.host, prom.port, serve_http=not on_web)
            out.prometheus.watch_queues(queues)
            if tracking is not None:  # line crossings, zone occupancy
                out.prometheus.registry.register(tracking.collector())
            out.observers.append(out.prometheus)
            registry = out.prometheus.registry
        if web.enabled:
            from pipeline.web import LiveView

            view = LiveView(web.host, web.port, web.token, web.max_fps, web.jpeg_quality, registry)
            view.names = tuple(names)
            out.observers.append(view)
            if frames_here:
                out.sink_factories.append(view.sink_for)
            # else the Ray driver gives each stream its place (LiveView.remote_sink_for) and asks the
            # worker that has a watched stream's frames for its JPEGs (pipeline.web.FrameTap)
        drift = metrics.drift
        if drift.reference and not frames_here:
            log.warning("metrics.drift: input drift is measured on the frames, which stay on the workers; "
                        "not measured with cluster.engine: ray")
        elif drift.reference:
            from pipeline.drift import DriftMonitor

            monitor = DriftMonitor.watching(drift.reference, drift.threshold, drift.window)
            out.observers.append(monitor)
            out.frame_hooks.append(monitor.on_frame)
        if canary is not None:
            watcher = canary()
            out.observers.append(watcher)
            out.frame_hooks.append(watcher.on_frame)
            out.sink_factories.append(watcher.sink_for)
    except BaseException:
        out.close()
        raise
    return out


def start_all(observers: Iterable[Observer], metrics: Metrics) -> list[Observer]:
    """Start each observer; on a failure, stop those started and raise. Returns them, started."""
    started: list[Observer] = []
    try:
        for ob in observers:
            ob.start(metrics)
            started.append(ob)
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(observers: Iterable[Observer]) -> None:
    """Stop each observer; a failure is logged and the others still stop."""
    for ob in observers:
        try:
            ob.stop()
        except Exception as exc:
            log.warning("observer %s: stop failed: %s", type(ob).__name__, exc)


__all__ = ["Observer", "Observers", "from_config", "start_all", "stop_all"]
