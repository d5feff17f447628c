"""Supervising a run: the one watch loop every engine runs in the main thread (duration, drain
deadline), starting the inference thread warm, joining the stages, and removing the outputs no
frame reached. The two-step stop itself is :mod:`pipeline.runtime.state`'s."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.runtime.state import TwoStepStop  # noqa: F401  (re-exported)
from pipeline.sinks import close_sinks  # noqa: F401  (re-exported)
from pipeline.stages import InferenceStage, Stage

if TYPE_CHECKING:
    from pipeline.runtime.plan import RunSettings, StreamPlan
    from pipeline.runtime.state import RunState
    from pipeline.sinks import Sink

log = logging.getLogger(__name__)


def start_warm_inference(inference: InferenceStage, meanwhile: Callable[[], None] | None = None) -> None:
    """Start the inference thread alone and wait until it has warmed the backend up; raise the
    warm-up's error here, before any other stage has started. ``meanwhile()`` runs in this thread
    while the backend warms up (the engine opens the outputs then: the H.264 writer's start-up
    overlaps the first inference calls); its error is raised as it comes."""
    inference.start()
    if meanwhile is not None:
        meanwhile()
    while not inference.warmed.wait(0.1):
        if not inference.is_alive():
            break
    if inference.warm_up_error is not None:
        inference.join(5)
        raise inference.warm_up_error


def watch(state: RunState, settings: RunSettings, t_start: float, step: Callable[[], bool],
          overdue_after_s: float, on_overdue: Callable[[float], bool]) -> None:
    """The one watch loop of every engine, in the main thread: call ``step()`` (the engine's own
    work for one tick; it waits a little and returns True once the run is over) until it is over.
    Stops the run once ``duration_s`` has passed. Once a stop has drained for more than
    ``overdue_after_s``, ``on_overdue(seconds since the stop)`` is called (once); True ends the loop."""
    overdue = False
    while not step():
        now = time.monotonic()
        if settings.duration_s is not None and now - t_start >= settings.duration_s and not state.stop_reading.is_set():
            state.stop(f"duration {settings.duration_s:g} s reached")
        if not overdue and state.stop_at is not None and now - state.stop_at > overdue_after_s:
            overdue = True
            if on_overdue(now - state.stop_at):
                break


def files_total(streams: Iterable[StreamPlan]) -> int | None:
    """Frames the file sources will deliver, per their headers, ``max_frames`` and start frame;
    None when a file's header gives no count."""
    total = 0
    for stream in streams:
        src = stream.source
        if src.is_live:
            continue
        if not src.claimed_frames:
            return None
        max_frames = stream.config.max_frames
        last = min(src.claimed_frames, max_frames) if max_frames is not None else src.claimed_frames
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


