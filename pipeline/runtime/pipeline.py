"""The Pipeline: builds the stages from a config, starts them, watches them, stops them, and
summarizes the run.

Stopping has two steps. The first (Ctrl-C, SIGTERM, ``duration_s``, end of input) ends the
streams at their readers: what is already in flight is finished and written, then every sink
closes. A second Ctrl-C aborts: every stage exits at once, and the sinks still close, so JSON
lines hold whole lines and videos play.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.backends.base import Backend, BackendOptions, create_backend
from pipeline.config import Config, SourceConfig
from pipeline.errors import ConfigError, InferpathError, SourceError
from pipeline.metrics import STAGES, Metrics, percentiles
from pipeline.model import ModelSpec, bundled_model_path, check_model_file, fit_spec_to_input, load_spec
from pipeline.postprocess import choose_output
from pipeline.queues import EndOfStream, FrameQueue, QueueGroup
from pipeline.sinks import Sink, ensure_writable_dir
from pipeline.sinks.display import DisplaySink, display_available
from pipeline.sinks.jsonl import JsonlSink
from pipeline.sinks.video import VideoSink
from pipeline.sources import create_source, expand_globs, quiet_native_logs, redacted_config
from pipeline.sources.base import Source
from pipeline.stages import (
    DecodeSettings,
    InferenceStage,
    LatencyBudget,
    PostprocessStage,
    PreprocessStage,
    ReaderStage,
    SinkStage,
    Stage,
    StageContext,
    count_evictions,
    inference_error,
)

log = logging.getLogger(__name__)
LIVE_QUEUE_SIZE = 1  # live streams: the newest frame waits alone between two stages; an older one is evicted


@dataclass
class SourceSummary:
    id: str
    uri: str
    live: bool
    frames_in: int
    frames_out: int
    drops: dict[str, int]
    events: dict[str, int]
    detections: dict[str, int]
    fps: float
    e2e_ms: list[float]  # p50, p95, p99
    stages_ms: dict[str, list[float]]
    claimed_frames: int = 0
    max_frames: int | None = None
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    never_connected: bool = False  # a live source that never delivered a frame and was down at the end
    source_failed: bool = False  # the error is the source's own (it could not be opened or read)
    tracking: dict | None = None  # tracks, line crossings, zone occupancy (tracking on)


@dataclass
class RunSummary:
    sources: list[SourceSummary]
    wall_s: float
    model: str
    backend: str
    batch_sizes: dict[int, int]
    errors: list[tuple[str, str]]
    stopped_by: str | None = None
    workers: list[dict] = field(default_factory=list)  # cluster runs: one entry per Ray worker

    @property
    def frames(self) -> int:
        return sum(s.frames_out for s in self.sources)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def table(self) -> str:
        """The human summary: per source counts, fps, latency, drops; per stage p50/p99."""
        lines = [f"model {self.model} on {self.backend}; {self.frames} frames in {self.wall_s:.1f} s "
                 f"({self.fps:.1f} fps)"]
        if self.batch_sizes:
            lines.append("batch sizes: " + ", ".join(f"{k}x{v}" for k, v in sorted(self.batch_sizes.items())))
        rows = [(s.id, str(s.frames_in), str(s.frames_out), str(sum(s.drops.values())), f"{s.fps:.1f}",
                 _ms(s.e2e_ms[0]), _ms(s.e2e_ms[2]), f"  ERROR: {s.error}" if s.error else "")
                for s in self.sources]
        heads = ("source", "in", "out", "dropped", "fps", "e2e p50", "p99 ms")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]  # nothing is ever cut
        header = " ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))
        lines += ["", header, "-" * len(header)]
        for r in rows:
            lines.append(" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         + r[-1])
        agg = self._stage_rows
        if agg:  # no frame passed: no stage table
            cells = {name: [f"{v:.2f}" for v in agg[name]] for name in [*STAGES, "e2e"] if name in agg}
            w = max(8, *(len(c) for row in cells.values() for c in row))
            lines += ["", f"{'stage':<12} " + " ".join(h.rjust(w) for h in ("p50 ms", "p95 ms", "p99 ms"))]
            lines += [f"{name:<12} " + " ".join(c.rjust(w) for c in row) for name, row in cells.items()]
        for s in self.sources:
            if s.drops:
                lines.append(f"drops {s.id}: " + ", ".join(f"{k}={v}" for k, v in sorted(s.drops.items())))
            if s.events:
                lines.append(f"events {s.id}: " + ", ".join(f"{k}={v}" for k, v in sorted(s.events.items())))
        dets: dict[str, int] = {}
        for s in self.sources:
            for k, v in s.detections.items():
                dets[k] = dets.get(k, 0) + v
        if dets:
            top = sorted(dets.items(), key=lambda kv: -kv[1])
            lines.append("detections: " + ", ".join(f"{k} {v}" for k, v in top))
        for s in self.sources:
            if s.tracking:
                from pipeline.tracking.stream import summary_lines

                lines += summary_lines(s.id, s.tracking)
        for s in self.sources:
            if s.outputs:
                lines.append(f"outputs {s.id}: " + ", ".join(s.outputs))
        for w in self.workers:
            lines.append(f"worker {w['worker']} (node {w['node']}, pid {w['pid']}): {w['frames']} frames of "
                         f"{', '.join(w['streams'])}" + (f"; lost and replaced {w['restarts']}x" if w['restarts'] else ""))
        return "\n".join(lines)

    _stage_rows: dict[str, list[float]] = field(default_factory=dict)


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"  # NaN (no samples) as '-'


def resolve_model(cfg: Config) -> tuple[Path, ModelSpec]:
    """The model file and its spec (bundled model when ``model.path`` is unset)."""
    path = Path(cfg.model.path).expanduser() if cfg.model.path else bundled_model_path()
    check_model_file(path)
    spec = load_spec(path, Path(cfg.model.spec) if cfg.model.spec else None)
    return path, spec


def make_backend(cfg: Config, model_path: Path) -> Backend:
    b = cfg.backend
    opts = BackendOptions(
        intra_op_threads=b.onnxruntime.intra_op_threads,
        inter_op_threads=b.onnxruntime.inter_op_threads,
        providers=tuple(b.onnxruntime.providers),
        max_batch=b.max_batch,
        extra={"onnxruntime": b.onnxruntime, "tensorrt": b.tensorrt, "test_delay_ms": b.test_delay_ms},
    )
    return create_backend(b.name, str(model_path), opts)


def resolve_output(cfg: Config, spec: ModelSpec, backend: Backend, model_path: Path) -> tuple[int, str]:
    """``(output index, format)``: the format from config, then the spec, then detected from the
    output shapes; every output is scanned (``model.output`` picks one by name)."""
    fmt = cfg.model.format if cfg.model.format != "auto" else spec.output_format
    outputs = [(o.name, o.shape) for o in backend.outputs]
    index, chosen = choose_output(outputs, fmt, len(spec.names) or None, cfg.model.output, str(model_path))
    if fmt == "auto":
        log.info("output format: %s (auto, from output %s shape %s%s)", chosen, outputs[index][0],
                 list(outputs[index][1]), f" and {len(spec.names)} class names" if spec.names else "")
    elif len(outputs) > 1:
        log.info("output format: %s (from output %s shape %s)", chosen, outputs[index][0], list(outputs[index][1]))
    return index, chosen


def resolve_format(cfg: Config, spec: ModelSpec, backend: Backend, model_path: Path) -> str:
    """The output format (see :func:`resolve_output`)."""
    return resolve_output(cfg, spec, backend, model_path)[1]


class TwoStepStop:
    """The two-step stop shared by a local :class:`Pipeline` and the cluster driver. The first
    call ends the streams and drains; a second call aborts now. Only sets flags, so it is safe
    in a signal handler. ``drain_note`` says, in the log, what the first step waits for."""

    drain_note = "finishing frames in flight"

    def __init__(self) -> None:
        self.stop_reading = threading.Event()
        self.abort = threading.Event()
        self.stopped_by: str | None = None
        self._stop_at: float | None = None  # when the first step came (the drain is bounded from it)

    def stop(self, reason: str = "stop requested") -> None:
        """First call: end the streams and drain. Second call: abort now."""
        if self.stop_reading.is_set():
            if not self.abort.is_set():
                log.warning("stopping now (%s again): in-flight frames are discarded", reason)
                self.abort.set()
            return
        self.stopped_by = self.stopped_by or reason
        log.info("stopping (%s): %s", reason, self.drain_note)
        self._stop_at = time.monotonic()
        self.stop_reading.set()


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
        self._infer_ms = 0.0
        quiet_native_logs(debug=log.isEnabledFor(logging.DEBUG))
        source_cfgs = expand_globs(cfg.sources)
        if not source_cfgs:
            raise SourceError("no source given: pass --source URI or set sources: in the config")
        self.model_path, self.spec = resolve_model(cfg)
        self.source_cfgs = source_cfgs
        self.sources: list[Source] = [create_source(s, self.stop_reading, self._event_hook(i))
                                      for i, s in enumerate(source_cfgs)]
        ids = [s.id for s in self.sources]
        for sid in ids:
            if ids.count(sid) > 1:
                raise SourceError(f"two sources share the id {sid!r}; give them distinct ids in sources:")
        self.backend = backend or make_backend(cfg, self.model_path)
        info = self.backend.inputs[0]
        self.spec = fit_spec_to_input(self.spec, info.shape, np.dtype(info.dtype).name, str(self.model_path))
        self.output_index, self.fmt = resolve_output(cfg, self.spec, self.backend, self.model_path)
        self._check_classes()
        self.names = self.spec.names
        self.stages: list[Stage] = []
        self.sinks: dict[str, list[Sink]] = {}
        self.outputs: dict[str, list[str]] = {}
        self._opened: set[str] = set()
        self._exporters: list[object] = []
        self._frame_hooks: list = []
        self._sink_factories: list = []  # see add_sink_factory
        self._consumers: list = []  # on_result runners, whose errors run() raises
        self._streams: weakref.WeakSet = weakref.WeakSet()  # open results() streams
        self._ran = False
        self.tracking = None
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
        return hook

    # ---- building ---------------------------------------------------------------------------
    def _budget_for(self, scfg: SourceConfig, live: bool) -> float | None:
        if scfg.latency_budget_ms is not None:
            return scfg.latency_budget_ms
        return self.cfg.pipeline.latency_budget_ms if live else None

    def _open_sources(self) -> None:
        """Open file sources up front so a missing or undecodable video fails before any work."""
        for src in self.sources:
            if not src.is_live or hasattr(src, "claimed_frames"):
                src.open()
                self._opened.add(src.id)
                if self.tracking is not None and src.size != (0, 0):
                    self.tracking.check_frame_size(src.id, src.size)

    def _make_sinks(self, src: Source, scfg: SourceConfig) -> list[Sink]:
        out = self.cfg.output
        sinks: list[Sink] = []
        if not (out.jsonl or out.video or out.display):
            return sinks
        directory = Path(scfg.output_dir or out.dir).expanduser()
        if out.jsonl or out.video:
            ensure_writable_dir(directory)
        if out.jsonl:
            sinks.append(JsonlSink(directory / f"{src.id}.jsonl", src.id, self.names))
        if out.video:
            fps = src.fps or 25.0
            if src.size == (0, 0):
                log.info("%s: video sink opens at the first frame", src.id)
            rate = getattr(src, "measured_fps", None) if src.is_live else None
            rate_fn = (lambda src=src: src.measured_fps) if rate is not None else None
            sinks.append(_LazyVideoSink(directory / f"{src.id}.mp4", fps, src.size, self.names, out.video_codec,
                                        rate=rate_fn))
        if out.display:
            if display_available():
                sinks.append(DisplaySink(src.id, self.names, self.stop))
            else:
                log.warning("output.display: no display ($DISPLAY unset); display sink skipped")
        self.outputs[src.id] = [str(getattr(s, "path", "")) for s in sinks if getattr(s, "path", None)]
        return sinks

    def _build(self) -> list[Stage]:
        cfg = self.cfg
        budgets = {src.id: self._budget_for(scfg, src.is_live) for src, scfg in zip(self.sources, self.source_cfgs)}
        self.budget = LatencyBudget(budgets)
        ctx = StageContext(self.metrics, self.budget, self.stop_reading, self.abort, self.errors, self._lock,
                           self._frame_hooks)
        on_drop = count_evictions(self.metrics)
        group = QueueGroup()
        ids = [s.id for s in self.sources]
        post_q = FrameQueue("postprocess", cfg.pipeline.queue_size, "block", on_drop)
        sink_q = FrameQueue("sink", cfg.pipeline.queue_size, "block", on_drop)
        stages: list[Stage] = []
        self.queues: list[FrameQueue] = []
        for src, scfg in zip(self.sources, self.source_cfgs):
            policy = self._policy_for(src, scfg)
            size = LIVE_QUEUE_SIZE if policy == "drop_oldest" else cfg.pipeline.queue_size
            read_q = FrameQueue("preprocess", size, policy, on_drop)
            # Live: the newest max_batch frames wait for inference, so an overloaded stream batches.
            infer_size = max(size, cfg.backend.max_batch) if policy == "drop_oldest" else size
            infer_q = group.add(src.id, "inference", infer_size, policy, on_drop)
            self.queues += [read_q, infer_q]
            self.sinks[src.id] = self._make_sinks(src, scfg) + [f(src, scfg) for f in self._sink_factories]
            stages.append(ReaderStage(ctx, src, read_q, opened=src.id in self._opened, max_frames=scfg.max_frames))
            stages.append(PreprocessStage(ctx, src.id, self.spec, read_q, infer_q))
        self.queues += [post_q, sink_q]
        stages.append(InferenceStage(ctx, self.backend, group, post_q, ids, cfg.backend.max_batch,
                                     cfg.backend.batch_timeout_ms, warm_up=self._warm_up,
                                     model=self.model_path.name))
        m = cfg.model
        settings = DecodeSettings(self.fmt, m.conf_threshold, m.iou_threshold, m.max_detections,
                                  tuple(m.classes) if m.classes else None, self.output_index)
        stages.append(PostprocessStage(ctx, settings, post_q, sink_q, ids))
        stages.append(SinkStage(ctx, sink_q, self.sinks, self.names, self._on_end, self.tracking))
        return stages

    @staticmethod
    def _policy_for(src: Source, scfg: SourceConfig) -> str:
        return scfg.queue_policy if scfg.queue_policy != "auto" else ("drop_oldest" if src.is_live else "block")

    def delivery_rules(self, src: Source, scfg: SourceConfig) -> tuple[bool, float | None]:
        """(drops allowed, latency budget ms) of a source: what a sink that buffers follows."""
        return self._policy_for(src, scfg) == "drop_oldest", self._budget_for(scfg, src.is_live)

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
            self.backend.close()

    def add_frame_hook(self, hook) -> None:
        """Call ``hook(frame)`` for every frame in its preprocess thread (after letterboxing, so
        ``frame.image`` and ``frame.tensor`` are both there). Keep it cheap; errors are ignored."""
        self._frame_hooks.append(hook)

    def run(self, progress: bool | None = None) -> RunSummary:
        log.debug("resolved config: %s", redacted_config(self.cfg))
        w, h = self.spec.input_size
        budgets = sorted({b for b in (self._budget_for(c, s.is_live) for s, c in zip(self.sources, self.source_cfgs))
                          if b is not None})
        log.info("%d source(s): %s; model %s (%dx%d, %d classes, %s) on %s, max batch %d; %s",
                 len(self.sources), ", ".join(f"{s.id} ({'live' if s.is_live else 'file'})" for s in self.sources),
                 self.model_path.name, w, h, len(self.names), self.fmt, self.backend.name,
                 min(self.cfg.backend.max_batch, self.backend.max_batch),
                 self._budget_note(budgets))
        self._warn_ignored_budget()
        t_start = time.monotonic()
        self._ran = True
        started: list[object] = []
        try:
            self._open_sources()
            self.stages = self._build()
            self._start_warm_inference()
            for ex in self._exporters:
                ex.start(self.metrics)  # type: ignore[attr-defined]
                started.append(ex)
        except BaseException:
            self.abort.set()
            for st in self.stages:
                if st.is_alive():
                    st.join(30)  # the inference thread, mid warm-up: the backend is closed below
            for src in self.sources:
                src.close()
            self._close_all_sinks()
            for ex in started:
                ex.stop()  # type: ignore[attr-defined]
            self.backend.close()
            raise
        for st in self.stages:
            if st.ident is None:  # the inference thread is already running
                st.start()
        duration = self.cfg.pipeline.duration_s
        show = self.cfg.pipeline.progress if progress is None else progress
        monitor = _Monitor(self, show and sys.stderr.isatty(), self.cfg.metrics.log_interval_s)
        displays = [s for sinks in self.sinks.values() for s in sinks if isinstance(s, DisplaySink)]
        try:
            while not self._done.wait(0.02 if displays else 0.1):
                for display in displays:  # HighGUI runs in this (the main) thread only
                    display.pump()
                if duration is not None and time.monotonic() - t_start >= duration and not self.stop_reading.is_set():
                    self.stop(f"duration {duration:g} s reached")
                if self.abort.is_set() and not any(st.is_alive() for st in self.stages if isinstance(st, SinkStage)):
                    break
                drain = self.cfg.pipeline.drain_timeout_s
                if (self._stop_at is not None and not self.abort.is_set()
                        and time.monotonic() - self._stop_at > drain):
                    log.warning("frames in flight not finished %g s after the stop (pipeline.drain_timeout_s); "
                                "stopping now, they count as 'shutdown' drops", drain)
                    self.abort.set()
                monitor.tick()
        finally:
            if not self._done.is_set() and not self.abort.is_set():
                self.stop("interrupted")
            self._join()
            for display in displays:
                display.destroy()
            self._remove_unwritten()
            monitor.close()
            for ex in self._exporters:
                try:
                    ex.stop()  # type: ignore[attr-defined]
                except Exception as exc:
                    log.warning("exporter stop failed: %s", exc)
            self.backend.close()
        for consumer in self._consumers:
            if consumer.error is not None:
                raise consumer.error
        return self.summary(time.monotonic() - t_start)

    def _start_warm_inference(self) -> None:
        """Start the inference thread alone and wait until it has warmed the backend up; raise
        the warm-up's error here, before any other stage has started."""
        inference = next(st for st in self.stages if isinstance(st, InferenceStage))
        inference.start()
        while not inference.warmed.wait(0.1):
            if not inference.is_alive():
                break
        if inference.warm_up_error is not None:
            inference.join(5)
            raise inference.warm_up_error

    def _warm_up(self) -> None:
        """One inference per batch size before the frames flow, run in the inference thread (see
        InferenceStage): the first call of a session allocates and tunes, and would otherwise
        count against the first frames' budget."""
        info = self.backend.inputs[0]
        dims = [d if isinstance(d, int) else s for d, s in
                zip(info.shape[1:], self._input_item_shape())]
        sizes = {1, max(1, min(self.cfg.backend.max_batch, self.backend.max_batch))}
        for b in sorted(sizes):
            batch = np.zeros((b, *dims), info.dtype)
            try:
                self.backend.infer(batch)
                t0 = time.monotonic()
                if b == 1:
                    self.backend.infer(batch)  # a second, warm call: what one frame costs
                    self._infer_ms = (time.monotonic() - t0) * 1000
            except InferpathError:
                raise
            except Exception as exc:
                raise inference_error(self.model_path.name, batch, exc) from None
        budgets = [b for b in self.budget.budgets_ms.values() if b is not None]
        if budgets and min(budgets) < self._infer_ms:
            log.warning("latency budget %g ms is below the time of one inference call (%.1f ms here): "
                        "most or all frames will be dropped as late", min(budgets), self._infer_ms)

    def _budget_note(self, budgets: list[float]) -> str:
        if budgets:
            return f"latency budget {', '.join(f'{b:g}' for b in budgets)} ms"
        if any(s.is_live for s in self.sources):
            return ("no latency budget (live sources: only the newest frame waits between stages; "
                    "older ones are dropped as queue_full)")
        return "no latency budget (every frame is processed)"

    def _warn_ignored_budget(self) -> None:
        """``pipeline.latency_budget_ms`` is for live sources; say once that files ignore it."""
        if self.cfg.pipeline.latency_budget_ms is None:
            return
        files = [s.id for s, c in zip(self.sources, self.source_cfgs) if not s.is_live and c.latency_budget_ms is None]
        if files:
            log.warning("pipeline.latency_budget_ms is ignored for file sources (%s): every frame of a file is "
                        "processed; play it as a camera with realtime: true, or set sources[].latency_budget_ms",
                        ", ".join(files))

    def _input_item_shape(self) -> tuple[int, ...]:
        w, h = self.spec.input_size
        return (h, w, 3) if self.spec.layout == "NHWC" else (3, h, w)

    def _join(self) -> None:
        deadline = time.monotonic() + 30
        for st in self.stages:
            st.join(max(0.0, deadline - time.monotonic()))
            if st.is_alive():
                self.abort.set()
        for st in self.stages:
            st.join(5)
        self._close_all_sinks()
        stuck = [st.name for st in self.stages if st.is_alive()]
        if stuck:
            log.error("threads still running after stop: %s", ", ".join(stuck))

    def _remove_unwritten(self) -> None:
        """An output that no frame reached (an empty JSONL, a header-only mp4) is deleted and not
        listed: a failed or empty run leaves nothing that looks like a result."""
        for sid, sinks in self.sinks.items():
            for sink in sinks:
                path = getattr(sink, "path", None)
                written = getattr(sink, "lines", getattr(sink, "frames", 1))
                if path is None or written:
                    continue
                try:
                    Path(path).unlink(missing_ok=True)
                except OSError as exc:
                    log.debug("%s: cannot remove the unwritten %s (%s)", sid, path, exc.strerror)
                if str(path) in self.outputs.get(sid, []):
                    self.outputs[sid].remove(str(path))

    def _close_all_sinks(self) -> None:
        close_sinks(self.sinks)

    def _account_in_flight(self) -> None:
        """Frames read but neither delivered nor dropped (discarded by an abort or a failed stage)
        are counted as drops, so in = out + dropped holds for every source, always."""
        reason = "shutdown" if not self.errors else "error"
        for sid, st in list(self.metrics.sources.items()):
            lost = st.frames_in - st.frames_out - sum(st.drops.values())
            if lost > 0:
                self.metrics.drop(sid, reason, lost)

    def _source_error(self, src: Source, frames_in: int) -> tuple[str | None, bool, bool]:
        """``(error, never_connected, source_failed)`` for one source at the end of the run."""
        eos = self._ended.get(src.id)
        failed = any(isinstance(st, ReaderStage) and st.source is src and st.state.value == "failed"
                     for st in self.stages)
        never = src.is_live and frames_in == 0 and getattr(src, "down_at_end", False)
        if eos is not None and eos.error:  # e.g. retries ran out
            return (f"never connected: {eos.error}" if never else eos.error), never, failed
        if never:
            why = "opened but delivered no frame" if getattr(src, "ever_opened", False) else "could not be opened"
            return f"never connected: {src.uri} {why} in {self._wall_s:.0f} s", True, True
        shared = [msg for stage, msg in self.errors if stage != "capture"]
        return (shared[0] if shared and eos is None else None), False, False

    def summary(self, wall_s: float) -> RunSummary:
        m = self.metrics
        self._wall_s = wall_s
        self._account_in_flight()
        out = []
        for src, scfg in zip(self.sources, self.source_cfgs):
            st = m.sources.get(src.id)
            error, never, failed = self._source_error(src, st.frames_in if st else 0)
            stages_ms = {stage: [v * 1000 for v in percentiles(m.stage_values(stage, src.id))]
                         for stage in (*STAGES, "e2e")}
            span = ((st.last_ns - st.first_ns) / 1e9) if st and st.last_ns and st.first_ns else 0.0
            out.append(SourceSummary(
                id=src.id, uri=src.uri, live=src.is_live,
                frames_in=st.frames_in if st else 0, frames_out=st.frames_out if st else 0,
                drops=dict(st.drops) if st else {}, events=dict(st.events) if st else {},
                detections=dict(st.detections) if st else {},
                fps=(st.frames_out / span) if st and span > 0 else 0.0,
                e2e_ms=stages_ms["e2e"], stages_ms=stages_ms,
                claimed_frames=getattr(src, "claimed_frames", 0), max_frames=scfg.max_frames,
                error=error, outputs=self.outputs.get(src.id, []), never_connected=never, source_failed=failed,
                tracking=self.tracking.summary(src.id) if self.tracking is not None else None,
            ))
        rows = {stage: [v * 1000 for v in percentiles(m.stage_values(stage))] for stage in (*STAGES, "e2e")}
        rows = {k: v for k, v in rows.items() if not np.isnan(v[0])}
        summary = RunSummary(out, wall_s, self.model_path.name, self.backend.name, dict(m.batch_sizes),
                             list(self.errors), self.stopped_by)
        summary._stage_rows = rows
        return summary


