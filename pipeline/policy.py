"""The drop policy, in one place: what each stream may lose, and when a frame is too late.

Each source gets one :class:`StreamPolicy`, built once when the pipeline is built:

- the full-queue policy between its stages (``block`` for files: nothing is lost; ``drop_oldest``
  for live sources: the newest frame wins) and the queue sizes that go with it;
- its latency budget (``sources[].latency_budget_ms``, else ``pipeline.latency_budget_ms`` for a
  live source, else none: a file's frames are all processed);
- its weight (``sources[].weight``): its share of the inference calls when the streams together
  offer more frames than inference takes (the batcher's :class:`~pipeline.queues.QueueGroup`).

:class:`LatencyBudget` is the late check every stage makes against those budgets, and
:func:`paced_frame_missed` / :func:`count_skipped` are the rule and the accounting for a file
played ``realtime``, which skips frames whose time has passed, like a camera. The queues
(:mod:`pipeline.queues`) only carry out the policy they are given (wait, or evict the oldest
frame and report it); every drop is counted with its reason (:func:`late_reason`).

The effective batch size (:func:`effective_max_batch`) lives here too: a live stream's
inference queue holds up to that many frames so an overloaded stream can batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipeline.metrics import STAGES

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig, SourceConfig
    from pipeline.frame import Frame
    from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

Policy = Literal["block", "drop_oldest"]
LIVE_QUEUE_SIZE = 1  # live streams: the newest frame waits alone between two stages; an older one is evicted
# Stages whose processing time the budget estimates, in path order (capture is before the budget
# clock's first estimate: the reader checks only the actual age of a frame stamped with the camera's
# clock, LatencyBudget.late_on_arrival; queue is waiting, not processing).
BUDGET_STAGES = tuple(s for s in STAGES if s not in ("capture", "queue"))


def ewma(old: float, new: float, alpha: float) -> float:
    """A running estimate: ``new`` when there was none (0), else moved ``alpha`` of the way to it."""
    return new if old == 0.0 else old + alpha * (new - old)


def late_reason(stage: str) -> str:
    """The drop reason of a frame found too late at ``stage``."""
    return f"late@{stage}"


def effective_max_batch(requested: int, backend_max: int) -> int:
    """Frames per inference call: what the config asks, within what the backend takes (>= 1)."""
    return max(1, min(requested, backend_max))


def profile_opt_batch(live: bool, max_batch: int) -> int:
    """The batch a GPU engine's optimization profile is tuned for: 1 when any stream is live (a
    live stream never waits for a batch to fill, so most calls carry one frame), else the max
    batch (a file job keeps the batches full)."""
    return 1 if live else max(1, max_batch)


@dataclass(frozen=True)
class StreamPolicy:
    """What one stream may lose: queue policy and sizes, and its latency budget."""

    source_id: str
    live: bool
    queue_policy: Policy
    queue_size: int  # the queues between reader, preprocess and inference
    inference_queue_size: int  # live: the newest max_batch frames wait, so an overloaded stream batches
    budget_ms: float | None  # None: no frame is ever late
    weight: float = 1.0  # its share of inference under contention: weight / sum(weights) (QueueGroup)
    # letterbox + normalize when the batcher takes the frame, not in a thread of the stream's own
    # before it waits (see :func:`preprocess_when_taken`)
    preprocess_at_take: bool = False

    @property
    def drops_allowed(self) -> bool:
        """True for a live stream: frames may be dropped rather than make it fall behind."""
        return self.queue_policy == "drop_oldest"

    @classmethod
    def for_source(cls, source_id: str, live: bool, scfg: SourceConfig, pipe: PipelineConfig,
                   max_batch: int, on_cpu: bool = False) -> StreamPolicy:
        """The policy of one source: ``queue_policy: auto`` picks ``drop_oldest`` for a live
        source and ``block`` for a file; ``max_batch`` is ``backend.max_batch``; ``on_cpu``:
        inference runs on the CPU (``BackendConfig.on_cpu``)."""
        policy: Policy = scfg.queue_policy if scfg.queue_policy != "auto" else ("drop_oldest" if live else "block")
        if policy == "drop_oldest":
            size, infer_size = LIVE_QUEUE_SIZE, max(LIVE_QUEUE_SIZE, max_batch)
        else:
            size = infer_size = pipe.queue_size
        budget = scfg.latency_budget_ms
        if budget is None:
            budget = pipe.latency_budget_ms if live else None
        return cls(source_id, live, policy, size, infer_size, budget, scfg.weight,
                   preprocess_when_taken(policy, on_cpu))


def preprocess_when_taken(policy: Policy, on_cpu: bool) -> bool:
    """Whether a stream's frames are letterboxed and normalized when the batcher takes them (in
    the inference worker) rather than by a thread of the stream's own before they wait for it.

    Only for a stream that may drop frames (``drop_oldest``) on a CPU backend. Its frames wait for
    the batcher in a queue that keeps the newest, so under overload most are evicted there; made
    ready beforehand, each evicted frame has cost its letterbox and normalization (0.6 ms of CPU
    at 768x576 on the 2-core machine: docs/bench/service.md) for nothing, and on a CPU backend
    that time is taken from inference, which is what the streams are short of. Preprocessed when
    taken, only the frames inferred pay for it. On a GPU the stream's own thread overlaps the
    device's calls, which is worth more; a stream that blocks (a file) never evicts, and keeps its
    thread so preprocessing overlaps inference."""
    return policy == "drop_oldest" and on_cpu


@dataclass(frozen=True)
class PathPolicy:
    """The whole path's policy: each stream's :class:`StreamPolicy`, and what the stages shared
    by every stream do with them. Built once by the plan; the stages and queues only ask it.

    - The postprocess and sink queues (after the batcher, shared by every stream) ``block``:
      a frame that is there has already cost its inference, and a live stream's late frames are
      dropped by the budget at each stage, not by a full queue.
    - ``max_batch`` is the effective one (:func:`effective_max_batch`: the config within what
      the backend takes), applied here once.
    - The batcher waits up to ``batch_timeout_s`` for a batch to fill, unless every stream may
      drop frames (:func:`live_batching`): a live batch is what waits now, never more.
    """

    streams: Mapping[str, StreamPolicy]
    max_batch: int
    batch_timeout_s: float
    shared_queue_size: int
    shared_queue_policy: Policy = "block"

    @classmethod
    def build(cls, streams: Iterable[StreamPolicy], requested_batch: int, backend_batch: int,
              batch_timeout_ms: float, queue_size: int) -> PathPolicy:
        max_batch = effective_max_batch(requested_batch, backend_batch)
        if requested_batch > max_batch:
            log.info("backend takes at most %d frame(s) per call (fixed batch); running one call per frame",
                     max_batch)
        return cls({p.source_id: p for p in streams}, max_batch, batch_timeout_ms / 1000.0, queue_size)


def live_batching(queue_policies: Iterable[Policy]) -> bool:
    """Whether a batcher fed by queues of these policies never waits for a batch to fill: when
    every one may drop frames (``drop_oldest``), a frame that waits would only be evicted by a
    newer one, so the batch is what waits now."""
    policies = list(queue_policies)
    return bool(policies) and all(p == "drop_oldest" for p in policies)


def budget_batch_cap(max_batch: int, live: bool, tightest_ms: float | None, after_ms: float,
                     frame_ms: float, calls: int = 1) -> int:
    """Frames per inference call: ``max_batch``, capped by the tightest budget on live streams. A
    frame waits about one call divided by the ``calls`` in flight, then rides a call: ``k`` frames
    fit when ``k`` times the time per frame (``frame_ms``), times ``1 + 1 / calls``, plus the
    stages after inference (``after_ms``), stays within the budget."""
    if not (live and tightest_ms is not None and frame_ms > 0):
        return max_batch
    room = tightest_ms - after_ms
    return max(1, min(max_batch, int(room / (frame_ms * (1 + 1 / calls)))))


def consumer_queue(live: bool, live_buffer: int, batch_buffer: int) -> tuple[Policy, int]:
    """The queue between the sink stage and a results consumer (``Pipeline.results()``,
    ``on_result``) for one source: a live source never waits for a slow consumer (the newest
    ``live_buffer`` results wait, an older one is evicted: a ``slow_consumer`` event); a batch
    source waits for room (``batch_buffer`` results), so backpressure reaches the reader."""
    return ("drop_oldest", max(1, live_buffer)) if live else ("block", max(1, batch_buffer))


def older_than_budget(captured_ns: int, budget_ms: float | None, now_ns: int | None = None) -> bool:
    """The last check on the way out: a result older than its stream's budget is never emitted."""
    if budget_ms is None:
        return False
    return ((now_ns or time.monotonic_ns()) - captured_ns) / 1e6 > budget_ms


