"""The Ray engine's driver: ``inferpath run ... --set cluster.engine=ray``, or ``Pipeline(cfg)``
with ``cluster.engine: ray``. It runs a :class:`~pipeline.runtime.plan.Plan` with a
:class:`~pipeline.runtime.state.RunState`, as the local engine does.

It connects to Ray (or starts one here), checks that the cluster has the resources asked for,
places the streams on ``InferpathWorker`` actors by cost and logs where each runs, then polls
every worker for results (one outstanding ``poll`` per worker) and writes them through the sinks
of the registry that need no pixels (the workers write the others), the same metrics, the one
watch loop and the one summary function as a local run. A worker whose ``poll`` fails (its process died, its
node was lost) or hangs past ``WORKER_TIMEOUT_S`` is killed and replaced, and its streams resume
on the new one (:mod:`pipeline.cluster.resume`). The interface is :class:`~pipeline.runtime.Pipeline`'s:
``run()`` returns a :class:`~pipeline.runtime.RunSummary`, ``stop()`` ends the streams.

A service on Ray (``inferpath serve`` with ``cluster.engine: ray``, ``Pipeline(cfg, serve=True)``)
starts ``cluster.workers`` workers whatever the config's sources (none is fine); each runs its
share as a local service. :meth:`ClusterRun.add_stream` starts a stream on the worker with the
fewest running streams (:func:`~pipeline.cluster.placement.least_loaded`), :meth:`~ClusterRun.remove_stream`
stops it there and closes its JSON lines here once its last record has arrived (a stream that
ends by itself, a file, has them closed as soon as its worker reports its last record), and
:meth:`~ClusterRun.apply_live` forwards a live edit to every worker (checked on all of them first).
A stream added at runtime is a stream like the others: if its worker is lost, it resumes on the
replacement.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.cluster import import_ray
from pipeline.cluster.metrics import ClusterMonitor, WorkerCollector
from pipeline.cluster.placement import assign, least_loaded, stream_cost
from pipeline.cluster.resume import WORKER_LOST, StreamState, resumable
from pipeline.config import ClusterConfig, Config
from pipeline.errors import ClusterError, InferpathError, StreamExistsError, UnknownStreamError
from pipeline.frame import Detections, Frame
from pipeline.model import class_label
from pipeline.observers import start_all, stop_all
from pipeline.runtime.engines import register_engine
from pipeline.runtime.plan import Plan, StreamPlan, plan
from pipeline.runtime.state import OnRunState, RunState
from pipeline.runtime.summary import RunSummary, SourceSummary, StreamEnd, source_summary, summarize
from pipeline.runtime.supervise import remove_unwritten, watch
from pipeline.sinks import close_sinks, ensure_writable_dir
from pipeline.sources.base import redact_uri

log = logging.getLogger("pipeline.cluster")
POLL_INTERVAL_S = 0.1  # the driver's loop wakes at least this often (each worker has one long poll in flight)
WORKER_TIMEOUT_S = 30.0  # a poll unanswered this long: the worker (or its node) is lost
RECORDS_PER_POLL = 256
# Part of what the cluster adds to a frame's latency: from the worker's sink until a poll hands its
# result to the driver (the network transfer is not in it: two nodes share no clock). In
# summary.json's stages_ms; e2e stays capture to sink, as in a local run.
DELIVERY = "delivery"
CALL_TIMEOUT_S = 120.0  # a service's call on a worker (add, update) that is not answered by then fails
MAX_REMOVED = 1000  # removed streams' summaries kept for the service's final summary


@dataclass
class WorkerSlot:
    """One worker place: its current actor, and what happened to the ones before."""

    index: int
    streams: list[str]
    actor: object = None
    info: dict = field(default_factory=dict)
    info_ref: object = None
    start_ref: object = None
    started_at: float = 0.0
    poll_ref: object = None
    poll_sent: float = 0.0
    last_ok: float = 0.0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)
    finished: bool = False
    frames: dict[str, int] = field(default_factory=dict)  # frames delivered, per source
    model: str = ""
    backend: str = ""

    @property
    def name(self) -> str:
        return f"w{self.index}"

    def where(self) -> str:
        return f"node {self.info.get('ip', '?')}, pid {self.info.get('pid', '?')}" if self.info else "not placed"


@dataclass(frozen=True)
class DriverSide:
    """A stream as the driver's sinks see it: its frames (and their pixels) are on a worker."""

    id: str
    uri: str
    is_live: bool
    is_file: bool


