"""The local engine: runs a :class:`~pipeline.runtime.plan.Plan` in threads on this machine.

``LocalEngine(plan, state).run()`` opens the file sources (a missing or undecodable video fails
before any work), makes each source's sinks, builds the stages (:mod:`.build`), starts the
inference thread warm, starts the observers, then the other stages; watches the run in the main
thread (:func:`~pipeline.runtime.supervise.watch`: duration, the drain bound, display windows,
progress); and ends it in order: join every stage, close every sink, remove outputs no frame
reached, stop the observers, release the backend. It returns the :class:`RunSummary` built by
:func:`~pipeline.runtime.summary.summarize`, as the Ray engine does.
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline.observers import start_all, stop_all
from pipeline.policy import budget_note
from pipeline.progress import RunProgress
from pipeline.runtime.build import StageGraph, build_stages
from pipeline.runtime.engines import register_engine
from pipeline.runtime.plan import Plan
from pipeline.runtime.state import RunState
from pipeline.runtime.summary import RunSummary, StreamEnd, summarize
from pipeline.runtime.supervise import files_total, join_stages, remove_unwritten, start_warm_inference, watch
from pipeline.sinks import Sink, close_sinks
from pipeline.sinks.watch import NothingFoundWatch
from pipeline.sources import redacted_config

log = logging.getLogger("pipeline.runtime")
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

    def open_sources(self) -> None:
        """Open file sources up front so a missing or undecodable video fails before any work."""
        tracking = self.plan.tracking
        for src in self.plan.sources:
            if src.is_file:
                src.open()
                self._opened.add(src.id)
                if tracking is not None and src.size != (0, 0):
                    tracking.check_frame_size(src.id, src.size)

    def _make_sinks(self) -> None:
        """The plan's sinks for each source, then those the caller attached (results, on_result)."""
        for stream in self.plan.streams:
            sinks = self.plan.sinks_for(stream)
            self.outputs[stream.id] = [str(s.path) for s in sinks if s.path is not None]
            # one that writes nothing: warns once when a source's first frames have no detection (check the spec)
            watch = NothingFoundWatch(stream.id, self.plan.model_path.name, self.plan.spec.normalization())
            self.sinks[stream.id] = sinks + [watch] + [f(stream.source, stream.config) for f in self.state.sink_factories]

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
        t_start = time.monotonic()
        try:
            self.open_sources()
            self._make_sinks()
            self.graph = build_stages(plan, state, self.sinks, self._opened)
            state.queues[:] = self.graph.queues
            start_warm_inference(self.graph.inference)
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
        self._watch(t_start, plan.run.progress if progress is None else progress)
        if state.refused is not None:
            raise state.refused
        return self.summary(time.monotonic() - t_start)

    def _watch(self, t_start: float, progress: bool) -> None:
        """The watch loop until every stream has ended (or an abort has emptied the sinks), then
        the orderly end."""
        plan, state, graph = self.plan, self.state, self.graph
        monitor = RunProgress(state.metrics, total_frames=files_total(plan.streams),
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
        ends = [self._stream_end(stream.source, stream.config.max_frames, wall_s) for stream in plan.streams]
        return summarize(state.metrics, ends, wall_s, plan.model_path.name, plan.inference.backend.name,
                         state.metrics.batch_sizes, state.errors, state.stopped_by, failed=bool(state.errors))

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
