"""The stage threads (the latency budget they check is :mod:`pipeline.policy`'s).

::

    reader (per source) ─▶ preprocess (per source) ─▶ inference (one; batches across sources)
        ─▶ postprocess (one) ─▶ sinks (one; each source has its own sink set)

Every stage runs in its own thread with a stop event; every blocking call has a timeout.
A stage that fails logs one line, records the error, and forwards an end-of-stream sentinel for
each stream it still carries, so no thread ever waits forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.backends.base import Backend
from pipeline.batching import InOrderBatches
from pipeline.errors import InferpathError, ModelError
from pipeline.frame import Frame
from pipeline.metrics import NETWORK, Metrics
from pipeline.model import ModelSpec, class_label
from pipeline.policy import (
    LatencyBudget,
    SideBySide,
    budget_batch_cap,
    count_skipped,
    ewma,
    late_reason,
    live_batching,
)
from pipeline.postprocess import postprocess
from pipeline.preprocess import preprocess
from pipeline.queues import POLL_S, EndOfStream, FrameQueue, QueueGroup
from pipeline.sinks import Sink, close_sinks
from pipeline.sources.base import Source, redact_text

log = logging.getLogger(__name__)

@dataclass
class StageContext:
    """What every stage shares: metrics, the budget, the stop events, the error slot."""

    metrics: Metrics
    budget: LatencyBudget
    stop_reading: threading.Event  # first stop: readers end their streams, the rest drains
    abort: threading.Event  # second stop / fatal error: every stage exits now
    errors: list[tuple[str, str]]  # (stage or source, message), first is the headline
    lock: threading.Lock
    frame_hooks: list[Callable[[Frame], None]] = field(default_factory=list)  # see Pipeline.add_frame_hook
    # A service (``inferpath serve``): streams come and go, so the stages every stream shares
    # (inference, postprocess, sinks) stay up with none until the stop, not until their last stream ends.
    serving: bool = False


class Stage(threading.Thread):
    """A thread with a name, a stop event and error reporting (``error``: its failure, if any)."""

    stage_name = "stage"
    shared = False  # one thread for every stream (inference, postprocess, sinks): its failure ends the run

    def __init__(self, ctx: StageContext, name: str, sources: list[str]) -> None:
        super().__init__(name=f"inferpath-{name}", daemon=True)
        self.ctx = ctx
        self.open_sources = set(sources)
        self.error: str | None = None  # set when the stage failed (the message, redacted)

    def run(self) -> None:
        try:
            self.loop()
        except Exception as exc:  # report, then end every stream this stage still carries
            msg = str(exc) if isinstance(exc, InferpathError) else f"{type(exc).__name__}: {exc}"
            msg = redact_text(msg)
            self.error = msg
            with self.ctx.lock:
                self.ctx.errors.append((self.stage_name, msg))
            if isinstance(exc, InferpathError):
                log.error("%s failed: %s", self.stage_name, msg)
            else:
                log.exception("%s failed: %s", self.stage_name, msg)
            for sid in sorted(self.open_sources):
                self.forward(EndOfStream(sid, error=msg))
            self.open_sources.clear()
            if self.shared:  # every stream goes through this stage: nothing can finish now
                self.ctx.abort.set()

    def carrying(self) -> bool:
        """Whether the stage still has work: a stream it carries has not ended, or (a stage every
        stream shares, in a service) the run has not been stopped, so a stream may still join."""
        return bool(self.open_sources) or (self.shared and self.ctx.serving and not self.ctx.stop_reading.is_set())

    def loop(self) -> None:
        raise NotImplementedError

    def forward(self, item: object) -> None:
        raise NotImplementedError

    def drop(self, frame: Frame, reason: str) -> None:
        self.ctx.metrics.drop(frame.source_id, reason)


def count_evictions(metrics: Metrics) -> Callable[[object, str], None]:
    """The queues' ``on_drop`` hook: a frame evicted from a full queue counts as a drop."""

    def on_drop(item: object, reason: str) -> None:
        if isinstance(item, Frame):
            metrics.drop(item.source_id, reason)

    return on_drop