class LatencyBudget:
    """Decides, at each stage, whether a frame can still finish within its stream's budget.

    It keeps a running estimate (EWMA) of each stage's processing time; a frame whose age plus
    the estimated cost of the rest of the path exceeds the budget is dropped at that stage,
    before it costs more work. The sink stage checks the actual age, so nothing older than the
    budget is ever emitted. An estimate is only refreshed by frames that get through, so when a
    stage has let nothing through for ``probe_s``, the next frame goes on as a probe (the sink
    check still guards the output): a stale estimate can never starve a stream forever.
    """

    def __init__(self, budgets_ms: dict[str, float | None], alpha: float = 0.2, probe_s: float = 0.5) -> None:
        self.budgets_ms = budgets_ms
        self.alpha = alpha
        self.probe_ns = int(probe_s * 1e9)
        self.estimate_ms = {stage: 0.0 for stage in BUDGET_STAGES}
        self._last_pass: dict[tuple[str, str], int] = {}

    @classmethod
    def for_policies(cls, policies: Iterable[StreamPolicy]) -> LatencyBudget:
        return cls({p.source_id: p.budget_ms for p in policies})

    @property
    def tightest_ms(self) -> float | None:
        """The smallest budget of any stream (None when no stream has one)."""
        budgets = [b for b in self.budgets_ms.values() if b is not None]
        return min(budgets) if budgets else None

    def forget(self, source_id: str) -> None:
        """A stream has left (a service): its budget and probe times go."""
        self.budgets_ms.pop(source_id, None)
        for key in [k for k in list(self._last_pass) if k[0] == source_id]:
            self._last_pass.pop(key, None)

    def observe(self, stage: str, ms: float) -> None:
        self.estimate_ms[stage] = ewma(self.estimate_ms[stage], ms, self.alpha)

    def remaining_ms(self, stage: str) -> float:
        """Estimated processing time from the start of ``stage`` to the end of the path."""
        i = BUDGET_STAGES.index(stage)
        return sum(self.estimate_ms[s] for s in BUDGET_STAGES[i:])

    def late_on_arrival(self, frame: Frame, now_ns: int | None = None) -> bool:
        """A frame stamped with the camera's clock that reached our reader already older than its
        budget (the network and the decoder took it all): it is dropped there (``late@network``),
        before it takes a place in a queue that a frame still in time could have had. Only the
        actual age is checked: what the stages ahead will cost is theirs to judge."""
        return older_than_budget(frame.captured_ns, self.budgets_ms.get(frame.source_id), now_ns)

    def late(self, frame: Frame, stage: str, now_ns: int | None = None) -> bool:
        budget = self.budgets_ms.get(frame.source_id)
        if budget is None:
            return False
        now_ns = now_ns or time.monotonic_ns()
        if stage == "sink":  # the last check is on the actual age: never emit an older frame
            return older_than_budget(frame.captured_ns, budget, now_ns)
        age = frame.age_ms(now_ns)
        key = (frame.source_id, stage)
        if age + self.remaining_ms(stage) > budget:
            if age > budget or now_ns - self._last_pass.get(key, 0) < self.probe_ns:
                return True
        self._last_pass[key] = now_ns
        return False


