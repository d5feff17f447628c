"""The plan: what a config means, decided once.

:func:`plan` turns a validated :class:`~pipeline.config.Config` into a frozen :class:`Plan`: the
model and its spec, each stream with its :class:`~pipeline.policy.StreamPolicy`, the whole path's
:class:`~pipeline.policy.PathPolicy` (shared queues, effective ``max_batch``, how long a batch
waits), the backend (its factory and the sessions it opened), the output format and index, the
sinks (from the sink registry), the observers (Prometheus, live view, drift, the FP32 canary) and tracking. An
engine runs a plan (:mod:`pipeline.runtime.local` here, :mod:`pipeline.cluster` on Ray); nothing
after :func:`plan` reads the config to decide something.

The model's spec, where no YAML gives it, is read from the backend's session (ONNX Runtime has the
ONNX's metadata at hand), so a run parses the model once and never imports ``onnx`` (0.45 s here).

A plan holds what a run acquires before its first frame: the backend sessions, the sources
(built, not opened) and the observers' ports, so a bad model, a busy port or a missing file
fails here, before any frame is read. :meth:`Plan.close` releases them when no run does.

For ``cluster.engine: ray`` the plan is the driver's: the streams (ids and configs), the sinks
that need no pixels (JSON lines), the observers that need no frames (Prometheus). Each Ray worker
plans its own share as a local plan; the backend and the sources exist only there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.backends.base import Backend, BackendOptions, create_backend
from pipeline.config import Config, SourceConfig
from pipeline.errors import ConfigError, ModelError, SourceError
from pipeline.model import (
    ModelSpec,
    bundled_model_path,
    check_model_file,
    fit_spec_to_input,
    load_onnx_metadata,
    load_spec,
    spec_file,
)
from pipeline.observers import Observers, from_config
from pipeline.policy import PathPolicy, StreamPolicy, profile_opt_batch, warn_ignored_budget
from pipeline.postprocess import choose_output
from pipeline.sinks import Sink, SinkContext, create_sinks
from pipeline.sources import create_source, expand_globs
from pipeline.sources.base import Source, default_id
from pipeline.sources.nvdec import apply_decoders
from pipeline.stages import DecodeSettings

if TYPE_CHECKING:
    from pipeline.runtime.state import RunState

log = logging.getLogger("pipeline.runtime")

def model_file(cfg: Config) -> tuple[Path, ModelSpec | None]:
    """The model file (bundled model when ``model.path`` is unset), checked, and its spec when a
    YAML gives it; None when the spec is in the ONNX's metadata (:func:`resolve_model`)."""
    path = Path(cfg.model.path).expanduser() if cfg.model.path else bundled_model_path()
    check_model_file(path)
    return path, spec_file(path, Path(cfg.model.spec) if cfg.model.spec else None)


def resolve_model(cfg: Config) -> tuple[Path, ModelSpec]:
    """The model file and its spec (bundled model when ``model.path`` is unset). Where no YAML
    gives the spec, the ONNX's metadata is read with ``onnx``; a local plan reads it from its
    backend's session instead (no second parse of the model)."""
    path, spec = model_file(cfg)
    return path, spec if spec is not None else load_spec(path)


def inference_workers(cfg: Config) -> int:
    """Inference calls in flight at once, at most (``backend.onnxruntime.workers``; see the config)."""
    if cfg.backend.name != "onnxruntime":
        return 1  # TensorRT: one execution context, one stream
    workers = cfg.backend.onnxruntime.workers
    if workers != "auto":
        return workers
    return min(2, os.cpu_count() or 1) if cfg.backend.on_cpu else 1