class ClusterRun(OnRunState):
    """The Ray engine: runs a plan (``cluster.engine: ray``) on Ray workers (see the module doc).
    ``ClusterRun(cfg)`` plans ``cfg`` itself; :class:`~pipeline.runtime.Pipeline` passes its plan
    and run state."""

    drain_note = "workers finish frames in flight"

    def __init__(self, cfg: Config | Plan, state: RunState | None = None) -> None:
        self.ray = import_ray()
        self.state = state or RunState()
        self.state.drain_note = self.drain_note
        if isinstance(cfg, Plan):
            self.plan = cfg
        else:
            if cfg.cluster.engine != "ray":
                cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, engine="ray"))
            self.plan = plan(cfg, self.state)
            self.state.attach(self.plan.observers)
        self.cfg = self.plan.config  # each worker's share is cut from it (_worker_config)
        self.cluster: ClusterConfig = self.cfg.cluster
        self.streams: dict[str, StreamState] = {}
        for stream in self.plan.streams:
            cost, how = stream_cost(stream.config)
            self.streams[stream.id] = StreamState(stream.id, stream.config, cost)
            log.debug("%s: cost %.3g (%s)", stream.id, cost, how)
        self.by_part: dict[str, StreamState] = {sid: st for sid, st in self.streams.items()}
        self.model_name = self.plan.model_path.name
        self.names = tuple(self.plan.names)
        self.slots: list[WorkerSlot] = []
        self.stream_errors: dict[str, str] = {}
        self.batch_sizes: dict[int, int] = {}
        self.sinks: dict[str, list] = {}
        self._started_ray = False
        self._told = 0  # steps of a stop the workers were told of (see _forward_stop)
        self._exporter = self.plan.observers.prometheus
        # The live view (output.web): each stream has its place on the page here; the JPEGs of the
        # streams someone watches come from their workers with the polls (pipeline.web.FrameTap).
        self._view = self._live_view()
        self._out_dir = Path(self.cfg.output.dir).expanduser().resolve()
        self.serving = self.plan.serving  # a service: streams added and removed while it runs
        self.running = threading.Event()  # placed, observers started: a service's streams may join
        self.t_start = 0.0
        self.removed: list[SourceSummary] = []  # streams removed while it ran, in the order they left
        # The driver's loop (_tick) and a service's calls (add, remove, live edits: other threads)
        # change the streams and slots under this lock; no call on a worker is waited for under it.
        self._change = threading.RLock()

    def _live_view(self):
        if not self.cfg.output.web.enabled:
            return None
        from pipeline.web import LiveView

        return next((ob for ob in self.plan.observers.observers if isinstance(ob, LiveView)), None)

    def _wanted(self, slot: WorkerSlot) -> list[str] | None:
        """The parts on ``slot`` whose stream someone watches in the live view (their JPEGs are asked for)."""
        if self._view is None:
            return None
        wanted = self._view.wanted()
        return [self.streams[sid].part_id for sid in slot.streams if sid in wanted and sid in self.streams] or None

    # ---- connecting and placing ----------------------------------------------------------------
    def _where(self) -> str:
        if self.cluster.address:
            return self.cluster.address
        return "a local Ray started here" if self._started_ray else "the Ray this process is connected to"

    def _connect(self) -> None:
        ray, addr = self.ray, self.cluster.address
        if ray.is_initialized():
            return  # the caller's Ray (tests, notebooks)
        if addr and addr != "auto":
            _check_reachable(addr, min(self.cluster.connect_timeout_s, 10.0))
        # Ray's own Python log lines only with -v; a failure is reported once, by our own line.
        kwargs: dict = {"logging_level": logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR,
                        "log_to_driver": True}
        if addr is None:
            kwargs.update(include_dashboard=False, object_store_memory=256 * 1024 * 1024)
        # Ray's core worker installs its own SIGTERM handler (it logs and exits at once): the
        # caller's (inferpath run/serve: a first SIGTERM stops cleanly) are put back after.
        main = threading.current_thread() is threading.main_thread()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:  # "local": a new Ray here, even where `ray start` already runs one (that is address: auto)
            ray.init(address=addr or "local", **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"cluster.address {addr or 'null'}: cannot connect to Ray ({first})") from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self._started_ray = True

    def _worker_count(self) -> int:
        res = self.ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        c = self.cluster
        n = c.workers
        if n == "auto":
            n = int(gpus // c.gpus_per_worker) if c.gpus_per_worker else int(cpus // max(c.cpus_per_worker, 1.0))
            n = max(1, n)
        if not self.serving:  # a service keeps its workers for the streams it will be given
            n = min(n, len(self.streams))
        need_cpu, need_gpu = n * c.cpus_per_worker, n * c.gpus_per_worker
        if need_cpu > cpus + 1e-9 or need_gpu > gpus + 1e-9:
            raise ClusterError(
                f"cluster at {self._where()}: {n} worker(s) x ({c.cpus_per_worker:g} CPU, {c.gpus_per_worker:g} GPU) "
                f"need {need_cpu:g} CPU and {need_gpu:g} GPU, but it has {cpus:g} CPU and {gpus:g} GPU; "
                "lower cluster.workers, cpus_per_worker or gpus_per_worker, or add nodes")
        return n

    def _actor_class(self):
        from pipeline.cluster.worker import InferpathWorker

        c = self.cluster
        # A service's worker is threaded: a poll runs while a remove waits for its stream's last frame.
        return self.ray.remote(InferpathWorker).options(num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker,
                                                        max_restarts=0, max_task_retries=0,
                                                        max_concurrency=8 if self.serving else 1)

    def _worker_config(self, slot: WorkerSlot) -> Config:
        """The local deployment a worker runs: its streams (each part where delivery stopped),
        under the absolute output dir, without the observers that serve this run (the driver's).
        The worker runs only the sinks that need the pixels (see :func:`pipeline.sinks.register_sink`);
        the driver writes the others (JSON lines) from the results."""
        cfg = self.cfg
        sources = [self._part_config(self.streams[sid]) for sid in slot.streams if not self.streams[sid].done]
        out = dataclasses.replace(cfg.output, dir=str(self._out_dir), display=False,
                                  web=dataclasses.replace(cfg.output.web, enabled=False))
        metrics = dataclasses.replace(cfg.metrics, log_interval_s=0, drift=dataclasses.replace(cfg.metrics.drift,
                                                                                               reference=None),
                                      prometheus=dataclasses.replace(cfg.metrics.prometheus, enabled=False))
        backend = cfg.backend
        if backend.onnxruntime.intra_op_threads == 0:  # a worker's ONNX Runtime uses the cores Ray gave it
            ort = dataclasses.replace(backend.onnxruntime, intra_op_threads=max(1, round(self.cluster.cpus_per_worker)))
            backend = dataclasses.replace(backend, onnxruntime=ort)
        return dataclasses.replace(cfg, sources=sources, output=out, metrics=metrics, backend=backend,
                                   pipeline=dataclasses.replace(cfg.pipeline, progress=False),
                                   cluster=ClusterConfig())

    @staticmethod
    def _part_config(st: StreamState):
        """The ``sources[]`` entry a worker runs for ``st``'s current part (its own output dir absolute)."""
        part = st.part_config()
        if part.output_dir:
            part = dataclasses.replace(part, output_dir=str(Path(part.output_dir).expanduser().resolve()))
        return part

    def _launch(self, slot: WorkerSlot, probe: str | None) -> None:
        level = logging.getLogger().getEffectiveLevel()
        slot.actor = self._cls.remote(slot.name, level)
        slot.info_ref = slot.actor.info.remote(probe)
        web = self.cfg.output.web
        view = {"max_fps": web.max_fps, "jpeg_quality": web.jpeg_quality} if self._view is not None else None
        slot.start_ref = slot.actor.start.remote(self._worker_config(slot), self.serving, view)
        slot.started_at = time.monotonic()
        slot.poll_ref = None
        slot.info = {}

    def _place(self) -> str | None:
        n = self._worker_count()
        groups = assign({sid: st.cost for sid, st in self.streams.items()}, n)
        self._cls = self._actor_class()
        probe = None
        if self.cfg.output.video:
            ensure_writable_dir(self._out_dir)
            probe = str(self._out_dir / f".inferpath-probe-{uuid.uuid4().hex}")
            Path(probe).touch()
        for i, group in enumerate(groups):
            slot = WorkerSlot(i, group)
            for sid in group:
                self.streams[sid].worker = i
            self.slots.append(slot)
            self._launch(slot, probe)
        try:
            infos = self.ray.get([s.info_ref for s in self.slots], timeout=self.cluster.connect_timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"cluster at {self._where()}: {n} worker(s) not placed within {self.cluster.connect_timeout_s:g} s "
                f"(cluster.connect_timeout_s): too few free resources for {self.cluster.cpus_per_worker:g} CPU and "
                f"{self.cluster.gpus_per_worker:g} GPU each") from None
        finally:
            if probe:
                Path(probe).unlink(missing_ok=True)
        driver_node = self.ray.get_runtime_context().get_node_id()
        for slot, info in zip(self.slots, infos):
            self._placed(slot, info)
            if self.cfg.output.video and (info.get("sees_output") is False or info.get("node_id") != driver_node):
                log.warning("output.dir %s: worker %s runs on another node (%s) and writes its annotated videos "
                            "there; on a cluster output.dir must be shared storage (NFS, a mounted bucket)%s",
                            self._out_dir, slot.name, info.get("ip"),
                            "" if info.get("sees_output") else ", and this worker does not see this directory")
        return probe

    def _placed(self, slot: WorkerSlot, info: dict) -> None:
        slot.info = info
        slot.pids.append(info["pid"])
        for sid in slot.streams:
            st = self.streams[sid]
            if not st.done:
                st.parts.append({"worker": slot.name, "node": info.get("ip"), "pid": info["pid"],
                                 "start_frame": st.part_config().start_frame if st.resumable else None})
                log.info("placement: %s -> %s (node %s %s, host %s, pid %d)%s", sid, slot.name, info.get("ip"),
                         str(info.get("node_id", ""))[:8], info.get("host"), info["pid"],
                         f", part {st.part}" if st.part else "")

    # ---- running -------------------------------------------------------------------------------
    def _forward_stop(self) -> None:
        """Tell the workers once per step of a stop (ends their streams, then aborts)."""
        step = 2 if self.abort.is_set() else (1 if self.stop_reading.is_set() else 0)
        while self._told < step:
            self._told += 1
            for slot in self.slots:
                if slot.actor is not None and not slot.finished:
                    try:
                        slot.actor.stop.remote(self.stopped_by or "stop")
                    except Exception as exc:  # a dead actor: its loss is handled by the poll loop
                        log.debug("%s.stop: %s", slot.name, exc)

    def _open_sinks(self) -> None:
        """The registered sinks that need no pixels (JSON lines, ...), here on the driver, fed
        from the workers' results (the video is written on the worker that has the frames)."""
        for stream in self.plan.streams:
            self.sinks[stream.id] = self._driver_sinks(stream)

    def _driver_sinks(self, stream: StreamPlan) -> list:
        file = resumable(stream.config)
        side = DriverSide(stream.id, redact_uri(stream.config.uri), is_live=not file, is_file=file)
        sinks = self.plan.sinks_for(stream, side, pixels=False)
        if self._view is not None:
            sinks.append(self._view.remote_sink_for(side))
        return sinks

    def run(self, progress: bool | None = None) -> RunSummary:
        t_start = self.t_start = time.monotonic()
        try:
            self._connect()
            self._open_sinks()
            self._place()
            if self._exporter is not None:
                self._exporter.registry.register(WorkerCollector(self))
            start_all(self.state.observers, self.metrics)
            log.info("%d stream(s) on %d Ray worker(s) at %s; model %s%s", len(self.streams), len(self.slots),
                     self._where(), self.model_name, "; a service: streams join the least-loaded worker"
                     if self.serving else "")
            self.running.set()
            monitor = ClusterMonitor(self, self.plan.run.log_interval_s)

            def step() -> bool:
                if all(s.finished for s in self.slots):
                    return True
                self._forward_stop()
                self._tick()
                monitor.tick()
                return False

            def overdue(seconds: float) -> bool:
                log.warning("workers not finished %g s after the stop; giving up on them", seconds)
                return True

            watch(self.state, self.plan.run, t_start, step, self.plan.run.drain_timeout_s + 15, overdue)
        finally:
            self.running.clear()
            self._close()
        return self.summary(time.monotonic() - t_start)

    def _tick(self) -> None:
        with self._change:
            self._tick_locked()

    def _tick_locked(self) -> None:
        ray = self.ray
        now = time.monotonic()
        for slot in self.slots:
            if slot.finished or slot.actor is None:
                continue
            if slot.start_ref is not None:
                ready, _ = ray.wait([slot.start_ref], timeout=0)
                if not ready:
                    if now - slot.started_at > self.cluster.connect_timeout_s + 60:
                        self._lose(slot, "did not start in time")
                    continue
                try:
                    started = ray.get(slot.start_ref)
                    if not slot.info:
                        self._placed(slot, ray.get(slot.info_ref))
                except ray.exceptions.RayActorError as exc:
                    self._lose(slot, _first_line(exc))
                    continue
                except Exception as exc:  # the pipeline could not be built there (model, backend)
                    self._fail(slot, _cause(exc))
                    continue
                slot.start_ref = None
                slot.model, slot.backend = started["model"], started["backend"]
                slot.last_ok = now
            if slot.poll_ref is None:
                slot.poll_ref = slot.actor.poll.remote(RECORDS_PER_POLL, want=self._wanted(slot))
                slot.poll_sent = now
        pending = {s.poll_ref: s for s in self.slots if s.poll_ref is not None and not s.finished}
        if not pending:
            time.sleep(POLL_INTERVAL_S / 2)
            return
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_INTERVAL_S / 2)
        for ref in ready:
            slot = pending[ref]
            slot.poll_ref = None
            try:
                reply = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                self._lose(slot, _first_line(exc))
                continue
            slot.last_ok = time.monotonic()
            self._take(slot, reply)
        for ref, slot in pending.items():
            if ref not in ready and time.monotonic() - slot.poll_sent > WORKER_TIMEOUT_S:
                self._lose(slot, f"no answer for {WORKER_TIMEOUT_S:g} s")

    def _take(self, slot: WorkerSlot, reply: dict) -> None:
        """Write a worker's records through the sinks, in order, and fold its counters in."""
        m = self.metrics
        now = time.monotonic()
        for part_id, snap in reply["stats"].items():
            st = self.by_part.get(part_id)
            if st is not None and st.lost_at is not None and snap["frames_in"] > 0:
                gap = st.close_gap(now, snap["frames_in"])  # before its records: their seqs follow the gap
                for _ in range(gap):
                    m.frame_in(st.id)
                if gap:
                    m.drop(st.id, WORKER_LOST, gap)
        for rec in reply["records"]:
            st = self.by_part.get(rec["source"])
            if st is None or st.part_id != rec["source"]:
                continue  # a part already replaced (cannot happen with one actor per part)
            seq = st.accept(rec["seq"])
            if seq is None:
                continue
            frame = _frame_of(st.id, seq, rec)
            for sink in self.sinks.get(st.id, []):
                sink.write(frame)
            if st.resumable:
                m.frame_in(st.id)
            m.frame_out(st.id, [self._name(c) for c in rec["class_id"].tolist()])
            for stage, ms in rec["stages_ms"].items():
                m.observe(st.id, stage, ms / 1000)
            m.observe(st.id, "e2e", rec["latency_ms"] / 1000)
            m.observe(st.id, DELIVERY, rec["delivery_ms"] / 1000)
            slot.frames[st.id] = slot.frames.get(st.id, 0) + 1
        for part_id, (seq, jpeg) in reply.get("jpegs", {}).items():  # the live view's watched streams
            st = self.by_part.get(part_id)
            if st is not None and st.part_id == part_id and self._view is not None:
                self._view.put_jpeg(st.id, seq if st.resumable else seq + st.seq_offset, jpeg)
        for part_id, snap in reply["stats"].items():
            st = self.by_part.get(part_id)
            if st is None or st.part_id != part_id:
                continue
            self._fold(st, snap, now)
            if snap.get("state") in ("ended", "down") and not st.done:
                st.done = True  # a service's stream that ended: not resumed if its worker is lost
            if snap.get("complete") and st.done and not st.closed:
                # a service's stream that ended on its worker, every record of it written above:
                # its JSON lines close now, as a local service's do at a stream's end, not at DELETE
                st.closed = True
                close_sinks({st.id: self.sinks.get(st.id, [])})
        if reply["done"]:
            slot.finished = True
            for key, n in (reply["batch_sizes"] or {}).items():
                self.batch_sizes[key] = self.batch_sizes.get(key, 0) + n
            for s in reply["summary"] or []:
                st = self.by_part.get(s.id)
                if st is not None:
                    st.summary = s
            for sid in slot.streams:
                self.streams[sid].done = True
                if reply["error"]:
                    self.stream_errors.setdefault(sid, reply["error"])
                # the stream's end, as the sink stage's in a local run: its sinks close (an event
                # sink starts its drain); the run's end closes them again (and waits for it)
                close_sinks({sid: self.sinks.get(sid, [])})
            if reply["error"]:
                self.errors.append((slot.name, reply["error"]))

    def _fold(self, st: StreamState, snap: dict, now: float) -> None:
        """A worker's counters for ``st``'s current part into the driver's metrics (what is new since the last)."""
        m = self.metrics
        st.last_stats = snap
        if not st.resumable:
            st.note_input(now, snap["frames_in"])
            for _ in range(snap["frames_in"] - st.counted_in):
                m.frame_in(st.id)
            st.counted_in = max(st.counted_in, snap["frames_in"])
        for reason, n in snap["drops"].items():
            d = n - st.counted_drops.get(reason, 0)
            if d > 0:
                if st.resumable:
                    for _ in range(d):
                        m.frame_in(st.id)
                m.drop(st.id, reason, d)
                st.counted_drops[reason] = n
        for event, n in snap["events"].items():
            d = n - st.counted_events.get(event, 0)
            if d > 0 or event not in st.counted_events:  # a series a worker opened at 0 (the canary's) shows here too
                m.count(st.id, event, max(d, 0))
                st.counted_events[event] = n
        for name, value in snap.get("gauges", {}).items():  # the FP32 canary's, which runs on the worker
            if name.startswith("canary_"):
                m.gauge(st.id, name, value)

    def _name(self, cls: int) -> str:
        return class_label(self.names, cls)

    def _lose(self, slot: WorkerSlot, why: str) -> None:
        """A worker died or hangs: kill what is left of it and resume its streams on a new one."""
        slot.poll_ref = None
        slot.start_ref = None
        log.warning("worker %s (%s) lost: %s", slot.name, slot.where(), why)
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception as exc:
            log.debug("%s: kill: %s", slot.name, exc)
        slot.restarts += 1
        live = [self.streams[sid] for sid in slot.streams if not self.streams[sid].done]
        for st in live:
            in_flight = 0 if st.resumable else st.lost_in_flight()
            if in_flight:
                self.metrics.drop(st.id, WORKER_LOST, in_flight)
            st.resume(slot.last_ok or time.monotonic(), in_flight)
            self.by_part[st.part_id] = st
            log.info("%s: resumes on a new worker %s", st.id,
                     f"at frame {st.next_seq}" if st.resumable else "from live (the gap counts as worker_lost drops)")
        if not live or self.stop_reading.is_set():
            slot.finished = True
            for st in live:
                st.done = True
            return
        if slot.restarts > self.cluster.max_restarts:
            self._fail(slot, f"worker {slot.name} lost {slot.restarts} times (cluster.max_restarts "
                             f"{self.cluster.max_restarts}); last: {why}")
            return
        self._launch(slot, None)

    def _fail(self, slot: WorkerSlot, error: str) -> None:
        log.error("worker %s: %s", slot.name, error)
        slot.finished = True
        self.errors.append((slot.name, error))
        for sid in slot.streams:
            self.streams[sid].done = True
            self.stream_errors.setdefault(sid, error)

    def _close(self) -> None:
        close_sinks(self.sinks)
        remove_unwritten(self.sinks, {})  # no frame reached it: leave nothing that looks like a result
        stop_all(self.state.observers)
        for slot in self.slots:
            if slot.actor is not None:
                try:
                    self.ray.kill(slot.actor, no_restart=True)
                except Exception as exc:
                    log.debug("%s: kill: %s", slot.name, exc)
        if self._started_ray:
            self.ray.shutdown()

    # ---- summary -------------------------------------------------------------------------------
    def summary(self, wall_s: float) -> RunSummary:
        """The run's summary, by :func:`~pipeline.runtime.summary.summarize` as a local run's; each
        stream's end as its worker reported it, and a ``workers`` entry per Ray worker."""
        ends = [self._stream_end(sid, st) for sid, st in self.streams.items()]
        backend = next((s.backend for s in self.slots if s.backend), self.cfg.backend.name)
        # failed=False: a frame read on a worker and never delivered was lost to an abort or a stop mid-loss
        summary = summarize(self.metrics, ends, wall_s, self.model_name, f"{backend} on {len(self.slots)} Ray worker(s)",
                            self.batch_sizes, self.errors, self.stopped_by, failed=False, extra_stages=(DELIVERY,),
                            workers=[self._worker_summary(s, wall_s) for s in self.slots])
        summary.sources[:0] = self.removed  # a service's streams removed while it ran
        return summary

    def _stream_end(self, sid: str, st: StreamState) -> StreamEnd:
        """A stream's end as its worker reported it (its summary), with the driver's outputs."""
        ws: SourceSummary | None = st.summary  # type: ignore[assignment]
        span = st.last_at - st.first_at
        outputs = [str(s.path) for s in self.sinks.get(sid, []) if s.written and s.path is not None]
        outputs += [o for o in (ws.outputs if ws else []) if o not in outputs]
        return StreamEnd(
            sid, redact_uri(st.config.uri), ws.live if ws else not st.resumable,
            claimed_frames=ws.claimed_frames if ws else 0, max_frames=st.config.max_frames,
            error=self.stream_errors.get(sid) or (ws.error if ws else None), outputs=outputs,
            never_connected=bool(ws and ws.never_connected), source_failed=bool(ws and ws.source_failed),
            tracking=ws.tracking if ws else None, canary=ws.canary if ws else None,
            fps=(st.received - 1) / span if st.received > 1 and span > 0 else 0.0)

    # ---- a service: streams that join and leave while it runs ----------------------------------
    def add_stream(self, stream: StreamPlan) -> None:
        """Start ``stream`` (from :meth:`Plan.new_stream`) on the worker with the fewest running
        streams (:func:`~pipeline.cluster.placement.least_loaded`); its JSON lines are written
        here. The worker validates and opens it (a missing file fails here, as on the local
        engine); the other streams are not touched."""
        if not self.running.wait(CALL_TIMEOUT_S) and not self.stop_reading.is_set():
            raise RuntimeError("a stream joins a running service: call add_source() while run() runs")
        sid = stream.id
        with self._change:
            if self.stop_reading.is_set() or not self.running.is_set():
                raise RuntimeError("the service is stopping: no stream joins now")
            if sid in self.streams:
                raise StreamExistsError(f"sources: a stream with id {sid!r} is already running")
            loads = {slot.index: [self.streams[s].cost for s in slot.streams if not self.streams[s].done]
                     for slot in self.slots if not slot.finished and slot.actor is not None}
            if not loads:
                raise ClusterError("no Ray worker is running to take the stream")
            cost, how = stream_cost(stream.config)
            slot = self.slots[least_loaded(loads)]
            st = StreamState(sid, stream.config, cost)
            st.worker = slot.index
            self.sinks[sid] = self._driver_sinks(stream)
            self.streams[sid] = self.by_part[sid] = st
            slot.streams.append(sid)
            actor = slot.actor
            others = {f"w{i}": len(v) for i, v in sorted(loads.items())}
        try:
            self.ray.get(actor.add.remote(self._part_config(st)), timeout=CALL_TIMEOUT_S)
        except BaseException as exc:
            with self._change:
                relaunched = slot.actor is not actor and sid in slot.streams and not st.done
                if not relaunched:  # (a worker lost meanwhile was replaced with the stream in its share)
                    self._forget(st, slot)
                    close_sinks({sid: self.sinks.get(sid, [])})
                    remove_unwritten({sid: self.sinks.pop(sid, [])}, {})
                    self.state.forget_observed(sid)
            if not relaunched:
                raise _remote(self.ray, exc, f"worker {slot.name}") from None
        with self._change:
            st.parts.append({"worker": slot.name, "node": slot.info.get("ip"), "pid": slot.info.get("pid"),
                             "start_frame": stream.config.start_frame if st.resumable else None})
        log.info("placement: %s -> %s (%s; least loaded of running streams %s; cost %s)", sid, slot.name,
                 slot.where(), others, how)

    def remove_stream(self, source_id: str) -> SourceSummary:
        """Stop one stream on its worker and return its summary once its outputs are closed: the
        worker's video (closed there, when its last frame has left its sinks) and the JSON lines
        here, once every record the worker made for it has arrived."""
        limit = self.plan.run.drain_timeout_s + 10
        with self._change:
            st = self.streams.get(source_id)
            if st is None or st.worker < 0:
                raise UnknownStreamError(f"no stream with id {source_id!r}")
            slot = self.slots[st.worker]
            st.done = True  # from now on not resumed if its worker is lost
            st.worker = -1  # a second remove of it is a 404
            actor, part = slot.actor, st.part_id
            call = not slot.finished and actor is not None
        reply = None
        if call:
            try:
                reply = self.ray.get(actor.remove.remote(part), timeout=limit + 10)
            except Exception as exc:  # lost meanwhile, or it had ended there: what arrived is its output
                log.warning("stream %s: remove on worker %s: %s", source_id, slot.name, _cause(exc))
        if reply is not None:
            deadline = time.monotonic() + limit
            while st.received_part < reply["collected"] and time.monotonic() < deadline and not self.abort.is_set():
                time.sleep(0.02)  # the driver's loop takes its last records
            if st.received_part < reply["collected"]:
                log.warning("stream %s: %d of its %d last records did not reach the driver in %g s", source_id,
                            reply["collected"] - st.received_part, reply["collected"], limit)
        with self._change:
            if reply is not None:
                st.summary = ws = reply["summary"]
                self._fold(st, {"frames_in": ws.frames_in, "drops": ws.drops, "events": ws.events}, time.monotonic())
            sinks = self.sinks.get(source_id, [])
            close_sinks({source_id: sinks})
            end = self._stream_end(source_id, st)
            remove_unwritten({source_id: sinks}, {})
            summary = source_summary(self.metrics, end)
            self._forget(st, slot)
            self.sinks.pop(source_id, None)
            self.state.forget_observed(source_id)
            self.metrics.forget(source_id)
            self.removed.append(summary)
            del self.removed[:-MAX_REMOVED]
        log.info("stream %s removed from %s: %d frames in, %d out, %d dropped", source_id, slot.name,
                 summary.frames_in, summary.frames_out, sum(summary.drops.values()))
        return summary

    def _forget(self, st: StreamState, slot: WorkerSlot) -> None:
        self.streams.pop(st.id, None)
        for key in [k for k, v in self.by_part.items() if v is st]:
            del self.by_part[key]
        if st.id in slot.streams:
            slot.streams.remove(st.id)
        self.stream_errors.pop(st.id, None)

    def worker_of(self, source_id: str) -> str | None:
        """The name of the worker that runs the stream (None while it is being removed)."""
        st = self.streams.get(source_id)
        if st is None:
            raise UnknownStreamError(f"no stream with id {source_id!r}")
        return f"w{st.worker}" if st.worker >= 0 else None

    def stream_state(self, source_id: str) -> str:
        """``starting`` | ``up`` | ``reconnecting`` | ``down`` | ``ended``: as its worker's
        service last said; between a lost worker and its replacement's first report,
        ``reconnecting`` (``starting`` before any frame)."""
        st = self.streams.get(source_id)
        if st is None:
            raise UnknownStreamError(f"no stream with id {source_id!r}")
        state = st.last_stats.get("state")
        if state is not None:
            return state
        if st.done:
            return "down" if self.stream_errors.get(source_id) else "ended"
        return "reconnecting" if st.received else "starting"

    def apply_live(self, old: Config, new: Config, changed: list[str], edits: dict[str, dict],
                   check_only: bool = False) -> None:
        """A live edit (:func:`pipeline.runtime.live.apply_update` decided it has only live keys),
        forwarded to every running worker with the edits of the streams it holds (budget, weight,
        by stream id: ``{"door": {"weight": 0.5}}``): checked on all of them first (the lines
        against each worker's frames), so a bad edit changes nothing anywhere; then kept here, so
        a worker launched from then on starts with it; then applied on every running worker.

        A worker found lost in the check round refuses the edit (RuntimeError: the service
        answers 503, retry once it is replaced): its streams' lines could not be checked. One
        lost between the rounds is skipped in the apply round and replaced now if the loop has
        not replaced it yet; its replacement starts with the new settings, or, launched before
        they were kept, gets them in the apply round. So an edit is applied everywhere or nowhere."""
        from pipeline.runtime.live import check_classes, live_partial

        check_classes(self.plan, new, changed)
        base = live_partial(new, changed)
        self._update_workers(base, edits, check=True)
        if check_only:
            return
        with self._change:
            self.cfg = dataclasses.replace(new, sources=self.cfg.sources)  # a replacement worker starts with it
            for sid, edit in edits.items():  # kept for GET /api/config, later edits and a replacement worker
                st = self.streams.get(sid)
                if st is not None:
                    st.config = dataclasses.replace(st.config, **edit)
        self._update_workers(base, edits, check=False)

    def _update_workers(self, base: dict, edits: dict[str, dict], check: bool) -> None:
        """One round of a live edit on every running worker (``check``: validate only). Any
        failure is raised once every worker was called, as the worker's own one line where it has
        one; in the apply round a worker whose process is gone is skipped and replaced instead."""
        with self._change:
            calls = []
            for slot in self.slots:
                if slot.finished or slot.actor is None:
                    continue
                partial = dict(base)
                mine = [{**edits[sid], "id": self.streams[sid].part_id}
                        for sid in slot.streams if sid in edits and sid in self.streams]
                if mine:
                    partial["sources"] = mine
                if partial:
                    calls.append((slot, slot.actor, slot.actor.update.remote(partial, check)))
        failed: BaseException | None = None
        for slot, actor, ref in calls:
            try:
                self.ray.get(ref, timeout=CALL_TIMEOUT_S)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError) as exc:
                if check:
                    failed = failed or RuntimeError(f"worker {slot.name} is lost and being replaced; nothing was "
                                                    "changed: retry the edit in a few seconds")
                    continue
                with self._change:
                    if slot.actor is actor and not slot.finished:  # not replaced yet: now, with the new settings
                        self._lose(slot, f"lost during a live edit: {_first_line(exc)}")
                log.warning("live edit: worker %s was lost during the edit; its replacement starts with it", slot.name)
            except Exception as exc:
                failed = failed or _remote(self.ray, exc, f"worker {slot.name}")
        if failed is not None:
            raise failed

    def _worker_summary(self, slot: WorkerSlot, wall_s: float) -> dict:
        frames = sum(slot.frames.values())
        return {"worker": slot.name, "node": slot.info.get("ip"), "host": slot.info.get("host"),
                "pid": slot.info.get("pid"), "pids": slot.pids, "restarts": slot.restarts,
                "streams": slot.streams + [sid for sid in slot.frames if sid not in slot.streams],  # + removed
                "frames": frames, "fps": round(frames / wall_s, 2) if wall_s > 0 else 0.0,
                "frames_by_source": dict(slot.frames),
                "parts": {sid: self.streams[sid].parts for sid in slot.streams}}