class ReaderStage(Stage):
    """Reads one source: stamps each frame at capture and hands it on; ends with a sentinel."""

    stage_name = "capture"

    def __init__(self, ctx: StageContext, source: Source, out: FrameQueue, opened: bool = False,
                 max_frames: int | None = None, stop: threading.Event | None = None) -> None:
        super().__init__(ctx, f"reader-{source.id}", [source.id])
        self.source = source
        self.stop = stop or ctx.stop_reading  # a stream of a service has its own (removed alone)
        self.out = out
        self.opened = opened
        self.max_frames = max_frames
        self.seq = source.start_frame  # a file started mid-way keeps its frame index as seq

    def forward(self, item: object) -> None:
        self.out.put(item)

    def loop(self) -> None:
        src = self.source
        sid = src.id
        try:
            if not self.opened:
                src.open()
            skipped_seen = 0
            while not (self.ctx.stop_reading.is_set() or self.stop.is_set() or self.ctx.abort.is_set()):
                if self.max_frames is not None and self.seq >= self.max_frames:
                    break
                t0 = time.monotonic_ns()
                grab = src.read()
                if grab is None:
                    break
                t1 = time.monotonic_ns()
                skipped = src.skipped
                if skipped > skipped_seen:  # a paced file fell behind: those frames were never decoded
                    count_skipped(self.ctx.metrics, sid, skipped - skipped_seen)
                    self.seq += skipped - skipped_seen
                    skipped_seen = skipped
                captured = grab.captured_ns if src.is_live else t0
                frame = Frame(sid, self.seq, grab.pts, captured, grab.image)
                if grab.received_ns is not None:  # the camera's clock: network + decode is a stage
                    frame.stamps[NETWORK] = (captured, grab.received_ns)
                    captured = grab.received_ns
                frame.stamps["capture"] = (min(captured, t1), t1) if src.is_live else (t0, t1)
                self.seq += 1
                self.ctx.metrics.frame_in(sid)
                if grab.received_ns is not None:
                    self.ctx.metrics.observe(sid, NETWORK, (grab.received_ns - frame.captured_ns) / 1e9)
                self.ctx.metrics.observe(sid, "capture", (t1 - frame.stamps["capture"][0]) / 1e9)
                if grab.received_ns is not None and self.ctx.budget.late_on_arrival(frame, t1):
                    self.drop(frame, late_reason(NETWORK))  # it reached us already too old: never queued
                    continue
                if not self.out.put(frame, self.ctx.abort):
                    self.ctx.metrics.drop(sid, "shutdown")
                    break
        finally:
            src.close()
        self.open_sources.clear()
        self.out.put(EndOfStream(sid))


class FrameStage(Stage):
    """A stage with one input queue that works on one frame at a time: take, check the budget,
    ``work``, stamp, ``hand_on``; sentinels go on in order through ``end_stream``. It ends when
    every stream it carries has ended."""

    def __init__(self, ctx: StageContext, name: str, sources: list[str], inq: FrameQueue,
                 out: FrameQueue | None):
        super().__init__(ctx, name, sources)
        self.inq = inq
        self.out = out

    def forward(self, item: object) -> None:
        if isinstance(item, EndOfStream):
            self.end_stream(item)

    def work(self, frame: Frame) -> None:
        raise NotImplementedError

    def hand_on(self, frame: Frame) -> None:
        """Pass a finished frame to the next stage (the last stage delivers it instead)."""
        if not self.out.put(frame, self.ctx.abort):
            self.drop(frame, "shutdown")

    def end_stream(self, eos: EndOfStream) -> None:
        self.out.put(eos)

    def loop(self) -> None:
        stage = self.stage_name
        # a service's shared stage wakes each POLL_S to see a stop (it may carry no stream then)
        wait = POLL_S if self.ctx.serving and self.shared else None
        while self.carrying() and not self.ctx.abort.is_set():
            item = self.inq.get(self.ctx.abort, wait)
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                self.open_sources.discard(item.source_id)
                self.end_stream(item)
                continue
            frame: Frame = item
            t0 = time.monotonic_ns()
            if self.ctx.budget.late(frame, stage, t0):
                self.drop(frame, late_reason(stage))
                continue
            self.work(frame)
            record_stage(self.ctx, frame, stage, t0, time.monotonic_ns())
            self.hand_on(frame)