def close_sinks(sinks_by_source: dict[str, list]) -> None:
    """Close every sink; a failure is logged and the others still close."""
    for sid, sinks in sinks_by_source.items():
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("%s: closing %s sink failed: %s", sid, getattr(sink, "name", "?"), exc)


class _LazyVideoSink:
    """Opens the VideoWriter at the first frame (a stream's size is known only then), but checks
    the path up front so an unwritable output fails before any work.

    A live source (``rate`` given) is written at its real rate: the first second of frames (at
    most ``BUFFER`` of them) waits here while the source measures how fast it delivers, then the
    writer opens at that rate and places every frame by its capture time."""

    name = "video"
    BUFFER = 12

    def __init__(self, path: Path, fps: float, size: tuple[int, int], names, codec: str,
                 rate: Callable[[], float] | None = None) -> None:
        self.path, self.fps, self.size, self.names, self.codec = path, fps, size, names, codec
        self.rate = rate
        self._sink: VideoSink | None = None
        self._pending: list = []
        if size != (0, 0) and rate is None:
            self._sink = VideoSink(path, fps, size, names, codec)

    @property
    def frames(self) -> int:
        return (self._sink.frames if self._sink else 0) + len(self._pending)

    def _open(self, frame) -> None:
        h, w = frame.image.shape[:2]
        fps = self.fps
        if self.rate is not None:
            measured = self.rate()
            if measured > 0:
                fps = round(measured, 2)
            log.info("%s: video at %.2f fps (%s)", self.path.name, fps,
                     "the rate the stream delivers" if measured > 0 else "the rate the stream reports")
        self._sink = VideoSink(self.path, fps, (w, h), self.names, self.codec, timed=self.rate is not None)

    def write(self, frame) -> None:
        if self._sink is None and self.rate is not None:
            self._pending.append(copy.copy(frame))  # the sink stage frees frame.image after delivery
            span_s = (frame.captured_ns - self._pending[0].captured_ns) / 1e9
            if len(self._pending) < self.BUFFER and span_s < 1.0:
                return
            self._flush()
            return
        if self._sink is None:
            self._open(frame)
        self._sink.write(frame)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._open(pending[0])
            for f in pending:
                self._sink.write(f)

    def close(self) -> None:
        if self._pending:
            self._flush()
        if self._sink is not None:
            self._sink.close()


