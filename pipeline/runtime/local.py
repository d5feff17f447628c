"""The local engine: runs a :class:`~pipeline.runtime.plan.Plan` in threads on this machine.

``LocalEngine(plan, state).run()`` opens the file sources (a missing or undecodable video fails
before any work), builds the stages (:mod:`.build`), starts the inference thread and makes each
source's sinks while it warms the backend up (the H.264 writer opens alongside the first
inference call; no frame is read before both are done), starts the observers, then the other
stages; watches the run in the main thread (:func:`~pipeline.runtime.supervise.watch`: duration,
the drain bound, display windows, progress); and ends it in order: join every stage, close every sink, remove outputs no frame
reached, stop the observers, release the backend. It returns the :class:`RunSummary` built by
:func:`~pipeline.runtime.summary.summarize`, as the Ray engine does.
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline.errors import StreamExistsError, UnknownStreamError
from pipeline.observers import start_all, stop_all
from pipeline.policy import budget_note
from pipeline.progress import RunProgress
from pipeline.runtime.build import StageGraph, build_stages, build_stream
from pipeline.runtime.engines import register_engine
from pipeline.runtime.plan import Plan, StreamPlan
from pipeline.runtime.state import RunState
from pipeline.runtime.summary import RunSummary, SourceSummary, StreamEnd, account_in_flight, source_summary, summarize
from pipeline.runtime.supervise import files_total, join_stages, remove_unwritten, start_warm_inference, watch
from pipeline.sinks import Sink, close_sinks
from pipeline.sinks.watch import NothingFoundWatch
from pipeline.sources import redacted_config
from pipeline.sources.base import Source, redact_uri

log = logging.getLogger("pipeline.runtime")
START_WAIT_S = 30.0  # how long add_stream waits for a service that is still starting
MAX_REMOVED = 1000  # summaries of removed streams kept for the final summary (the newest)
STAGE_JOIN_S = 30.0  # how long a failed start waits for a stage (the inference thread mid warm-up) to end


class LocalEngine:
    """Runs a local plan once (see the module doc). ``graph``: the stages, once built."""

    def __init__(self, plan: Plan, state: RunState) -> None:
        if plan.inference is None:
            raise ValueError("the local engine needs a local plan (cluster.engine: local)")
        self.plan = plan
        self.state = state
        state.drain_note = f"finishing frames in flight (at most {plan.run.drain_timeout_s:g} s)"
        self.graph: StageGraph | None = None
        self.sinks: dict[str, list[Sink]] = {}
        self.outputs: dict[str, list[str]] = {}  # the files each source's sinks write (summary)
        self._opened: set[str] = set()
        # The streams now: the plan's, and (a service) those added since, less those removed.
        self.streams: dict[str, StreamPlan] = {s.id: s for s in plan.streams}
        self.removed: list[SourceSummary] = []  # the summaries of streams removed while it ran
        self._change = threading.Lock()  # one add or remove at a time
        self.running = threading.Event()  # set once every stage has started, cleared at the end
        self.t_start = time.monotonic()

    def open_sources(self) -> None:
        """Open file sources up front so a missing or undecodable video fails before any work."""
        for src in self.plan.sources:
            if src.is_file:
                self._open_file(src)
                self._opened.add(src.id)

    def _open_file(self, src: Source) -> None:
        """Open a file source (a missing or undecodable video fails here) and check its frame size
        against the tracking's lines and zones."""
        src.open()
        tracking = self.plan.tracking
        if tracking is not None and src.size != (0, 0):
            tracking.check_frame_size(src.id, src.size)

    def _make_sinks(self) -> None:
        for stream in self.plan.streams:
            self._stream_sinks(stream)

    def _stream_sinks(self, stream: StreamPlan) -> None:
        """A stream's sinks: the plan's, a watch that writes nothing (it warns once when the first
        frames have no detection: check the spec), then the run state's sink factories (the
        observers': live view, canary; the caller's: results, on_result)."""
        sinks = self.plan.sinks_for(stream)
        watch = NothingFoundWatch(stream.id, self.plan.model_path.name, self.plan.spec.normalization())
        extra = [f(stream.source, stream.config) for f in self.state.sink_factories]
        self.outputs[stream.id] = [str(s.path) for s in sinks if s.path is not None]
        self.sinks[stream.id] = sinks + [watch] + extra

    def run(self, progress: bool | None = None) -> RunSummary:
        plan, state = self.plan, self.state
        inf = plan.inference
        log.debug("resolved config: %s", redacted_config(plan.config))
        w, h = plan.spec.input_size
        policies = plan.policies
        log.info("%d source(s): %s; model %s (%dx%d, %d classes, %s, input %s%s) on %s, max batch %d; %s",
                 len(plan.streams), ", ".join(f"{s.id} ({'live' if s.live else 'file'})" for s in plan.streams),
                 plan.model_path.name, w, h, len(plan.names), inf.decode.fmt, plan.spec.normalization(),
                 " assumed: no model spec" if plan.spec_assumed else "", inf.backend.name,
                 inf.path.max_batch, budget_note(policies.values()))
        state.streams = len(plan.streams)
        state.serving = plan.serving
        t_start = self.t_start = time.monotonic()
        try:
            self.open_sources()
            self.sinks.update((s.id, []) for s in plan.streams)  # each source's, made while the backend warms up
            self.graph = build_stages(plan, state, self.sinks, self._opened)
            state.queues[:] = self.graph.queues
            start_warm_inference(self.graph.inference, meanwhile=self._make_sinks)
            start_all(state.observers, state.metrics)
        except BaseException:
            state.abort.set()
            stages = self.graph.stages if self.graph else []
            for st in stages:
                if st.is_alive():
                    st.join(STAGE_JOIN_S)  # the inference thread, mid warm-up: the backend is closed below
            for src in plan.sources:
                src.close()
            close_sinks(self.sinks)
            stop_all(state.observers)  # started or not: the plan's bound their ports
            busy = [st for st in stages if st.is_alive()]
            if busy:  # closing the backend under a running call would free its GPU buffers mid-call
                log.warning("%s still running after %g s; the backend is closed when it returns",
                            ", ".join(st.name for st in busy), STAGE_JOIN_S)
                threading.Thread(target=_close_after, args=(busy, inf.close),
                                 name="inferpath-close-backend", daemon=True).start()
            else:
                inf.close()
            raise
        for st in self.graph.stages:
            if st.ident is None:  # the inference thread is already running
                st.start()
        self.running.set()
        self._watch(t_start, plan.run.progress if progress is None else progress)
        if state.refused is not None:
            raise state.refused
        return self.summary(time.monotonic() - t_start)

    def _watch(self, t_start: float, progress: bool) -> None:
        """The watch loop until every stream has ended (or an abort has emptied the sinks), then
        the orderly end."""
        plan, state, graph = self.plan, self.state, self.graph
        monitor = RunProgress(state.metrics, total_frames=None if plan.serving else files_total(plan.streams),
                              live=any(s.live for s in plan.streams), show=progress,  # a bar on a terminal only
                              log_interval_s=plan.run.log_interval_s)
        main_thread = [s for sinks in self.sinks.values() for s in sinks if s.needs_main_thread]

        def step() -> bool:
            if state.done.wait(0.02 if main_thread else 0.1):
                return True
            for sink in main_thread:  # e.g. HighGUI runs in this (the main) thread only
                sink.pump()
            if state.abort.is_set() and not graph.sink.is_alive():
                return True
            if plan.serving and state.stop_reading.is_set():  # a service ends at a stop
                for stream in list(self.streams.values()):
                    if stream.stop is not None:
                        stream.stop.set()  # a source waiting to reconnect waits on its own stop
                if not graph.sink.is_alive():  # every stream has ended and left the sinks
                    state.done.set()
                    return True
            monitor.tick()
            return False

        def overdue(_seconds: float) -> bool:
            if not state.abort.is_set():
                log.warning("frames in flight not finished %g s after the stop (pipeline.drain_timeout_s); "
                            "stopping now, they count as 'shutdown' drops", plan.run.drain_timeout_s)
                state.abort.set()
            return False

        try:
            watch(state, plan.run, t_start, step, plan.run.drain_timeout_s, overdue)
        finally:
            self.running.clear()
            if not state.done.is_set() and not state.abort.is_set():
                state.stop("interrupted")
            join_stages(graph.stages, state.abort)
            close_sinks(self.sinks)
            stuck = [st.name for st in graph.stages if st.is_alive()]
            if stuck:
                log.error("threads still running after stop: %s", ", ".join(stuck))
            for sink in main_thread:
                sink.destroy()
            remove_unwritten(self.sinks, self.outputs)
            monitor.close()
            stop_all(state.observers)
            plan.inference.close()

    def summary(self, wall_s: float) -> RunSummary:
        """The summary of the finished run (see :func:`~pipeline.runtime.summary.summarize`)."""
        if self.graph is None:
            raise RuntimeError("summary() before run()")
        plan, state = self.plan, self.state
        with self._change:
            ends = [self._stream_end(stream.source, stream.config.max_frames, wall_s)
                    for stream in self.streams.values()]
            summary = summarize(state.metrics, ends, wall_s, plan.model_path.name, plan.inference.backend.name,
                                state.metrics.batch_sizes, state.errors, state.stopped_by, failed=bool(state.errors))
            summary.sources[:0] = self.removed  # streams removed while it ran, in the order they left
        return summary

    # ---- a service: streams that join and leave while it runs ----------------------------------
    def add_stream(self, stream: StreamPlan) -> None:
        """Start ``stream`` (from :meth:`Plan.new_stream`) in the running engine: its own reader,
        preprocess and queue, its queue added to the batcher's group; the other streams' threads
        and queues are not touched. A file is opened here, so a missing one fails at once."""
        plan, state = self.plan, self.state
        tracking = plan.tracking
        # The service's port answers before the last stages have started: a stream that comes then waits.
        if self.graph is not None and not self.state.stop_reading.is_set():
            self.running.wait(START_WAIT_S)
        with self._change:
            graph = self.graph
            if not self.running.is_set() or graph is None:
                raise RuntimeError("a stream joins a running pipeline: call add_source() while run() runs")
            if state.stop_reading.is_set():
                raise RuntimeError("the pipeline is stopping: no stream joins now")
            if stream.id in self.streams:
                raise StreamExistsError(f"sources: a stream with id {stream.id!r} is already running")
            src = stream.source
            try:
                if src.is_file:
                    self._open_file(src)
                self._stream_sinks(stream)
            except BaseException:
                src.close()
                raise
            if tracking is not None:
                tracking.sources[src.id] = src  # its fps, for the tracker
            with state.lock:
                state.streams += 1
            for stage in (graph.sink, graph.postprocess):
                stage.open_sources.add(stream.id)
            reader, pre = build_stream(graph, plan, stream, opened=src.is_file)
            graph.inference.add_stream(stream.id, stream.policy.budget_ms)
            graph.stages[:0] = [st for st in (reader, pre) if st is not None]
            state.queues[:] = graph.queues
            self.streams[stream.id] = stream
            if pre is not None:
                pre.start()
            reader.start()
            log.info("stream %s added (%s, %s)", stream.id, redact_uri(src.uri), "live" if src.is_live else "file")

    def remove_stream(self, source_id: str, timeout_s: float | None = None) -> SourceSummary:
        """Stop one stream and return its summary once its last frame has left the sinks: its
        reader ends its stream, what it has in flight is finished and written, its sinks close
        (whole JSON lines, a playable video). Whatever the run kept for it is then released."""
        state, graph = self.state, self.graph
        with self._change:
            stream = self.streams.get(source_id)
            if stream is None or graph is None:
                raise UnknownStreamError(f"no stream with id {source_id!r}")
            if stream.stop is not None:
                stream.stop.set()
            limit = timeout_s if timeout_s is not None else self.plan.run.drain_timeout_s + 10
            deadline = time.monotonic() + limit
            while source_id not in state.ended and time.monotonic() < deadline and not state.abort.is_set():
                time.sleep(0.02)
            if source_id not in state.ended and not state.abort.is_set():
                raise TimeoutError(f"stream {source_id!r} did not finish within {limit:g} s of its stop")
            reader, pre = graph.readers.get(source_id), graph.preprocess.get(source_id)
            for st in (reader, pre):
                if st is not None:
                    st.join(5)
            remove_unwritten({source_id: self.sinks.get(source_id, [])}, self.outputs)
            account_in_flight(state.metrics, failed=False, only=source_id)
            end = self._stream_end(stream.source, stream.config.max_frames, time.monotonic() - self.t_start)
            summary = source_summary(state.metrics, end)
            self._forget(source_id, reader, pre)
            self.removed.append(summary)
            del self.removed[:-MAX_REMOVED]
            log.info("stream %s removed: %d frames in, %d out, %d dropped", source_id, summary.frames_in,
                     summary.frames_out, sum(summary.drops.values()))
            return summary

    def _forget(self, source_id: str, reader, pre) -> None:
        """Release what the run kept for a removed stream (threads, queues, sinks, metrics)."""
        state, graph = self.state, self.graph
        for stage in (reader, pre):
            if stage is not None and stage in graph.stages:
                graph.stages.remove(stage)
        graph.readers.pop(source_id, None)
        graph.preprocess.pop(source_id, None)
        gone = [q for q in (getattr(reader, "out", None), getattr(pre, "out", None)) if q is not None]
        graph.queues[:] = [q for q in graph.queues if all(q is not g for g in gone)]
        state.queues[:] = graph.queues
        graph.group.retire(source_id)
        graph.ctx.budget.forget(source_id)
        graph.inference.streams_changed()
        self.sinks.pop(source_id, None)
        self.outputs.pop(source_id, None)
        tracking = self.plan.tracking
        if tracking is not None:
            tracking.forget(source_id)
        state.forget_observed(source_id)
        with state.lock:
            state.ended.pop(source_id, None)
            state.streams -= 1
        state.metrics.forget(source_id)
        del self.streams[source_id]

    def apply_live(self, old, new, changed: list[str], edits: dict, check_only: bool = False) -> None:
        """A live edit's keys into the running stages (:func:`pipeline.runtime.live.apply_local`)."""
        from pipeline.runtime.live import apply_local

        apply_local(self, old, new, changed, edits, check_only)

    def stream_state(self, source_id: str) -> str:
        """``starting`` | ``up`` | ``reconnecting`` | ``down`` | ``ended`` (see the service's API)."""
        stream = self.streams.get(source_id)
        if stream is None:
            raise UnknownStreamError(f"no stream with id {source_id!r}")
        eos = self.state.ended.get(source_id)
        if eos is not None:
            return "down" if eos.error else "ended"
        src = stream.source
        if src.is_live:
            up = getattr(src, "state", "up")
            if up == "up":
                return "up"
            if up == "reconnecting":
                return "reconnecting" if getattr(src, "ever_opened", False) else "starting"
            return "starting"
        return "up" if self.state.metrics.snapshot(source_id).frames_in else "starting"

    def _stream_end(self, src, max_frames: int | None, wall_s: float) -> StreamEnd:
        """One source at the end of the run: its error, whether it ever connected, its outputs."""
        state = self.state
        st = state.metrics.sources.get(src.id)
        frames_in = st.frames_in if st else 0
        eos = state.ended.get(src.id)
        reader = self.graph.readers.get(src.id)
        failed = reader is not None and reader.error is not None
        never = src.is_live and frames_in == 0 and src.down_at_end
        if eos is not None and eos.error:  # e.g. retries ran out
            error = f"never connected: {eos.error}" if never else eos.error
        elif never:
            why = "opened but delivered no frame" if src.ever_opened else "could not be opened"
            error, failed = f"never connected: {src.uri} {why} in {wall_s:.0f} s", True
        else:
            shared = [msg for stage, msg in state.errors if stage != "capture"]
            error, never, failed = (shared[0] if shared and eos is None else None), False, False
        tracking = self.plan.tracking
        return StreamEnd(src.id, src.uri, src.is_live, src.claimed_frames, max_frames, error,
                         self.outputs.get(src.id, []), never, failed,
                         tracking.summary(src.id) if tracking is not None else None)


def _close_after(threads: list[threading.Thread], close) -> None:
    """Join ``threads``, then ``close()``: a backend is released only once no call runs on it."""
    for t in threads:
        t.join()
    close()


register_engine("local", LocalEngine, order=0)

__all__ = ["LocalEngine"]