def record_stage(ctx: StageContext, frame: Frame, stage: str, t0: int, t1: int) -> None:
    """A frame's time in ``stage``: its stamp, the stage's metrics and the budget's estimate."""
    frame.stamps[stage] = (t0, t1)
    ctx.metrics.observe(frame.source_id, stage, (t1 - t0) / 1e9)
    ctx.budget.observe(stage, (t1 - t0) / 1e6)


class PreprocessStage(FrameStage):
    """Letterbox + normalize one source's frames (its own thread, so streams never wait on each other)."""

    stage_name = "preprocess"

    def __init__(self, ctx: StageContext, source_id: str, spec: ModelSpec, inq: FrameQueue, out: FrameQueue):
        super().__init__(ctx, f"preprocess-{source_id}", [source_id], inq, out)
        self.spec = spec

    def work(self, frame: Frame) -> None:
        frame.tensor, frame.letterbox = preprocess(frame.image, self.spec)
        run_frame_hooks(self.ctx, frame)


def run_frame_hooks(ctx: StageContext, frame: Frame) -> None:
    """The frame hooks (``Pipeline.add_frame_hook``: the drift monitor's), on a preprocessed frame."""
    for hook in ctx.frame_hooks:
        try:
            hook(frame)
        except Exception as exc:  # an observer never crashes the pipeline
            log.debug("frame hook failed: %s", exc)


