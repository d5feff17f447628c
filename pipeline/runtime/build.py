"""Building a local run from its plan: the stages and the queues between them (sized and given
their policy by the plan's :class:`~pipeline.policy.PathPolicy`), and the warm-up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.base import Backend
from pipeline.errors import InferpathError
from pipeline.policy import LatencyBudget
from pipeline.queues import FrameQueue, QueueGroup
from pipeline.sinks import Sink
from pipeline.stages import (
    InferenceStage,
    PostprocessStage,
    PreprocessStage,
    ReaderStage,
    SinkStage,
    Stage,
    StageContext,
    count_evictions,
    inference_error,
)

if TYPE_CHECKING:
    from pipeline.runtime.plan import Plan, StreamPlan
    from pipeline.runtime.state import RunState

log = logging.getLogger(__name__)


@dataclass
class StageGraph:
    """The built stages, by role, and every queue between them (for the metrics exporters)."""

    readers: dict[str, ReaderStage]  # by source id
    inference: InferenceStage
    sink: SinkStage
    stages: list[Stage]  # all, in start order
    queues: list[FrameQueue] = field(default_factory=list)
    postprocess: PostprocessStage | None = None
    ctx: StageContext | None = None
    group: QueueGroup | None = None
    on_drop: Callable[[object, str], None] | None = None
    preprocess: dict[str, PreprocessStage] = field(default_factory=dict)  # by source id


def build_stream(graph: StageGraph, plan: Plan, stream: StreamPlan,
                 opened: bool) -> tuple[ReaderStage, PreprocessStage | None]:
    """One stream's own stages and queues: its reader, its preprocess, its queue in the inference
    stage's group (added to ``graph``; nothing starts). The streams share nothing before the batcher.
    A stream whose policy preprocesses when taken (:func:`~pipeline.policy.preprocess_when_taken`)
    has no preprocess thread: its reader puts frames straight on its inference queue (None for it)."""
    src, policy = stream.source, stream.policy
    infer_q = graph.group.add(src.id, "inference", policy.inference_queue_size, policy.queue_policy, graph.on_drop,
                              weight=policy.weight)
    pre = None
    if policy.preprocess_at_take:
        read_q = infer_q
    else:
        read_q = FrameQueue("preprocess", policy.queue_size, policy.queue_policy, graph.on_drop)
        pre = PreprocessStage(graph.ctx, src.id, plan.spec, read_q, infer_q)
        graph.preprocess[src.id] = pre
        graph.queues.append(read_q)
    reader = ReaderStage(graph.ctx, src, read_q, opened=opened, max_frames=stream.config.max_frames, stop=stream.stop)
    graph.readers[src.id] = reader
    graph.queues.append(infer_q)
    return reader, pre


def build_stages(plan: Plan, state: RunState, sinks: dict[str, list[Sink]], opened: set[str]) -> StageGraph:
    """Every stage of a local run of ``plan``, wired by its queues (sized and given their policy by
    the plan's :class:`~pipeline.policy.PathPolicy`); ``sinks``: each source's. Nothing starts."""
    inf = plan.inference
    path = inf.path
    ctx = StageContext(state.metrics, LatencyBudget.for_policies(path.streams.values()), state.stop_reading,
                       state.abort, state.errors, state.lock, state.frame_hooks, serving=plan.serving)
    on_drop = count_evictions(state.metrics)
    group = QueueGroup()
    ids = [s.id for s in plan.streams]
    post_q = FrameQueue("postprocess", path.shared_queue_size, path.shared_queue_policy, on_drop)
    sink_q = FrameQueue("sink", path.shared_queue_size, path.shared_queue_policy, on_drop)
    graph = StageGraph({}, None, None, [], [], None, ctx, group, on_drop)  # type: ignore[arg-type]
    for stream in plan.streams:
        graph.stages += [st for st in build_stream(graph, plan, stream, stream.id in opened) if st is not None]
    graph.queues += [post_q, sink_q]
    graph.inference = InferenceStage(ctx, inf.backend, group, post_q, ids, path.max_batch,
                                     path.batch_timeout_s * 1000, warm_up=lambda: warm_up_plan(plan, ctx.budget),
                                     model=plan.model_path.name, workers=inf.workers,
                                     side_backend=inf.side_backend, spec=plan.spec)
    graph.sink = SinkStage(ctx, sink_q, sinks, plan.names, state.end_stream, plan.tracking)
    graph.postprocess = PostprocessStage(ctx, inf.decode, post_q, sink_q, ids)
    graph.stages += [graph.inference, graph.postprocess, graph.sink]
    return graph


def warm_up_plan(plan: Plan, budget: LatencyBudget) -> None:
    """Warm the backend up, in the inference thread (see InferenceStage), and warn when the
    tightest budget is below one inference call."""
    inf = plan.inference
    w, h = plan.spec.input_size
    item_shape = (h, w, 3) if plan.spec.layout == "NHWC" else (3, h, w)
    full = any(p.live or p.budget_ms is not None for p in inf.path.streams.values())
    infer_ms = warm_up(inf.backend, item_shape, inf.path.max_batch, plan.model_path.name, full)
    if inf.side_backend is not None:
        warm_up(inf.side_backend, item_shape, inf.path.max_batch, plan.model_path.name, full)
    tightest = budget.tightest_ms
    if tightest is not None and tightest < infer_ms:
        log.warning("latency budget %g ms is below the time of one inference call (%.1f ms here): "
                    "most or all frames will be dropped as late", tightest, infer_ms)


def warm_up(backend: Backend, item_shape: tuple[int, ...], max_batch: int, model: str, full: bool = True) -> float:
    """Inference before the frames flow, which also shows that the model runs before any other
    stage starts. ``full`` (a live run): one call per batch size (1 and ``max_batch``), since the
    first call at a size allocates and tunes and would otherwise count against the first frames'
    budget, and a second, timed call at batch 1. Otherwise (a batch job, where no frame is ever
    late) one call at batch 1: a warm-up is time the job waits. Returns the timed call's ms (0
    when not ``full``)."""
    info = backend.inputs[0]
    dims = [d if isinstance(d, int) else s for d, s in zip(info.shape[1:], item_shape)]
    infer_ms = 0.0
    for b in sorted({1, max_batch}) if full else [1]:
        batch = np.zeros((b, *dims), info.dtype)
        try:
            backend.infer(batch)
            if b == 1 and full:
                t0 = time.monotonic()
                backend.infer(batch)  # a second, warm call: what one frame costs
                infer_ms = (time.monotonic() - t0) * 1000
        except InferpathError:
            raise
        except Exception as exc:
            raise inference_error(model, batch, exc) from None
    return infer_ms
