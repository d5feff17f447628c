"""The Pipeline: a deployment's front door. It resolves the model, the backend and each
source's policy once, then ``run()`` builds the stages (:mod:`.build`), watches them to the end
(:mod:`.supervise`) and returns the summary (:mod:`.summary`).

Stopping has two steps. The first (Ctrl-C, SIGTERM, ``duration_s``, end of input) ends the
streams at their readers: what is already in flight is finished and written, then every sink
closes. A second Ctrl-C aborts: every stage exits at once, and the sinks still close, so JSON
lines hold whole lines and videos play.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import numpy as np

from pipeline.backends.base import Backend
from pipeline.config import Config
from pipeline.errors import ConfigError, SourceError
from pipeline.metrics import Metrics
from pipeline.model import ModelSpec, fit_spec_to_input
from pipeline.policy import (
    LatencyBudget,
    StreamPolicy,
    budget_note,
    effective_max_batch,
    profile_opt_batch,
    warn_ignored_budget,
)
from pipeline.queues import EndOfStream, FrameQueue
from pipeline.runtime.build import (
    StageGraph,
    build_stages,
    inference_workers,
    make_backend,
    resolve_model,
    resolve_output,
    warm_up,
)
from pipeline.runtime.summary import RunSummary, summarize
from pipeline.runtime.supervise import TwoStepStop, close_sinks, start_warm_inference, stop_exporters, watch
from pipeline.sinks import Sink
from pipeline.sinks.watch import NothingFoundWatch
from pipeline.sources import create_source, expand_globs, quiet_native_logs, redacted_config
from pipeline.sources.base import Source
from pipeline.sources.nvdec import apply_decoders
from pipeline.stages import Stage

log = logging.getLogger(__name__)
STAGE_JOIN_S = 30.0  # how long a failed start waits for a stage (the inference thread mid warm-up) to end


class Pipeline(TwoStepStop):
    """A deployment, built from a :class:`Config`. ``run()`` blocks until the end and returns a summary."""

    def __init__(self, cfg: Config, backend: Backend | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.drain_note = f"finishing frames in flight (at most {cfg.pipeline.drain_timeout_s:g} s)"
        self.metrics = Metrics()
        self._done = threading.Event()
        self._ended: dict[str, EndOfStream] = {}
        self._lock = threading.Lock()
        self.errors: list[tuple[str, str]] = []
        quiet_native_logs(debug=log.isEnabledFor(logging.DEBUG))
        source_cfgs = expand_globs(cfg.sources)
        if not source_cfgs:
            raise SourceError("no source given: pass --source URI or set sources: in the config")
        self.model_path, self.spec = resolve_model(cfg)
        self.source_cfgs = source_cfgs
        self.sources: list[Source] = [create_source(s, self.stop_reading, self._event_hook(i))
                                      for i, s in enumerate(source_cfgs)]
        apply_decoders(self.sources, source_cfgs, cfg.backend.name)
        ids = [s.id for s in self.sources]
        for sid in ids:
            if ids.count(sid) > 1:
                raise SourceError(f"two sources share the id {sid!r}; give them distinct ids in sources:")
        # Calls in flight at once: a backend passed in (tests, embedders) gets one, as it may not be
        # safe to call from two threads. Several calls share out the cores: a batch job runs them
        # all the time; with a live source the run starts with one call on every core and goes side
        # by side (a second session, the cores shared out) only while the frames offered need it.
        self.workers = 1 if backend is not None else inference_workers(cfg)
        live = any(s.is_live for s in self.sources)
        self.backend = backend or make_backend(cfg, self.model_path, 1 if live else self.workers,
                                               profile_opt_batch(live, cfg.backend.max_batch))
        self.side_backend: Backend | None = None
        if live and self.workers > 1:
            try:
                self.side_backend = make_backend(cfg, self.model_path, self.workers)
            except BaseException:
                self.close_backends()
                raise
        info = self.backend.inputs[0]
        self.spec_assumed = self.spec == ModelSpec()  # no spec anywhere: the normalization is a guess
        self.spec = fit_spec_to_input(self.spec, info.shape, np.dtype(info.dtype).name, str(self.model_path))
        self.output_index, self.fmt = resolve_output(cfg, self.spec, self.backend, self.model_path)
        self.max_batch = effective_max_batch(cfg.backend.max_batch, self.backend.max_batch)
        self.policies: dict[str, StreamPolicy] = {
            src.id: StreamPolicy.for_source(src.id, src.is_live, scfg, cfg.pipeline, cfg.backend.max_batch)
            for src, scfg in zip(self.sources, source_cfgs)}
        self.budget = LatencyBudget.for_policies(self.policies.values())
        self._check_classes()
        self.names = self.spec.names
        self.stages: list[Stage] = []
        self.queues: list[FrameQueue] = []  # every queue between stages, once built (for the exporters)
        self._graph: StageGraph | None = None
        self.sinks: dict[str, list[Sink]] = {}
        self.outputs: dict[str, list[str]] = {}
        self._opened: set[str] = set()
        self._exporters: list[object] = []
        self._frame_hooks: list = []
        self._sink_factories: list = []  # see add_sink_factory
        self.add_sink_factory(lambda src, scfg: NothingFoundWatch(src.id, self.model_path.name,
                                                                  self.spec.normalization()))
        self._consumers: list = []  # on_result runners, whose errors run() raises
        self._streams: weakref.WeakSet = weakref.WeakSet()  # open results() streams
        self._ran = False
        self.tracking = None
        self._refused: ConfigError | None = None  # a line or zone outside a live source's frame
        if cfg.tracking.enabled:
            from pipeline.tracking.stream import Tracking

            self.tracking = Tracking(cfg.tracking, self.names, self.sources, on_refuse=self.stop)

    def _check_classes(self) -> None:
        n = len(self.spec.names)
        unknown = [c for c in self.cfg.model.classes or [] if n and c >= n]
        if unknown:
            raise ConfigError(f"{self.cfg.path or '<config>'}: model.classes: {unknown[0]} is not a class id of "
                              f"{self.model_path.name} ({n} classes: 0 to {n - 1})")

    def _event_hook(self, index: int):
        def hook(event: str) -> None:
            sid = self.sources[index].id
            self.metrics.count(sid, {"reconnect": "reconnects", "disconnect": "disconnects", "open": "opens"}.get(event, event))
            self.metrics.gauge(sid, "up", 1.0 if event in ("open", "reconnect") else 0.0)
            src = self.sources[index]
            if event == "open" and self.tracking is not None and src.size != (0, 0) and self._refused is None:
                try:  # a live source's size is known now, before its first frame: check its lines and zones once
                    self.tracking.check_frame_size(sid, src.size)
                except ConfigError as exc:
                    self._refused = exc  # run() raises it: one line, exit 2, as for a file
                    self.stop("a line or zone outside the frame")
        return hook

    # ---- building ---------------------------------------------------------------------------
    def _open_sources(self) -> None:
        """Open file sources up front so a missing or undecodable video fails before any work."""
        for src in self.sources:
            if src.is_file:
                src.open()
                self._opened.add(src.id)
                if self.tracking is not None and src.size != (0, 0):
                    self.tracking.check_frame_size(src.id, src.size)

    def _on_end(self, eos: EndOfStream) -> None:
        with self._lock:
            self._ended[eos.source_id] = eos
            if len(self._ended) == len(self.sources):
                self._done.set()

    # ---- running ----------------------------------------------------------------------------
    def add_exporter(self, exporter: object) -> None:
        """Something with ``start(metrics)`` / ``stop()`` run alongside (e.g. Prometheus, drift)."""
        self._exporters.append(exporter)

    def add_sink_factory(self, factory) -> None:
        """Call ``factory(source, source_config)`` for each source when the stages are built; the
        sink it returns gets that source's frames after the configured sinks (see pipeline.results)."""
        self._sink_factories.append(factory)

    def results(self, images: bool = False, live_buffer: int = 1):
        """Run in the background and iterate over the delivered frames (:class:`pipeline.results.Result`).

        ``images=True`` adds each frame's pixels. A live source never waits for a slow consumer:
        results it misses are counted as ``slow_consumer`` events; a batch source waits, nothing is
        lost. Leaving the loop stops the pipeline cleanly. See :mod:`pipeline.results`."""
        from pipeline.results import ResultStream

        if self._ran or len(self._streams):
            raise RuntimeError("a Pipeline runs once: build a new one for another results() loop")
        stream = ResultStream(self, images, live_buffer)
        self._streams.add(stream)
        return stream

    def on_result(self, callback, images: bool = False, live_buffer: int = 1) -> None:
        """Call ``callback(result)`` for each delivered frame, in a thread of its own, during
        ``run()``; same drop rules as :meth:`results`. If it raises, the pipeline stops cleanly
        and ``run()`` raises that exception."""
        from pipeline.results import CallbackRunner

        runner = CallbackRunner(self, callback, images, live_buffer)
        self._consumers.append(runner)
        self.add_exporter(runner)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop and join whatever runs in the background; release the backend if never run."""
        for stream in list(self._streams):
            stream.close("leaving the with block")
        if not self._ran:
            self.close_backends()

    def add_frame_hook(self, hook) -> None:
        """Call ``hook(frame)`` for every frame in its preprocess thread (after letterboxing, so
        ``frame.image`` and ``frame.tensor`` are both there). Keep it cheap; errors are ignored."""
        self._frame_hooks.append(hook)

    def run(self, progress: bool | None = None) -> RunSummary:
        if self._ran:  # its sources are read and its backend released (by run() or a results() loop)
            raise RuntimeError("a Pipeline runs once: build a new one to run again")
        log.debug("resolved config: %s", redacted_config(self.cfg))
        w, h = self.spec.input_size
        log.info("%d source(s): %s; model %s (%dx%d, %d classes, %s, input %s%s) on %s, max batch %d; %s",
                 len(self.sources), ", ".join(f"{s.id} ({'live' if s.is_live else 'file'})" for s in self.sources),
                 self.model_path.name, w, h, len(self.names), self.fmt, self.spec.normalization(),
                 " assumed: no model spec" if self.spec_assumed else "", self.backend.name,
                 self.max_batch, budget_note(self.policies.values()))
        warn_ignored_budget(self.cfg.pipeline, [s.id for s, c in zip(self.sources, self.source_cfgs)
                                                if not s.is_live and c.latency_budget_ms is None])
        t_start = time.monotonic()
        self._ran = True
        started: list[object] = []
        try:
            self._open_sources()
            self._graph = build_stages(self)
            self.stages, self.queues = self._graph.stages, self._graph.queues
            start_warm_inference(self._graph.inference)
            for ex in self._exporters:
                ex.start(self.metrics)  # type: ignore[attr-defined]
                started.append(ex)
        except BaseException:
            self.abort.set()
            for st in self.stages:
                if st.is_alive():
                    st.join(STAGE_JOIN_S)  # the inference thread, mid warm-up: the backend is closed below
            for src in self.sources:
                src.close()
            close_sinks(self.sinks)
            stop_exporters(started)
            busy = [st for st in self.stages if st.is_alive()]
            if busy:  # closing the backend under a running call would free its GPU buffers mid-call
                log.warning("%s still running after %g s; the backend is closed when it returns",
                            ", ".join(st.name for st in busy), STAGE_JOIN_S)
                threading.Thread(target=_close_after, args=(busy, self.close_backends),
                                 name="inferpath-close-backend", daemon=True).start()
            else:
                self.close_backends()
            raise
        for st in self.stages:
            if st.ident is None:  # the inference thread is already running
                st.start()
        watch(self, self._graph, t_start, self.cfg.pipeline.progress if progress is None else progress)
        for consumer in self._consumers:
            if consumer.error is not None:
                raise consumer.error
        if self._refused is not None:
            raise self._refused
        return self.summary(time.monotonic() - t_start)

    def _warm_up(self) -> None:
        """Warm the backend up, in the inference thread (see InferenceStage), and warn when the
        tightest budget is below one inference call."""
        w, h = self.spec.input_size
        item_shape = (h, w, 3) if self.spec.layout == "NHWC" else (3, h, w)
        full = any(p.live or p.budget_ms is not None for p in self.policies.values())
        infer_ms = warm_up(self.backend, item_shape, self.max_batch, self.model_path.name, full)
        if self.side_backend is not None:
            warm_up(self.side_backend, item_shape, self.max_batch, self.model_path.name, full)
        tightest = self.budget.tightest_ms
        if tightest is not None and tightest < infer_ms:
            log.warning("latency budget %g ms is below the time of one inference call (%.1f ms here): "
                        "most or all frames will be dropped as late", tightest, infer_ms)

    def close_backends(self) -> None:
        """Release the backend (and the second session of calls side by side, if any)."""
        self.backend.close()
        if self.side_backend is not None:
            self.side_backend.close()

    def summary(self, wall_s: float) -> RunSummary:
        """The summary of the finished run (see :mod:`pipeline.runtime.summary`)."""
        if self._graph is None:
            raise RuntimeError("summary() before run()")
        return summarize(self, self._graph, wall_s)


def _close_after(threads: list[threading.Thread], close) -> None:
    """Join ``threads``, then ``close()``: a backend is released only once no call runs on it."""
    for t in threads:
        t.join()
    close()


__all__ = ["Pipeline"]