def inference_error(model: str, batch: np.ndarray, exc: Exception) -> ModelError:
    """A backend's exception as one line naming the model and the input it was given."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return ModelError(f"{model}: inference failed on an input of shape {list(batch.shape)} {batch.dtype} "
                      f"({first[:300]})")


class InferenceStage(Stage):
    """Batches frames across streams (round-robin, at most ``batch_timeout_ms`` of waiting) and
    runs the backend once per batch. Frames already too late never enter a batch.

    Live streams only (every queue ``drop_oldest``): the stage never waits for a batch to fill; it
    takes the frames waiting now, so it never idles while a fresh frame exists, runs batch 1 while
    it keeps up, and batches when frames pile up during a call (overload), where a batch costs
    less per frame. The batch is capped so that its frames still fit the tightest budget: a frame
    waits about one call and then rides one, so ``k`` frames fit when ``2 k`` times the time per
    frame, plus the stages after inference, stays within the budget.

    A frame that comes without its tensor (a stream whose policy preprocesses when taken:
    :func:`~pipeline.policy.preprocess_when_taken`) is letterboxed and normalized here, after it
    is taken and before its call, with the preprocess stage's budget check, stamp and timing; so
    a frame evicted from its queue has cost no preprocessing. The frame hooks run on it here,
    one frame at a time (a hook may keep per-stream state that is not thread-safe).

    ``workers`` > 1 (ONNX Runtime on a CPU, see ``backend.onnxruntime.workers``): that many
    threads each take a batch and run it, so calls overlap. Each batch is numbered when taken and
    handed on in that order (:class:`~pipeline.batching.InOrderBatches`, whose invariants are
    written there), so every stream's frames and its end-of-stream still leave in order. Without ``side_backend`` (batch
    jobs) every worker runs all the time on ``backend``. With it (live sources), the run starts
    with one call at a time on ``backend`` (every core: the shortest time per frame) and
    :class:`~pipeline.policy.SideBySide` decides, from the frames offered, when the workers run
    their calls side by side on ``side_backend`` (the cores shared out: more frames per second).
    """

    stage_name = "inference"
    shared = True

    def __init__(self, ctx: StageContext, backend: Backend, group: QueueGroup, out: FrameQueue,
                 sources: list[str], max_batch: int, batch_timeout_ms: float,
                 warm_up: Callable[[], None] | None = None, model: str = "model", workers: int = 1,
                 side_backend: Backend | None = None, spec: ModelSpec | None = None) -> None:
        super().__init__(ctx, "inference", sources)
        self.spec = spec  # to preprocess the frames that come without a tensor
        self._hooks_lock = threading.Lock()  # the frame hooks run one frame at a time, as in a stream's thread
        self._preprocess_failed: set[str] = set()  # streams whose preprocess failure was logged
        self.workers = max(1, workers)
        self.side_backend = side_backend if self.workers > 1 else None
        self.side = SideBySide(self.workers) if self.side_backend is not None else None
        self.batches = InOrderBatches(group, self.hand_on)  # numbered when taken, handed on in that order
        self._side_wake = threading.Event()  # set while the calls go side by side (wakes the other workers)
        self.backend = backend
        self.model = model
        # Run first in this thread: a backend's per-thread state (TensorRT's execution context,
        # stream, buffers) is then built where it is used, never a second time on another thread.
        self.warm_up = warm_up
        self.warmed = threading.Event()  # set when warm-up has ended, whether or not it failed
        self.warm_up_error: BaseException | None = None
        self.group = group
        self.out = out
        self.max_batch = max_batch  # the effective one: the plan applied the backend's limit (PathPolicy)
        self.batch_timeout_s = batch_timeout_ms / 1000.0
        self.frame_ms = 0.0  # running estimate of one call's time per frame, one call at a time
        self.side_frame_ms = 0.0  # the same for a call side by side (with side_backend)
        self._busy = ([0, 0.0], [0, 0.0])  # (frames, busy s) of calls one at a time / side by side
        self._stats_lock = threading.Lock()  # the estimates above, updated by every worker
        self._late = 0  # frames found too late when taken
        self.streams_changed()  # whether a batch waits to fill (live), its wait, the tightest budget

    def batch_limit(self, side: bool = False) -> int:
        """Frames per call now: what :func:`~pipeline.policy.budget_batch_cap` allows, from the
        time per frame measured one call at a time or side by side."""
        frame_ms, calls = (self.side_frame_ms, self.workers) if side else (self.frame_ms, 1)
        return budget_batch_cap(self.max_batch, self.live, self.tightest_budget_ms,
                                self.ctx.budget.remaining_ms("postprocess"), frame_ms, calls)

    def forward(self, item: object) -> None:
        self.out.put(item)

    def _accept(self, frame: Frame) -> bool:
        stage = "preprocess" if frame.tensor is None else "inference"  # the budget from here to the end
        if self.ctx.budget.late(frame, stage):
            self.drop(frame, late_reason(stage))
            self._late += 1
            return False
        return True

    def _preprocess(self, frames: list[Frame]) -> list[Frame]:
        """Letterbox and normalize the frames taken without a tensor, as the preprocess stage would;
        the frames that are ready. One that fails is dropped (``error@preprocess``, logged once per
        stream): it never takes the other streams' batch down."""
        ctx = self.ctx
        ready = []
        for frame in frames:
            if frame.tensor is not None:
                ready.append(frame)
                continue
            t0 = time.monotonic_ns()
            try:
                if self.spec is None:
                    raise RuntimeError("a frame came to inference without a tensor, and the stage has no spec")
                frame.tensor, frame.letterbox = preprocess(frame.image, self.spec)
            except Exception as exc:
                self.drop(frame, "error@preprocess")
                if frame.source_id not in self._preprocess_failed:
                    self._preprocess_failed.add(frame.source_id)
                    log.error("%s: preprocess failed: %s (further errors counted, not logged)", frame.source_id,
                              redact_text(f"{type(exc).__name__}: {exc}"))
                continue
            ready.append(frame)
            if ctx.frame_hooks:
                with self._hooks_lock:
                    run_frame_hooks(ctx, frame)
            record_stage(ctx, frame, "preprocess", t0, time.monotonic_ns())
        return ready

    def loop(self) -> None:
        if self.warm_up is not None:
            try:
                self.warm_up()
            except Exception as exc:  # the pipeline's starter raises it; nothing downstream has started
                self.warm_up_error = exc
                return
            finally:
                self.warmed.set()
        helpers = [threading.Thread(target=self._helper, args=(k,), name=f"{self.name}-{k}", daemon=True)
                   for k in range(1, self.workers)]
        for helper in helpers:
            helper.start()
        try:
            self._work(0)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            for helper in helpers:
                helper.join()
        if self.batches.failure is not None:  # a helper's error ends the stage as its own would
            raise self.batches.failure

    def _helper(self, lane: int) -> None:
        try:
            self._work(lane)
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.batches.fail(exc)

    def _work(self, lane: int) -> None:
        """One worker: take a batch, run it, hand it on in its turn; until every stream has ended.
        With ``side_backend``, workers other than the first (``lane`` 0) only run while the calls
        go side by side."""
        batches = self.batches
        while self.carrying() and not self.ctx.abort.is_set() and batches.failure is None:
            if lane and not self._side_on():  # only the first worker runs one call at a time
                self._side_wake.wait(POLL_S)
                continue
            with batches.take_lock:
                side_by_side = self._side_on()
                if lane and not side_by_side:  # the calls went back to one at a time meanwhile
                    continue
                taken = batches.take(self.batch_limit(side_by_side), self.timeout_s, self.ctx.abort,
                                     accept=self._accept)
                if self.side is not None:
                    with self._stats_lock:
                        one, side = tuple(self._busy[0]), tuple(self._busy[1])
                    if self.side.update(time.monotonic(), self.group.arrived, self.group.evicted + self._late,
                                        one, side):
                        self._side_wake.set()
                    else:
                        self._side_wake.clear()
                if taken is None:
                    continue
            number, items = taken
            frames = [i for i in items if isinstance(i, Frame)]
            ready = self._preprocess(frames)
            if len(ready) < len(frames):  # dropped while preprocessed: not handed on
                kept = {id(f) for f in ready}
                items = [i for i in items if not isinstance(i, Frame) or id(i) in kept]
            frames = ready
            if frames:
                self.run_batch(frames, side_by_side)
            batches.finish(number, items)

    def hand_on(self, items: list[object]) -> None:
        """A batch's frames, then any end-of-stream taken with them, to the next stage."""
        for frame in items:
            if isinstance(frame, Frame) and not self.out.put(frame, self.ctx.abort):
                self.drop(frame, "shutdown")
        ended = False
        for eos in items:
            if isinstance(eos, EndOfStream):
                self.open_sources.discard(eos.source_id)
                self.group.retire(eos.source_id)  # nothing follows its end-of-stream
                self.out.put(eos)
                ended = True
        if ended:  # the streams left decide whether a batch waits (a file ended beside a camera: it no longer does)
            self.streams_changed()
        if ended and not self.carrying():  # the last stream has ended: the other workers stop waiting now
            self.group.close()
            self._side_wake.set()

    def add_stream(self, source_id: str, budget_ms: float | None) -> None:
        """A stream joins the running batches (its queue is already in the group): the batching
        mode and the budget cap follow the streams there now."""
        self.open_sources.add(source_id)
        self.ctx.budget.budgets_ms[source_id] = budget_ms
        self.streams_changed()

    def streams_changed(self) -> None:
        """Read what depends on the set of streams and their budgets, at the start and again when
        a stream is added, removed or its budget edited: whether a batch waits to fill (the
        policy's :func:`~pipeline.policy.live_batching` of the queues' policies), and the tightest budget."""
        self.live = live_batching(q.policy for q in self.group)
        self.timeout_s = 0.0 if self.live else self.batch_timeout_s
        self.tightest_budget_ms = self.ctx.budget.tightest_ms

    @property
    def side_frames(self) -> int:
        """Frames that went through calls side by side (with ``side_backend``)."""
        return self._busy[1][0]

    def _side_on(self) -> bool:
        """Whether the calls go side by side now: always for a batch job with several workers;
        as :class:`SideBySide` decides with ``side_backend``; never with one worker."""
        if self.side is not None:
            return self.side.on
        return self.workers > 1

    def run_batch(self, frames: list[Frame], side_by_side: bool = False) -> None:
        t0 = time.monotonic_ns()
        batch = np.stack([f.tensor for f in frames]) if len(frames) > 1 else frames[0].tensor[None]
        backend = self.side_backend if side_by_side and self.side_backend is not None else self.backend
        try:
            outputs = backend.infer(batch)
        except InferpathError:
            raise
        except Exception as exc:  # the backend's own error type: one line, with what it was given
            for frame in frames:
                self.drop(frame, "error@inference")
            raise inference_error(self.model, batch, exc) from None
        t1 = time.monotonic_ns()
        self.ctx.metrics.batch(len(frames))
        ms = (t1 - t0) / 1e6
        self.ctx.budget.observe("inference", ms)
        per_frame = ms / len(frames)
        side = side_by_side and self.side is not None
        with self._stats_lock:
            if side:
                self.side_frame_ms = ewma(self.side_frame_ms, per_frame, 0.2)
            else:
                self.frame_ms = ewma(self.frame_ms, per_frame, 0.2)
            busy = self._busy[side]
            busy[0] += len(frames)
            busy[1] += ms / 1000.0
        for i, frame in enumerate(frames):
            frame.outputs = [o[i : i + 1] for o in outputs]
            frame.stamps["inference"] = (t0, t1)
            frame.batch_size = len(frames)
            frame.tensor = None  # free the input early
            self.ctx.metrics.observe(frame.source_id, "inference", ms / 1000.0)


