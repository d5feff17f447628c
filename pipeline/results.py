"""Results in the user's own code: ``Pipeline.results()`` (pull) and ``Pipeline.on_result`` (push).

Both are fed by :class:`ResultSink`, one per source, which the sink stage drives like any other
sink. The sink hands each delivered frame to a :class:`ResultBuffer` and returns at once, so the
consumer never runs in the sink thread. What happens when the consumer is slower than the
pipeline follows the source's own rules:

* a live source (queue policy ``drop_oldest``): the buffer holds at most ``live_buffer`` results
  of that source; a new one evicts the oldest, and a result older than the source's latency
  budget when the consumer asks for it is skipped. Both are counted as ``slow_consumer``
  events, not frame drops: the frame still reached every other sink, so a source's
  ``frames_in == frames_out + drops`` holds. The pipeline never waits.
* a batch source (``block``): the sink waits for room, so backpressure reaches the reader and
  nothing is lost.

Breaking out of the loop (or leaving the ``with`` block) stops the pipeline the ordinary way:
the readers end their streams, frames in flight finish and reach the other sinks, the threads
are joined and every sink is closed. A consumer that raises gets the same clean stop, and its
exception is raised to the caller (from the loop, or from ``run()`` for a callback).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.annotate import draw
from pipeline.frame import Detections, Frame
from pipeline.policy import StreamPolicy, consumer_queue, older_than_budget
from pipeline.queues import POLL_S, EndOfStream, QueueGroup
from pipeline.sinks import SinkBase

if TYPE_CHECKING:
    from pipeline.runtime import Pipeline, RunSummary

log = logging.getLogger(__name__)
SLOW_CONSUMER = "slow_consumer"


@dataclass(frozen=True)
class Result:
    """One delivered frame: who and when it was, how late, and what was found."""

    source: str
    seq: int  # per source, from 0 (gaps are frames dropped on the way)
    pts: float  # stream time, seconds
    latency_ms: float  # capture to sink
    detections: Detections
    names: tuple[str, ...] = ()  # class names of the model
    image: np.ndarray | None = None  # BGR pixels, only with ``results(images=True)``
    captured_ns: int = 0  # time.monotonic_ns() at capture
    stages_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0  # size of the inference batch the frame ran in
    events: tuple[dict, ...] = ()  # line crossings, zone entries and exits on this frame (tracking on)

    def age_ms(self) -> float:
        """Milliseconds since capture, now."""
        return (time.monotonic_ns() - self.captured_ns) / 1e6

    def records(self) -> list[dict]:
        """The detections as JSON lines write them."""
        return self.detections.to_records(self.names)

    def annotated(self) -> np.ndarray:
        """A copy of the pixels with the boxes drawn (needs ``images=True``)."""
        if self.image is None:
            raise ValueError("no pixels in this result: ask for them with results(images=True)")
        return draw(self.image.copy(), self.detections, self.names)


def result_of(frame: Frame, names: tuple[str, ...], images: bool) -> Result:
    return Result(
        source=frame.source_id, seq=frame.seq, pts=frame.pts,
        latency_ms=frame.latency_ms if frame.latency_ms is not None else frame.age_ms(),
        detections=frame.detections if frame.detections is not None else Detections.empty(),
        names=names, image=frame.image if images else None, captured_ns=frame.captured_ns,
        stages_ms={k: (v[1] - v[0]) / 1e6 for k, v in frame.stamps.items()}, batch_size=frame.batch_size,
        events=tuple(getattr(frame.tracking, "events", None) or ()),
    )


class ResultBuffer:
    """Results waiting for the consumer, across sources, in delivery order (see the module doc).

    One :class:`~pipeline.queues.FrameQueue` per source (a :class:`~pipeline.queues.QueueGroup`:
    one condition), sized and given its full-queue policy by :func:`~pipeline.policy.consumer_queue`;
    a result too old for its source's budget when the consumer asks is skipped
    (:func:`~pipeline.policy.older_than_budget`). Each source's end of stream goes through its queue."""

    def __init__(self, on_drop: Callable[[str], None], abort: threading.Event, live_buffer: int = 1,
                 batch_buffer: int = 8, serving: bool = False) -> None:
        self._group = QueueGroup()
        self._gone = threading.Event()  # the consumer has gone, or the run aborted: a waiting put gives up
        self._ended: set[str] = set()
        self._budgets_ms: dict[str, float | None] = {}
        self._arrived = 0  # results ever put: each carries its number, so the consumer takes them in order
        self.closed = False  # the consumer has gone: results are discarded from now on
        self.finished = False  # the pipeline has returned: nothing more will come
        self.on_drop = on_drop
        self.abort = abort
        self.live_buffer = max(1, live_buffer)
        self.batch_buffer = max(1, batch_buffer)
        # A service: streams come and go, so the consumer goes on when none is left (until the
        # pipeline returns), and a stream's queue goes once its end is taken (its id may come back).
        self.serving = serving

    def register(self, source: str, budget_ms: float | None, live: bool = False) -> None:
        policy, size = consumer_queue(live, self.live_buffer, self.batch_buffer)
        with self._group.cond:
            self._budgets_ms[source] = budget_ms
            self._group.add(source, "results", size, policy, lambda _item, _why: self.on_drop(source))

    def put(self, result: Result) -> None:
        """Sink thread. Live: never waits (the source's oldest is evicted). Batch: waits for room."""
        if self.closed:
            return
        with self._group.cond:
            self._arrived += 1
            number = self._arrived
        self._group.queues[result.source].put((number, result), _Either(self._gone, self.abort))

    def end(self, source: str) -> None:
        self._group.queues[source].put(EndOfStream(source))

    def finish(self) -> None:
        with self._group.cond:
            self.finished = True
            self._group.cond.notify_all()

    def close(self) -> None:
        """The consumer is gone: drop what waits and refuse the rest (a blocked sink is released)."""
        with self._group.cond:
            self.closed = True
            self._gone.set()
            for q in self._group:
                q.clear()
            self._group.cond.notify_all()

    def get(self) -> Result | None:
        """Consumer thread: the next result, or None once every stream has ended and all is taken."""
        while True:
            with self._group.cond:
                while True:
                    heads = [(q.peek(), q) for q in self._group if len(q)]
                    if heads:
                        break
                    every_end = not self.serving and self._budgets_ms and self._ended >= set(self._budgets_ms)
                    if self.closed or self.finished or every_end:
                        return None
                    self._group.cond.wait(POLL_S)
                # The oldest delivered first; an end of stream only once its source's results are taken.
                _, q = min(heads, key=lambda h: (0, h[0][0]) if isinstance(h[0], tuple) else (1, 0))
                item = q.pop_nowait()
            if isinstance(item, EndOfStream):
                self._ended.add(item.source_id)
                if self.serving:  # every result of it was taken before its end: its queue goes
                    self._group.retire(item.source_id)
                    with self._group.cond:
                        self._budgets_ms.pop(item.source_id, None)
                        self._ended.discard(item.source_id)
                        self._group.cond.notify_all()  # wait_taken
                continue
            result: Result = item[1]
            if older_than_budget(result.captured_ns, self._budgets_ms.get(result.source)):  # every sink's rule
                self.on_drop(result.source)
                continue
            return result


    def taken(self, source: str) -> bool:
        """A service: whether the consumer has taken the end of ``source`` (a stream registered
        here), so every result of it has been handed over: its queue is gone then."""
        with self._group.cond:
            return source not in self._group.queues

    def wait_taken(self, source: str, timeout: float) -> bool:
        """A service: wait until the consumer has taken ``source``'s end of stream, so every result
        of it has been handed over; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._group.cond:
            while source in self._group.queues and not (self.closed or self.finished):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._group.cond.wait(min(left, POLL_S))
        return True


class _Either:
    """Set when either event is: the stop a waiting put honours."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


