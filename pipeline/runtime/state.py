"""A run's public state: what its engine, its stages, its observers and the caller share.

:class:`TwoStepStop` is the stop: the first call ends the streams at their readers and drains
what is in flight; a second call aborts now. :class:`RunState` adds what a run accumulates: its
:class:`~pipeline.metrics.Metrics`, its errors, the streams that have ended, the queues in flight
(read by the Prometheus exporter at scrape time), and what the caller attached to it (observers,
sink factories, frame hooks). An engine (:mod:`pipeline.runtime.local`, :mod:`pipeline.cluster`)
takes a :class:`~pipeline.runtime.plan.Plan` and a ``RunState``; nothing else is shared.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.metrics import Metrics

if TYPE_CHECKING:
    from pipeline.frame import Frame
    from pipeline.observers import Observer
    from pipeline.queues import EndOfStream, FrameQueue

log = logging.getLogger("pipeline.runtime")

SOURCE_EVENTS = {"reconnect": "reconnects", "disconnect": "disconnects", "open": "opens"}


class TwoStepStop:
    """The two-step stop. The first call ends the streams and drains; a second call aborts now.
    Only sets flags, so it is safe in a signal handler. ``drain_note`` says, in the log, what
    the first step waits for."""

    drain_note = "finishing frames in flight"

    def __init__(self) -> None:
        self.stop_reading = threading.Event()
        self.abort = threading.Event()
        self.stopped_by: str | None = None
        self.stop_at: float | None = None  # when the first step came (the drain is bounded from it)

    def stop(self, reason: str = "stop requested") -> None:
        """First call: end the streams and drain. Second call: abort now."""
        if self.stop_reading.is_set():
            if not self.abort.is_set():
                log.warning("stopping now (%s again): in-flight frames are discarded", reason)
                self.abort.set()
            return
        self.stopped_by = self.stopped_by or reason
        log.info("stopping (%s): %s", reason, self.drain_note)
        self.stop_at = time.monotonic()
        self.stop_reading.set()


class RunState(TwoStepStop):
    """One run's shared, public state (see the module doc)."""

    def __init__(self, drain_note: str = TwoStepStop.drain_note) -> None:
        super().__init__()
        self.drain_note = drain_note
        self.metrics = Metrics()
        self.errors: list[tuple[str, str]] = []  # (stage, source or worker; message): the first is the headline
        self.lock = threading.Lock()
        self.ended: dict[str, EndOfStream] = {}  # streams that have ended, by source id
        self.done = threading.Event()  # every stream has ended
        self.streams = 0  # how many streams the run has (set by the engine)
        self.serving = False  # a service: streams come and go; the run ends at a stop, not when none is left
        self.queues: list[FrameQueue] = []  # every queue between stages, once built
        self.observers: list[Observer] = []  # the plan's, then the caller's (Pipeline.add_observer)
        self.sink_factories: list[Callable[..., Any]] = []  # (source, source config) -> extra sink
        self.frame_hooks: list[Callable[[Frame], None]] = []  # called in each preprocess thread
        self.refused: Exception | None = None  # found while running (a line outside a live frame): run() raises it

    def attach(self, observers: Any) -> None:
        """The observers the plan built (:class:`pipeline.observers.Observers`): they start and
        stop with the run, their sinks join every stream's, their frame hooks see every frame.
        Called once, by the engine's owner, before the caller attaches its own."""
        self.observers += observers.observers
        self.sink_factories += observers.sink_factories
        self.frame_hooks += observers.frame_hooks

    def forget_observed(self, source_id: str) -> None:
        """A stream has left a service: each observer that keeps something per stream (the live
        view's place on the page) lets it go; a failure is logged, never raised."""
        for ob in self.observers:
            forget = getattr(ob, "forget_source", None)
            if forget is not None:
                try:
                    forget(source_id)
                except Exception as exc:  # an observer never breaks the service
                    log.warning("observer %s: forget_source failed: %s", type(ob).__name__, exc)

    def end_stream(self, eos: EndOfStream) -> None:
        """A stream has ended (its sinks are closed); the run is done when every stream has."""
        with self.lock:
            self.ended[eos.source_id] = eos
            if len(self.ended) >= self.streams and not self.serving:
                self.done.set()

    def source_hook(self, source_id: str) -> Callable[[str], None]:
        """A source's event hook: reconnects, disconnects and opens are counted; ``up`` follows."""

        def hook(event: str) -> None:
            self.metrics.count(source_id, SOURCE_EVENTS.get(event, event))
            self.metrics.gauge(source_id, "up", 1.0 if event in ("open", "reconnect") else 0.0)

        return hook


class OnRunState:
    """The run's public state, as a :class:`~pipeline.runtime.Pipeline` or an engine shows it
    (``self.state`` is the :class:`RunState`)."""

    state: RunState

    @property
    def metrics(self) -> Metrics:
        return self.state.metrics

    @property
    def errors(self) -> list[tuple[str, str]]:
        return self.state.errors

    @property
    def stop_reading(self) -> threading.Event:
        return self.state.stop_reading

    @property
    def abort(self) -> threading.Event:
        return self.state.abort

    @property
    def stopped_by(self) -> str | None:
        return self.state.stopped_by

    def stop(self, reason: str = "stop requested") -> None:
        """First call: end the streams and drain. Second call: abort now. Safe in a signal handler."""
        self.state.stop(reason)


__all__ = ["OnRunState", "RunState", "TwoStepStop"]