class _Monitor:
    """Progress line (on a terminal) and the periodic log line, both from the metrics."""

    def __init__(self, pipe: Pipeline, show_progress: bool, log_interval_s: float) -> None:
        self.pipe = pipe
        self.show = show_progress
        self.interval = log_interval_s
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.last_log = self.t0
        self.last_out = 0
        self._drawn = False

    def tick(self) -> None:
        now = time.monotonic()
        m = self.pipe.metrics
        if self.show and now - self.last_draw >= 0.5:
            self.last_draw = now
            done = sum(st.frames_out for st in m.sources.values())
            total = sum(getattr(s, "claimed_frames", 0) for s in self.pipe.sources if not s.is_live)
            rate = done / max(now - self.t0, 1e-9)
            bar = ""
            if total and not any(s.is_live for s in self.pipe.sources):
                frac = min(1.0, done / total)
                bar = f"[{'#' * int(frac * 30):<30}] {done}/{total} "
            else:
                bar = f"{done} frames "
            sys.stderr.write(f"\r{bar}{rate:5.1f} fps, {m.total_drops()} dropped ")
            sys.stderr.flush()
            self._drawn = True
        if self.interval and now - self.last_log >= self.interval:
            since = self.last_log
            self.last_log = now
            done = sum(st.frames_out for st in m.sources.values())
            e2e = m.stage_values("e2e", since=since) * 1000
            p50, _, p99 = percentiles(e2e)
            if self._drawn:
                sys.stderr.write("\n")
            latency = f"e2e p50 {p50:.1f} ms p99 {p99:.1f} ms" if len(e2e) else "no frame delivered"
            log.info("%.1f fps over the last %.0f s, %s, %d dropped so far",
                     (done - self.last_out) / (now - since), now - since, latency, m.total_drops())
            self.last_out = done

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


__all__ = ["Pipeline", "RunSummary", "SourceSummary", "resolve_model", "make_backend", "InferpathError"]