class ResultSink(SinkBase):
    """The sink side of a :class:`ResultBuffer`, for one source (see the module doc)."""

    name = "results"

    def __init__(self, buffer: ResultBuffer, source_id: str, names: tuple[str, ...], live: bool,
                 budget_ms: float | None, images: bool) -> None:
        self.buffer = buffer
        self.source_id = source_id
        self.names = names
        self.images = images
        self.written = 0
        buffer.register(source_id, budget_ms, live)

    def write(self, frame: Frame) -> None:
        self.buffer.put(result_of(frame, self.names, self.images))
        self.written += 1

    def close(self) -> None:
        self.buffer.end(self.source_id)


def _buffer_for(pipe: Pipeline, images: bool, live_buffer: int) -> ResultBuffer:
    """A buffer, and a sink per source feeding it, registered on ``pipe``."""
    buf = ResultBuffer(lambda sid: pipe.metrics.count(sid, SLOW_CONSUMER), pipe.abort, live_buffer,
                       pipe.plan.inference.path.shared_queue_size, serving=pipe.plan.serving)

    def factory(src, scfg) -> ResultSink:
        policy = pipe.policies.get(src.id)
        if policy is None:  # a stream a service added while it runs: the plan's rule for it
            policy = StreamPolicy.for_source(src.id, src.is_live, scfg, pipe.cfg.pipeline, pipe.cfg.backend.max_batch)
        return ResultSink(buf, src.id, pipe.names, policy.drops_allowed, policy.budget_ms, images)

    pipe.add_sink_factory(factory)
    return buf