@dataclass(frozen=True)
class DecodeSettings:
    fmt: str
    conf: float
    iou: float
    max_det: int
    classes: tuple[int, ...] | None
    output: int = 0  # which model output holds the detections


class PostprocessStage(FrameStage):
    """Decodes raw outputs, NMS, maps boxes back to frame pixels."""

    stage_name = "postprocess"
    shared = True

    def __init__(self, ctx: StageContext, settings: DecodeSettings, inq: FrameQueue, out: FrameQueue,
                 sources: list[str]) -> None:
        super().__init__(ctx, "postprocess", sources, inq, out)
        self.settings = settings

    def work(self, frame: Frame) -> None:
        s = self.settings
        frame.detections = postprocess([frame.outputs[s.output]], [frame.letterbox], s.fmt, s.conf, s.iou, s.max_det,
                                       s.classes)[0]
        if not frame.keep_outputs:  # the canary's sampled frame keeps them: it decodes them at the gate's floor
            frame.outputs = None


class SinkStage(FrameStage):
    """Delivers results to each source's sinks, in order; closes a source's sinks at its end.

    The budget check here is on the frame's real age, so nothing older than the budget is
    emitted. A sink that raises is logged once and counted (``sink_errors``); it never stops
    the others.
    """

    stage_name = "sink"
    shared = True

    def __init__(self, ctx: StageContext, inq: FrameQueue, sinks: dict[str, list[Sink]],
                 names: tuple[str, ...], on_end: Callable[[EndOfStream], None],
                 before_sinks: Callable[[Frame], None] | None = None) -> None:
        super().__init__(ctx, "sinks", list(sinks), inq, None)
        self.sinks = sinks
        self.names = names
        self.on_end = on_end
        self.before_sinks = before_sinks  # tracking: each stream's frames, in order, that will be written
        self._sink_failed: set[tuple[str, str]] = set()

    def end_stream(self, eos: EndOfStream) -> None:
        close_sinks({eos.source_id: self.sinks.get(eos.source_id, [])})
        self.on_end(eos)

    def work(self, frame: Frame) -> None:
        frame.latency_ms = (time.monotonic_ns() - frame.captured_ns) / 1e6
        if self.before_sinks is not None:
            self.before_sinks(frame)
        for sink in self.sinks.get(frame.source_id, []):
            try:
                sink.write(frame)
            except Exception as exc:
                key = (frame.source_id, sink.name)
                if key not in self._sink_failed:
                    log.error("%s: %s sink failed: %s (further errors counted, not logged)",
                              frame.source_id, sink.name, redact_text(str(exc)))
                    self._sink_failed.add(key)
                self.ctx.metrics.count(frame.source_id, f"sink_errors_{sink.name}")

    def hand_on(self, frame: Frame) -> None:
        """The frame is delivered: its queue wait (e2e minus every stage's own time), e2e, counts."""
        m = self.ctx.metrics
        taken = frame.stamps["sink"][0]
        before_sink = sum(end - start for stage, (start, end) in frame.stamps.items() if stage != "sink")
        m.observe(frame.source_id, "queue", max(0, (taken - frame.captured_ns) - before_sink) / 1e9)
        m.observe(frame.source_id, "e2e", frame.latency_ms / 1000.0)
        det = frame.detections
        m.frame_out(frame.source_id, [class_label(self.names, c)
                                      for c in (det.class_id.tolist() if det is not None else [])])
        frame.image = None  # type: ignore[assignment]  # free the pixels as soon as delivered