class SideBySide:
    """When a live pipeline runs its inference calls side by side (``backend.onnxruntime.workers``).

    One call on every core gives the shortest time per frame; ``workers`` calls with the cores
    shared out give the most frames per second: on the 2-core CPU two 1-thread calls do 42-47
    frames/s against 37-40 for one 2-thread call, each call taking about twice as long
    (docs/bench/outputs.md). So a live pipeline runs one call at a time while it keeps up.

    - **Side by side** once inference loses frames: over the last ``horizon_s``, at least
      ``min_lost`` of the frames offered to it, and ``lose`` of them, were evicted by newer ones
      or were too late. A hard overload loses that many in its first window, a slight one (which
      would otherwise lose a few percent for ever) within the horizon; a call that stalls now and
      then at 1x loses one frame, which alone is not worth the longer calls.
    - **Back** when the frames offered fall below ``down`` of what one call at a time delivers,
      or when the calls side by side deliver less than ``slower`` of it on this machine (a near
      tie is noise). That verdict waits for ``judge_windows`` windows side by side (the first,
      which overlaps the last call on every core, is not measured) and is tried again after
      ``retry_s``, since a noisy neighbour can spoil a measurement.

    Both rates are running estimates over the windows of ``window_s``.
    """

    def __init__(self, workers: int, lose: float = 0.02, min_lost: int = 3, down: float = 0.8,
                 slower: float = 0.9, window_s: float = 0.5, horizon_s: float = 4.0, judge_windows: int = 4,
                 retry_s: float = 30.0) -> None:
        self.workers = workers
        self.lose = lose
        self.min_lost = min_lost
        self.down = down
        self.slower = slower
        self.window_s = window_s
        self.judge_windows = judge_windows
        self.retry_s = retry_s
        self._recent: deque[tuple[int, int]] = deque(maxlen=max(1, round(horizon_s / window_s)))  # (offered, lost)
        self._side_seen = 0.0  # when the calls side by side last ran (their rate is that old)
        self._side_windows = 0  # windows side by side since they last went on
        self.on = False  # calls side by side now
        self.switches = 0
        self.offered_fps = 0.0  # frames offered to inference per second, last window
        self.one_fps = 0.0  # frames/s one call at a time delivers while busy (0: not measured yet)
        self.side_fps = 0.0  # frames/s the calls side by side deliver while busy (0: not measured yet)
        self._last: tuple[float, int, int, tuple[int, float], tuple[int, float]] | None = None

    def update(self, now_s: float, offered: int, lost: int, one: tuple[int, float],
               side: tuple[int, float]) -> bool:
        """Whether to run calls side by side now. Every count is since the start: ``offered``:
        frames offered to inference; ``lost``: of them, evicted or too late; ``one`` / ``side``:
        (frames, seconds busy summed over the calls) of calls one at a time / side by side."""
        if self._last is None:
            self._last = (now_s, offered, lost, one, side)
            return self.on
        t0, offered0, lost0, one0, side0 = self._last
        if now_s - t0 < self.window_s:
            return self.on
        self._last = (now_s, offered, lost, one, side)
        self.offered_fps = (offered - offered0) / (now_s - t0)
        if one[1] > one0[1]:
            self.one_fps = ewma(self.one_fps, (one[0] - one0[0]) / (one[1] - one0[1]), 0.5)
        if side[1] > side0[1]:
            self._side_seen = now_s
            if self.on and self._side_windows:  # not the first window: it overlaps the last call on every core
                # each call's own rate, times the calls in flight
                self.side_fps = ewma(self.side_fps, self.workers * (side[0] - side0[0]) / (side[1] - side0[1]), 0.5)
            self._side_windows += self.on
        if self.side_fps and not self.on and now_s - self._side_seen > self.retry_s:
            self.side_fps = 0.0  # an old verdict: measure again
        judged = not self.on or self._side_windows > self.judge_windows
        side_pays = not (judged and self.side_fps and self.side_fps < self.slower * self.one_fps)
        self._recent.append((offered - offered0, lost - lost0))
        if self.on:
            want = side_pays and not (self.one_fps and self.offered_fps < self.down * self.one_fps)
        else:
            recent_lost = sum(n for _, n in self._recent)
            want = side_pays and recent_lost >= max(self.min_lost, self.lose * sum(n for n, _ in self._recent))
        if want != self.on:
            self.on = want
            self.switches += 1
            self._recent.clear()  # losses from before the switch say nothing about the new state
            if want:
                self.side_fps, self._side_windows = 0.0, 0  # measured afresh each time
            log.debug("inference: %s (%.1f frames/s offered; one call at a time %.1f/s, side by side %.1f/s)",
                      f"{self.workers} calls side by side" if want else "one call at a time", self.offered_fps,
                      self.one_fps, self.side_fps)
        return self.on