def _run_pipeline(pipe: Pipeline, buffer: ResultBuffer, outcome: dict[str, object]) -> None:
    try:
        outcome["summary"] = pipe.run(progress=False)
    except BaseException as exc:  # raised to the consumer from __next__
        outcome["error"] = exc
    finally:
        buffer.finish()


class ResultStream:
    """``for r in pipe.results(): ...``: runs the pipeline in a background thread and yields its
    results in the caller's thread. ``close()`` (or leaving the loop) stops it cleanly;
    ``summary`` holds the :class:`~pipeline.runtime.RunSummary` once it has finished."""

    def __init__(self, pipe: Pipeline, images: bool = False, live_buffer: int = 1) -> None:
        self.pipe = pipe
        self.buffer = _buffer_for(pipe, images, live_buffer)
        self._outcome: dict[str, object] = {}
        # The runner must not hold the stream itself, so a loop left by ``break`` frees the
        # stream at once and __del__ stops the pipeline.
        self._runner = threading.Thread(target=_run_pipeline, args=(pipe, self.buffer, self._outcome),
                                        name="inferpath-results-runner", daemon=True)
        self._runner.start()

    @property
    def summary(self) -> RunSummary | None:
        return self._outcome.get("summary")  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Result]:
        return self

    def __next__(self) -> Result:
        item = self.buffer.get()
        if item is not None:
            return item
        if not self.buffer.closed:
            self._runner.join()
        error = self._outcome.pop("error", None)
        if error is not None:
            raise error  # type: ignore[misc]
        raise StopIteration

    def close(self, reason: str = "results consumer stopped") -> None:
        """Stop the pipeline (frames in flight still reach the other sinks) and wait for it."""
        if self._runner.is_alive():
            self.pipe.stop(reason)
        self.buffer.close()
        self._runner.join()

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a loop left by ``break``: the iterator is dropped at once (CPython)
        try:
            if self._runner.is_alive():
                self.close()
        except Exception:
            pass


class CallbackRunner:
    """``pipe.on_result(fn)``: calls ``fn(result)`` for each result in a thread of its own, so a
    slow callback is a slow consumer, never a slow sink stage. An exception from ``fn`` stops the
    pipeline cleanly and is raised again by ``run()``."""

    def __init__(self, pipe: Pipeline, callback: Callable[[Result], object], images: bool = False,
                 live_buffer: int = 1) -> None:
        self.pipe = pipe
        self.callback = callback
        self.buffer = _buffer_for(pipe, images, live_buffer)
        self.error: BaseException | None = None
        self.calls = 0
        self._thread: threading.Thread | None = None

    def start(self, metrics: object) -> None:  # exporter protocol: before the stages start
        self._thread = threading.Thread(target=self._loop, name="inferpath-on-result", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self.buffer.get()
            if item is None:
                return
            try:
                self.callback(item)
                self.calls += 1
            except Exception as exc:
                self.error = exc
                log.error("on_result callback raised %s: %s; stopping", type(exc).__name__, exc)
                self.pipe.stop("on_result callback raised")
                self.buffer.close()
                return

    def stop(self) -> None:  # exporter protocol: after every sink has closed
        self.buffer.finish()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


__all__ = ["Result", "ResultBuffer", "ResultSink", "ResultStream", "CallbackRunner", "SLOW_CONSUMER"]
