"""The Pipeline: a deployment's front door, a small facade. It plans the config once
(:func:`~pipeline.runtime.plan.plan`), picks the engine ``cluster.engine`` names (the local
engine, :mod:`.local`, or the Ray engine, :mod:`pipeline.cluster`), and hands both the run's
public state (:class:`~pipeline.runtime.state.RunState`). ``run()`` returns the summary.

The observers the config turns on (Prometheus, the live view, drift) are built by the plan, so
``Pipeline(load_config("configs/live.yaml")).run()`` serves ``/metrics`` as ``inferpath run``
does. ``results()``, ``on_result()``, ``add_observer()``, ``add_sink_factory()`` and
``add_frame_hook()`` attach the caller's own.

Stopping has two steps. The first (Ctrl-C, SIGTERM, ``duration_s``, end of input) ends the
streams at their readers: what is already in flight is finished and written, then every sink
closes. A second Ctrl-C aborts: every stage exits at once, and the sinks still close, so JSON
lines hold whole lines and videos play.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING

from pipeline.backends.base import Backend
from pipeline.config import Config, SourceConfig, source_config
from pipeline.errors import UnknownStreamError
from pipeline.observers import Observer
from pipeline.policy import StreamPolicy
from pipeline.runtime.engines import Engine, engine_for
from pipeline.runtime.plan import Plan, plan
from pipeline.runtime.state import OnRunState, RunState
from pipeline.runtime.summary import RunSummary, SourceSummary
from pipeline.sources import quiet_native_logs
from pipeline.sources.base import Source, default_id, redact_uri

if TYPE_CHECKING:
    from pipeline.stages import Stage

log = logging.getLogger(__name__)
FPS_WINDOW_S = 5.0  # a stream's fps in streams(): frames delivered over the last 5 s


class Pipeline(OnRunState):
    """A deployment, built from a :class:`Config`. ``run()`` blocks until the end and returns a summary."""

    def __init__(self, cfg: Config, backend: Backend | None = None, pixel_sinks_only: bool = False,
                 serve: bool = False) -> None:
        """``backend`` replaces the configured one (tests, embedders). ``pixel_sinks_only``: a Ray
        worker's pipeline, whose results-only sinks (JSON lines) the driver runs. ``serve``: a
        service (``inferpath serve``): it runs until stopped, with the config's sources (possibly
        none), and streams are added and removed while it runs (:meth:`add_source`,
        :meth:`remove_source`); :meth:`update` edits the live settings."""
        quiet_native_logs(debug=log.isEnabledFor(logging.DEBUG))
        self.cfg = cfg
        self.state = RunState()
        self.plan: Plan = plan(cfg, self.state, backend, pixel_sinks_only, serve=serve)
        st = self.state
        st.attach(self.plan.observers)
        try:  # the engine cluster.engine names (Ray: a one-line error if it is not installed)
            self.engine: Engine = engine_for(self.plan, st)
        except BaseException:
            self.plan.close()
            raise
        self._consumers: list = []  # on_result runners, whose errors run() raises
        self._streams: weakref.WeakSet = weakref.WeakSet()  # open results() streams
        self._ran = False

    # ---- what the plan decided ------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return self.plan.names

    @property
    def model_path(self):
        return self.plan.model_path

    @property
    def sources(self) -> list[Source]:
        return self.plan.sources

    @property
    def policies(self) -> dict[str, StreamPolicy]:
        return self.plan.policies

    @property
    def tracking(self):
        return self.plan.tracking

    @property
    def workers(self) -> int:
        return self.plan.inference.workers if self.plan.inference is not None else 0

    @property
    def backend(self) -> Backend | None:
        return self.plan.inference.backend if self.plan.inference is not None else None

    @backend.setter
    def backend(self, backend: Backend) -> None:
        """Swap the backend before ``run()`` (a test wrapping the planned one)."""
        import dataclasses

        if self._ran or self.plan.inference is None:
            raise RuntimeError("the backend can only be replaced in a local pipeline before run()")
        self.plan = dataclasses.replace(self.plan, inference=dataclasses.replace(self.plan.inference, backend=backend))
        self.engine.plan = self.plan  # type: ignore[attr-defined]  # the local engine (checked above)

    @property
    def side_backend(self) -> Backend | None:
        return self.plan.inference.side_backend if self.plan.inference is not None else None

    # ---- while and after it runs ----------------------------------------------------------------
    @property
    def queues(self) -> list:
        """Every queue between stages, once built (read by the Prometheus exporter)."""
        return self.state.queues

    @property
    def stages(self) -> list[Stage]:
        """The local run's stage threads, once built."""
        graph = getattr(self.engine, "graph", None)
        return graph.stages if graph is not None else []

    @property
    def side_frames(self) -> int:
        """Frames that went through inference calls side by side (a live local run; 0 otherwise)."""
        graph = getattr(self.engine, "graph", None)
        return graph.inference.side_frames if graph is not None else 0

    @property
    def observers(self) -> list[Observer]:
        """The run's observers: those the config turned on (built by the plan), then the caller's."""
        return self.state.observers

    # ---- attaching ------------------------------------------------------------------------------
    def add_observer(self, observer: Observer) -> None:
        """Something with ``start(metrics)`` / ``stop()`` run alongside (see :mod:`pipeline.observers`)."""
        self.state.observers.append(observer)

    add_exporter = add_observer  # the name before observers had one protocol

    def add_sink_factory(self, factory) -> None:
        """Call ``factory(source, source_config)`` for each source when the stages are built; the
        sink it returns gets that source's frames after the configured sinks (see pipeline.results)."""
        self.state.sink_factories.append(factory)

    def add_frame_hook(self, hook) -> None:
        """Call ``hook(frame)`` for every frame in its preprocess thread (after letterboxing, so
        ``frame.image`` and ``frame.tensor`` are both there). Keep it cheap; errors are ignored."""
        self.state.frame_hooks.append(hook)

    def results(self, images: bool = False, live_buffer: int = 1):
        """Run in the background and iterate over the delivered frames (:class:`pipeline.results.Result`).

        ``images=True`` adds each frame's pixels. A live source never waits for a slow consumer:
        results it misses are counted as ``slow_consumer`` events; a batch source waits, nothing is
        lost. Leaving the loop stops the pipeline cleanly. See :mod:`pipeline.results`."""
        from pipeline.results import ResultStream

        self._local_only("results()")
        if self._ran or len(self._streams):
            raise RuntimeError("a Pipeline runs once: build a new one for another results() loop")
        stream = ResultStream(self, images, live_buffer)
        self._streams.add(stream)
        return stream

    def on_result(self, callback, images: bool = False, live_buffer: int = 1):
        """Call ``callback(result)`` for each delivered frame, in a thread of its own, during
        ``run()``; same drop rules as :meth:`results`. If it raises, the pipeline stops cleanly
        and ``run()`` raises that exception. Returns the :class:`~pipeline.results.CallbackRunner`."""
        from pipeline.results import CallbackRunner

        self._local_only("on_result()")
        runner = CallbackRunner(self, callback, images, live_buffer)
        self._consumers.append(runner)
        self.add_observer(runner)
        return runner

    # ---- a service: streams and settings that change while it runs ------------------------------
    def add_source(self, source: dict | SourceConfig) -> dict:
        """Add a stream to the running service: ``source`` is one ``sources[]`` entry of the YAML
        (``{"id": "door", "uri": "rtsp://...", "latency_budget_ms": 300}``), validated by the same
        rules (:class:`~pipeline.errors.ConfigError` with the same one line). The other streams
        keep running untouched; with ``cluster.engine: ray`` it starts on the least-loaded
        worker (:meth:`~pipeline.cluster.driver.ClusterRun.add_stream`). Returns the stream as
        :meth:`streams` shows it."""
        engine = self._service("add_source()")
        scfg = source if isinstance(source, SourceConfig) else source_config(source)
        engine.add_stream(self.plan.new_stream(scfg, self.state))
        return self.stream(scfg.id or default_id(scfg.uri))

    def remove_source(self, source_id: str) -> SourceSummary:
        """Stop one stream of the running service; returns its summary once its outputs are
        closed (:class:`~pipeline.errors.UnknownStreamError` when no stream has that id)."""
        return self._service("remove_source()").remove_stream(source_id)

    def streams(self) -> list[dict]:
        """Every stream now: ``id``, ``uri`` (credentials redacted), ``state`` (``starting`` |
        ``up`` | ``reconnecting`` | ``down`` | ``ended``), ``fps`` (delivered, last 5 s),
        ``frames_in``, ``frames_out``, ``drops`` (by reason); on Ray also ``worker``."""
        engine = self._service("streams()")
        return [self.stream(sid) for sid in list(engine.streams)]

    def stream(self, source_id: str) -> dict:
        """One stream, as :meth:`streams` shows it."""
        engine = self._service("stream()")
        stream = engine.streams.get(source_id)
        if stream is None:
            raise UnknownStreamError(f"no stream with id {source_id!r}")
        m = self.state.metrics
        st = m.snapshot(source_id)
        now = time.monotonic()
        window = min(FPS_WINDOW_S, max(now - engine.t_start, 1e-3))
        fps = len(m.stage_values("e2e", source_id, since=now - window)) / window
        out = {"id": source_id, "uri": redact_uri(stream.config.uri), "state": engine.stream_state(source_id),
               "live": stream.live, "fps": round(fps, 2), "frames_in": st.frames_in, "frames_out": st.frames_out,
               "drops": dict(sorted(st.drops.items()))}
        if self.plan.engine == "ray":  # the Ray worker that runs it (w0, w1, ...)
            out["worker"] = engine.worker_of(source_id)
        return out

    def update(self, partial: dict, check_only: bool = False) -> list[str]:
        """Apply a partial config to the running service: the live keys (counting lines and
        zones, ``model.conf_threshold``, ``model.classes``, latency budgets, drift thresholds)
        take effect from the next frame (on Ray, on every worker); any other key changed raises
        :class:`~pipeline.errors.RestartRequiredError` naming them, and nothing is applied.
        Returns the keys that changed. ``check_only``: every check, nothing applied."""
        from pipeline.runtime.live import apply_update

        engine = self._service("update()")
        cfg, changed = apply_update(self.cfg, partial, engine, check_only)
        if not check_only:
            self.cfg = cfg
        return changed

    def reload(self, new: Config) -> list[str]:
        """``SIGHUP``: ``new`` is the config file read again. Its live keys apply, under the rule of
        :meth:`update`; its sources are matched by id to the streams running now (one in the file
        that is not running is left alone: add it with :meth:`add_source`)."""
        from pipeline.config import to_dict

        engine = self._service("reload()")
        data = to_dict(new)
        entries = []
        for scfg in new.sources:
            sid = scfg.id or default_id(scfg.uri)
            if sid in engine.streams:
                entries.append(dict(to_dict(scfg), id=sid))
            else:
                log.info("reload: source %s of the file is not running (add it with POST /api/streams)", sid)
        data["sources"] = entries
        return self.update(data)

    def _service(self, what: str):
        if not self.plan.serving:
            raise RuntimeError(f"{what} needs a service: Pipeline(cfg, serve=True)")
        return self.engine

    def _local_only(self, what: str) -> None:
        if self.plan.engine != "local":
            raise RuntimeError(f"{what} needs cluster.engine: local (with ray the frames stay on the workers)")

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop and join whatever runs in the background; release what the plan holds if never run."""
        for stream in list(self._streams):
            stream.close("leaving the with block")
        if not self._ran:
            self.close()

    def close(self) -> None:
        """Release what the plan acquired (backend sessions, observers' ports) when it never ran."""
        if not self._ran:
            self._ran = True
            self.plan.close()

    def run(self, progress: bool | None = None) -> RunSummary:
        """Run to the end (or a stop) with the engine ``cluster.engine`` names; returns the summary."""
        if self._ran:  # its sources are read and its backend released (by run() or a results() loop)
            raise RuntimeError("a Pipeline runs once: build a new one to run again")
        self._ran = True
        summary = self.engine.run(progress)
        for consumer in self._consumers:
            if consumer.error is not None:
                raise consumer.error
        return summary


__all__ = ["Pipeline"]