def _frame_of(sid: str, seq: int, rec: dict) -> Frame:
    """A result-only Frame (no pixels) as the driver's sinks write it, with the line and zone
    events tracking found on the worker."""
    frame = Frame(sid, seq, rec["pts"], 0, None)  # type: ignore[arg-type]
    frame.latency_ms = rec["latency_ms"]
    frame.stamps = {k: (0, int(v * 1e6)) for k, v in rec["stages_ms"].items()}
    frame.batch_size = rec["batch"]
    frame.detections = Detections(rec["xyxy"], rec["confidence"], rec["class_id"], rec["tracker_id"])
    if rec.get("events"):
        frame.tracking = RemoteTracking(list(rec["events"]))
    return frame


@dataclass
class RemoteTracking:
    """What a frame's tracking is on the driver: its events (the tracker's state stays on the worker)."""

    events: list[dict]


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client
# server) answers with a SETTINGS frame of its own (frame type 4, the 4th byte of its header).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_reachable(address: str, timeout: float) -> None:
    """A host:port (or ray://host:port) that takes no TCP connection, or takes one but does not
    speak gRPC as Ray's GCS and Ray Client do (a web server, a port that never answers), fails
    here, at once, rather than after minutes of Ray's own retries."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    host, port = parts.hostname, parts.port or (10001 if address.startswith("ray://") else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(min(timeout, 5.0))
            conn.sendall(_H2_PREFACE)
            try:
                head = conn.recv(9)
            except TimeoutError:
                head = b""
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ClusterError(f"cluster.address {address}: cannot reach {host}:{port} ({why}); start the head with "
                           "'ray start --head' there, or fix the address") from None
    if len(head) < 4 or head[3] != 4:
        raise ClusterError(f"cluster.address {address}: {host}:{port} answers, but not as Ray (no gRPC answer); "
                           "give the head's GCS port (6379 by default) or ray://HEAD:10001")


def _remote(ray, exc: BaseException, where: str) -> BaseException:
    """The error to raise for a failed call on a worker: the worker's own InferpathError (a bad
    source, a line outside its frame: the same one line as the local engine's), else a ClusterError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, InferpathError):
        return cause
    if isinstance(exc, InferpathError):
        return exc
    if isinstance(cause, (RuntimeError, TimeoutError)):
        return cause
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return TimeoutError(f"{where} did not answer in {CALL_TIMEOUT_S:g} s")
    return ClusterError(f"{where}: {_cause(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
    """A remote error's own message (Ray wraps it in a RayTaskError with the traceback)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return str(cause) or type(cause).__name__
    return _first_line(exc)


register_engine("ray", ClusterRun)

__all__ = ["ClusterRun", "WorkerSlot", "POLL_INTERVAL_S", "WORKER_TIMEOUT_S"]
