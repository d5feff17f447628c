"""Supervising a run: the two-step stop, the watch loop in the main thread (duration, drain
deadline, display windows, progress), and the orderly end: join every stage, close every sink,
remove outputs no frame reached, stop the exporters, release the backend."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.progress import RunProgress
from pipeline.stages import InferenceStage, Stage

if TYPE_CHECKING:
    from pipeline.runtime.build import StageGraph
    from pipeline.runtime.pipeline import Pipeline
    from pipeline.sinks import Sink

log = logging.getLogger(__name__)


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


def close_sinks(sinks_by_source: dict[str, list[Sink]]) -> None:
    """Close every sink; a failure is logged and the others still close."""
    for sid, sinks in sinks_by_source.items():
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("%s: closing %s sink failed: %s", sid, sink.name, exc)


def start_warm_inference(inference: InferenceStage) -> None:
    """Start the inference thread alone and wait until it has warmed the backend up; raise the
    warm-up's error here, before any other stage has started."""
    inference.start()
    while not inference.warmed.wait(0.1):
        if not inference.is_alive():
            break
    if inference.warm_up_error is not None:
        inference.join(5)
        raise inference.warm_up_error


def watch(pipe: Pipeline, graph: StageGraph, t_start: float, progress: bool) -> None:
    """Run the main thread's loop until every stream has ended (or an abort has emptied the
    sinks), then end the run in order. ``progress``: draw the progress line on a terminal."""
    duration = pipe.cfg.pipeline.duration_s
    drain = pipe.cfg.pipeline.drain_timeout_s
    monitor = RunProgress(pipe.metrics, total_frames=files_total(pipe), live=any(s.is_live for s in pipe.sources),
                          show=progress,  # a bar on a terminal only
                          log_interval_s=pipe.cfg.metrics.log_interval_s)
    main_thread = [s for sinks in pipe.sinks.values() for s in sinks if s.needs_main_thread]
    try:
        while not pipe._done.wait(0.02 if main_thread else 0.1):
            for sink in main_thread:  # e.g. HighGUI runs in this (the main) thread only
                sink.pump()
            if duration is not None and time.monotonic() - t_start >= duration and not pipe.stop_reading.is_set():
                pipe.stop(f"duration {duration:g} s reached")
            if pipe.abort.is_set() and not graph.sink.is_alive():
                break
            if (pipe._stop_at is not None and not pipe.abort.is_set()
                    and time.monotonic() - pipe._stop_at > drain):
                log.warning("frames in flight not finished %g s after the stop (pipeline.drain_timeout_s); "
                            "stopping now, they count as 'shutdown' drops", drain)
                pipe.abort.set()
            monitor.tick()
    finally:
        if not pipe._done.is_set() and not pipe.abort.is_set():
            pipe.stop("interrupted")
        join_stages(graph.stages, pipe.abort)
        close_sinks(pipe.sinks)
        stuck = [st.name for st in graph.stages if st.is_alive()]
        if stuck:
            log.error("threads still running after stop: %s", ", ".join(stuck))
        for sink in main_thread:
            sink.destroy()
        remove_unwritten(pipe.sinks, pipe.outputs)
        monitor.close()
        stop_exporters(pipe._exporters)
        pipe.close_backends()


def files_total(pipe: Pipeline) -> int | None:
    """Frames the file sources will deliver, per their headers, ``max_frames`` and start frame;
    None when a file's header gives no count."""
    total = 0
    for src, scfg in zip(pipe.sources, pipe.source_cfgs):
        if src.is_live:
            continue
        if not src.claimed_frames:
            return None
        last = min(src.claimed_frames, scfg.max_frames) if scfg.max_frames is not None else src.claimed_frames
        total += max(0, last - src.start_frame)
    return total


def join_stages(stages: list[Stage], abort: threading.Event) -> None:
    """Wait for every stage (30 s in all, then abort the rest and wait 5 s more each)."""
    deadline = time.monotonic() + 30
    for st in stages:
        st.join(max(0.0, deadline - time.monotonic()))
        if st.is_alive():
            abort.set()
    for st in stages:
        st.join(5)


def stop_exporters(exporters: list) -> None:
    for ex in exporters:
        try:
            ex.stop()
        except Exception as exc:
            log.warning("exporter stop failed: %s", exc)


def remove_unwritten(sinks_by_source: dict[str, list[Sink]], outputs: dict[str, list[str]]) -> None:
    """An output that no frame reached (an empty JSONL, a header-only mp4) is deleted and not
    listed: a failed or empty run leaves nothing that looks like a result."""
    for sid, sinks in sinks_by_source.items():
        for sink in sinks:
            if sink.path is None or sink.written:
                continue
            try:
                Path(sink.path).unlink(missing_ok=True)
            except OSError as exc:
                log.debug("%s: cannot remove the unwritten %s (%s)", sid, sink.path, exc.strerror)
            if str(sink.path) in outputs.get(sid, []):
                outputs[sid].remove(str(sink.path))