def paced_frame_missed(now_ns: int, due_ns: int, period_ns: float) -> bool:
    """A file played ``realtime`` skips a frame (without decoding it) when the reader is more
    than one frame period past its due time: a camera would not have waited either."""
    return now_ns - due_ns > period_ns


def count_skipped(metrics: Metrics, source_id: str, n: int) -> None:
    """Frames a paced file skipped were read and lost at capture: each counts in and as late."""
    for _ in range(n):
        metrics.frame_in(source_id)
        metrics.drop(source_id, late_reason("capture"))


def budget_note(policies: Iterable[StreamPolicy]) -> str:
    """The budget part of the run's first log line."""
    policies = list(policies)
    budgets = sorted({p.budget_ms for p in policies if p.budget_ms is not None})
    if budgets:
        return f"latency budget {', '.join(f'{b:g}' for b in budgets)} ms"
    if any(p.live for p in policies):
        return ("no latency budget (live sources: only the newest frame waits between stages; "
                "older ones are dropped as queue_full)")
    return "no latency budget (every frame is processed)"


def warn_ignored_budget(pipe: PipelineConfig, files: list[str]) -> None:
    """``pipeline.latency_budget_ms`` is for live sources; say once that ``files`` (the ids of
    file sources without a budget of their own) ignore it."""
    if pipe.latency_budget_ms is None or not files:
        return
    log.warning("pipeline.latency_budget_ms is ignored for file sources (%s): every frame of a file is "
                "processed; play it as a camera with realtime: true, or set sources[].latency_budget_ms",
                ", ".join(files))