def make_backend(cfg: Config, model_path: Path, workers: int = 1, opt_batch: int | None = None) -> Backend:
    """The configured backend. With ``workers`` calls in flight, ONNX Runtime's threads (when left
    at 0, all cores) are shared out: each call gets cores / workers. ``opt_batch``: the batch a
    TensorRT engine is tuned for (:func:`pipeline.policy.profile_opt_batch`)."""
    b = cfg.backend
    intra = b.onnxruntime.intra_op_threads
    if workers > 1 and intra == 0:
        intra = max(1, (os.cpu_count() or 1) // workers)
    opts = BackendOptions(
        intra_op_threads=intra,
        inter_op_threads=b.onnxruntime.inter_op_threads,
        providers=tuple(b.onnxruntime.providers),
        max_batch=b.max_batch,
        # every backend's own settings (backend.onnxruntime, backend.tensorrt, ...), and the opt batch
        extra={**b.sections(), "opt_batch": opt_batch},
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


@dataclass(frozen=True)
class StreamPlan:
    """One source: its id and config; for the local engine its source (built, not opened) and policy."""

    id: str
    config: SourceConfig
    source: Source | None = None  # None on the Ray driver: the source is built on its worker
    policy: StreamPolicy | None = None
    stop: threading.Event | None = None  # a service's stream: its own stop (removed alone); else the run's

    @property
    def live(self) -> bool:
        return self.source is not None and self.source.is_live


@dataclass(frozen=True)
class RunSettings:
    """How a run is watched: when it stops by itself, how long a stop may drain, what it shows."""

    duration_s: float | None
    drain_timeout_s: float
    progress: bool
    log_interval_s: float


@dataclass(frozen=True)
class InferencePlan:
    """The local engine's inference: the backend (and the second session of calls side by side),
    the calls in flight, the path's policy, how outputs are decoded."""

    backend: Backend
    side_backend: Backend | None
    workers: int
    path: PathPolicy
    decode: DecodeSettings
    make_backend: Callable[..., Backend]  # the backend factory: (workers, opt_batch) -> a new session

    def close(self) -> None:
        """Release the backend (and the second session, if any)."""
        self.backend.close()
        if self.side_backend is not None:
            self.side_backend.close()


@dataclass(frozen=True)
class Plan:
    """What a config means, decided once (see the module doc)."""

    engine: str  # "local" or "ray" (cluster.engine)
    config: Config  # what it was built from: logged (redacted) and, on Ray, each worker's share is cut from it
    model_path: Path
    spec: ModelSpec
    streams: tuple[StreamPlan, ...]
    run: RunSettings
    observers: Observers
    sink_context: SinkContext
    tracking: Any = None  # pipeline.tracking.stream.Tracking (tracking on)
    inference: InferencePlan | None = None  # None on the Ray driver
    spec_assumed: bool = False  # no model spec anywhere: the input normalization is a guess (said at start)
    sink_pixels: bool | None = None  # which registered sinks run here: all (None), or those that need pixels or not
    serving: bool = False  # a service (``inferpath serve``): streams are added and removed while it runs

    def new_stream(self, scfg: SourceConfig, state: RunState) -> StreamPlan:
        """A stream that joins a running service: its source (built, not opened), its policy,
        decided by the same rules as the config's streams; it stops on its own event."""
        sid = scfg.id or default_id(scfg.uri)
        scfg = dataclasses.replace(scfg, id=sid)
        if self.inference is None:  # the Ray driver: the source is built on the worker that runs it
            return StreamPlan(sid, scfg)
        stop = threading.Event()
        source = create_source(scfg, stop, _opened_hook(state, sid, [self.tracking], stop))
        apply_decoders([source], [scfg], self.config.backend.name)
        cfg = self.config
        policy = StreamPolicy.for_source(sid, source.is_live, scfg, cfg.pipeline, cfg.backend.max_batch,
                                         on_cpu=cfg.backend.on_cpu)
        return StreamPlan(sid, scfg, source, policy, stop)

    @property
    def names(self) -> tuple[str, ...]:
        return self.spec.names

    @property
    def sources(self) -> list[Source]:
        return [s.source for s in self.streams if s.source is not None]

    @property
    def policies(self) -> dict[str, StreamPolicy]:
        return {s.id: s.policy for s in self.streams if s.policy is not None}

    def sinks_for(self, stream: StreamPlan, source: Any = None, pixels: bool | None = None) -> list[Sink]:
        """The registered sinks that are on for ``stream`` (``pixels``: see :func:`create_sinks`).
        Those the observers bring (the live view's, the canary's) are the run state's sink
        factories, which the engine adds with the caller's."""
        src = source if source is not None else stream.source
        pixels = self.sink_pixels if pixels is None else pixels
        return create_sinks(src, stream.config, self.sink_context, pixels)

    def close(self) -> None:
        """Release what the plan acquired (backend sessions, observers' ports) when no run did."""
        try:
            if self.inference is not None:
                self.inference.close()
        finally:
            self.observers.close()


def plan(cfg: Config, state: RunState, backend: Backend | None = None, pixel_sinks_only: bool = False,
         serve: bool = False) -> Plan:
    """Decide what ``cfg`` means, once (see the module doc). ``state`` is the run's: the sources
    stop on its events and count into its metrics; the observers read its queues. ``backend``
    (tests, embedders) replaces the configured one; it gets one call at a time.
    ``pixel_sinks_only`` (a Ray worker): only the sinks that need the frames' pixels run here; the
    driver writes the others from the results. ``serve`` (``inferpath serve``): a service, whose
    streams come and go while it runs (it may start with none); it is planned as live, and each
    stream stops on its own event."""
    streams = _stream_configs(cfg, allow_none=serve)
    model_path, spec = model_file(cfg)  # None: the spec is in the ONNX, read from the session below
    settings = RunSettings(cfg.pipeline.duration_s, cfg.pipeline.drain_timeout_s, cfg.pipeline.progress,
                           cfg.metrics.log_interval_s)
    if cfg.cluster.engine == "ray":
        spec = spec if spec is not None else load_spec(model_path)
        check_classes(cfg.model.classes, spec.names, model_path, f"{cfg.path or '<config>'}: ")
        _canary(cfg, model_path)  # a bad canary model fails here, before any worker starts; each worker runs its own
        observers = from_config(cfg.metrics, cfg.output.web, spec.names, lambda: state.queues, frames_here=False,
                                serve=serve)
        return Plan("ray", cfg, model_path, spec, tuple(StreamPlan(sid, scfg) for sid, scfg in streams),
                    settings, observers, SinkContext(cfg.output, spec.names, state.stop, state.metrics),
                    serving=serve)
    tracking_box: list[Any] = []  # tracking, once built: a live source checks its lines and zones when it opens
    stops = [threading.Event() if serve else None for _ in streams]  # a service's streams stop one by one
    sources = [create_source(scfg, stop or state.stop_reading, _opened_hook(state, sid, tracking_box, stop))
               for (sid, scfg), stop in zip(streams, stops)]
    apply_decoders(sources, [scfg for _, scfg in streams], cfg.backend.name)
    # Calls in flight at once: a backend passed in (tests, embedders) gets one, as it may not be
    # safe to call from two threads. Several calls share out the cores: a batch job runs them
    # all the time; with a live source the run starts with one call on every core and goes side
    # by side (a second session, the cores shared out) only while the frames offered need it.
    workers = 1 if backend is not None else inference_workers(cfg)
    live = serve or any(s.is_live for s in sources)  # a service is live: cameras may join at any time

    def factory(n: int, opt_batch: int | None = None) -> Backend:
        return make_backend(cfg, model_path, n, opt_batch)

    try:
        backend = backend or factory(1 if live else workers, profile_opt_batch(live, cfg.backend.max_batch))
    except ModelError:
        if spec is None:  # a file that is not ONNX at all: the same one line as the spec's reader gives
            load_onnx_metadata(model_path)
        raise
    side_backend = None
    acquired: list[Any] = [backend]
    try:
        if spec is None:  # the ONNX's metadata as the session read it (a backend without it: read with onnx)
            spec = load_spec(model_path, metadata=getattr(backend, "metadata", None))
        if live and workers > 1:
            side_backend = factory(workers)
            acquired.append(side_backend)
        info = backend.inputs[0]
        spec_assumed = spec == ModelSpec()  # no spec anywhere: the normalization is a guess
        spec = fit_spec_to_input(spec, info.shape, np.dtype(info.dtype).name, str(model_path))
        output_index, fmt = resolve_output(cfg, spec, backend, model_path)
        check_classes(cfg.model.classes, spec.names, model_path, f"{cfg.path or '<config>'}: ")
        policies = [StreamPolicy.for_source(sid, src.is_live, scfg, cfg.pipeline, cfg.backend.max_batch,
                                            on_cpu=cfg.backend.on_cpu)
                    for (sid, scfg), src in zip(streams, sources)]
        path = PathPolicy.build(policies, cfg.backend.max_batch, backend.max_batch, cfg.backend.batch_timeout_ms,
                                cfg.pipeline.queue_size)
        m = cfg.model
        decode = DecodeSettings(fmt, m.conf_threshold, m.iou_threshold, m.max_detections,
                                tuple(m.classes) if m.classes else None, output_index)
        inference = InferencePlan(backend, side_backend, workers, path, decode, factory)
        warn_ignored_budget(cfg.pipeline, [sid for (sid, scfg), src in zip(streams, sources)
                                           if not src.is_live and scfg.latency_budget_ms is None])
        tracking = None
        if cfg.tracking.enabled:
            from pipeline.tracking.stream import Tracking

            tracking = Tracking(cfg.tracking, spec.names, sources, on_refuse=state.stop)
            tracking_box.append(tracking)
        observers = from_config(cfg.metrics, cfg.output.web, spec.names, lambda: state.queues, tracking,
                                serve=serve, canary=_canary(cfg, model_path, decode, spec.names, live))
    except BaseException:
        for b in acquired:
            b.close()
        raise
    return Plan("local", cfg, model_path, spec,
                tuple(StreamPlan(sid, scfg, src, pol, stop)
                      for (sid, scfg), src, pol, stop in zip(streams, sources, policies, stops)),
                settings, observers, SinkContext(cfg.output, spec.names, state.stop, state.metrics), tracking, inference,
                sink_pixels=True if pixel_sinks_only else None, spec_assumed=spec_assumed, serving=serve)


def _canary(cfg: Config, model_path: Path, decode: DecodeSettings | None = None,
            names: tuple[str, ...] = (), low_priority: bool = True) -> Callable[[], Any] | None:
    """``model.canary`` resolved (a ConfigError line for a bad canary model; a warning and None for
    an FP32 deployed model), and, with ``decode``, the canary's factory for the observers.
    ``low_priority``: a live stream or a service, where the canary's thread is niced so that it
    never costs a frame its budget; a batch job over files runs it at normal priority (under
    ``max_cpu_share``), else a saturated CPU would leave it almost nothing to check."""
    if cfg.model.canary is None:
        return None
    from pipeline.canary import canary_settings

    settings = canary_settings(cfg, model_path)
    if settings is None or decode is None:
        return None

    def build() -> Any:
        from pipeline.canary import Canary
        from pipeline.precision.gate import Backends

        return Canary(settings, cfg, decode, names, Backends(make_backend, resolve_format), low_priority=low_priority)

    return build


def _opened_hook(state: RunState, sid: str, tracking_box: list[Any],
                 stream_stop: threading.Event | None = None) -> Callable[[str], None]:
    """A source's event hook: the run state's counts, and when a live source opens (its size is
    known now, before its first frame) its lines and zones are checked once; one outside the frame
    stops the run and ``run()`` raises it (one line, exit 2, as for a file). In a service
    (``stream_stop``: the stream stops on its own) it stops that stream alone, with one error line:
    a camera added with a bad line never takes the other streams down."""
    count = state.source_hook(sid)

    def hook(event: str) -> None:
        count(event)
        tracking = tracking_box[0] if tracking_box else None
        if event != "open" or tracking is None or state.refused is not None:
            return
        src = tracking.sources.get(sid)
        if src is not None and src.size != (0, 0):
            try:
                tracking.check_frame_size(sid, src.size)
            except ConfigError as exc:
                if stream_stop is not None:
                    log.error("stream %s stopped: %s", sid, exc)
                    stream_stop.set()
                    return
                state.refused = exc
                state.stop("a line or zone outside the frame")

    return hook


def _stream_configs(cfg: Config, allow_none: bool = False) -> list[tuple[str, SourceConfig]]:
    """Each source's id and config (globs expanded, ids given); ids must be distinct. None is an
    error unless ``allow_none`` (a service starts with what the config has, possibly nothing)."""
    source_cfgs = expand_globs(cfg.sources)
    if not source_cfgs and not allow_none:
        raise SourceError("no source given: pass --source URI or set sources: in the config")
    out: list[tuple[str, SourceConfig]] = []
    for scfg in source_cfgs:
        sid = scfg.id or default_id(scfg.uri)
        if any(sid == seen for seen, _ in out):
            raise SourceError(f"two sources share the id {sid!r}; give them distinct ids in sources:")
        out.append((sid, dataclasses.replace(scfg, id=sid)))
    return out


def check_classes(classes: list[int] | None, names: tuple[str, ...], model_path: Path, where: str = "") -> None:
    """``model.classes`` names classes of the model (ConfigError otherwise; ``where``: the line's prefix)."""
    n = len(names)
    unknown = [c for c in classes or [] if n and c >= n]
    if unknown:
        raise ConfigError(f"{where}model.classes: {unknown[0]} is not a class id of {model_path.name} "
                          f"({n} classes: 0 to {n - 1})")


__all__ = ["Plan", "StreamPlan", "RunSettings", "InferencePlan", "plan", "model_file", "resolve_model", "inference_workers", "check_classes",
           "make_backend", "resolve_output", "resolve_format"]
