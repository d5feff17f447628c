"""Building a run: the model and backend, the per-source sinks, the stages and the queues
between them (sized and given their policy by :mod:`pipeline.policy`), and the warm-up."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.base import Backend, BackendOptions, create_backend
from pipeline.config import Config, SourceConfig
from pipeline.errors import InferpathError
from pipeline.model import ModelSpec, bundled_model_path, check_model_file, load_spec
from pipeline.postprocess import choose_output
from pipeline.queues import FrameQueue, QueueGroup
from pipeline.sinks import Sink, SinkContext, create_sinks
from pipeline.sources.base import Source
from pipeline.stages import (
    DecodeSettings,
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
    from pipeline.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


def resolve_model(cfg: Config) -> tuple[Path, ModelSpec]:
    """The model file and its spec (bundled model when ``model.path`` is unset)."""
    path = Path(cfg.model.path).expanduser() if cfg.model.path else bundled_model_path()
    check_model_file(path)
    spec = load_spec(path, Path(cfg.model.spec) if cfg.model.spec else None)
    return path, spec


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


@dataclass
class StageGraph:
    """The built stages, by role, and every queue between them (for the metrics exporters)."""

    readers: dict[str, ReaderStage]  # by source id
    inference: InferenceStage
    sink: SinkStage
    stages: list[Stage]  # all, in start order
    queues: list[FrameQueue] = field(default_factory=list)


def make_sinks(pipe: Pipeline, src: Source, scfg: SourceConfig, ctx: SinkContext) -> list[Sink]:
    """The registered sinks that are on, then those of ``pipe.add_sink_factory``; the files they
    write are listed in ``pipe.outputs``."""
    sinks = create_sinks(src, scfg, ctx)
    pipe.outputs[src.id] = [str(s.path) for s in sinks if s.path is not None]
    return sinks + [factory(src, scfg) for factory in pipe._sink_factories]


def build_stages(pipe: Pipeline) -> StageGraph:
    """Every stage of ``pipe``, wired by its queues; fills ``pipe.sinks``. Nothing starts."""
    cfg = pipe.cfg
    ctx = StageContext(pipe.metrics, pipe.budget, pipe.stop_reading, pipe.abort, pipe.errors, pipe._lock,
                       pipe._frame_hooks)
    sink_ctx = SinkContext(cfg.output, pipe.names, pipe.stop, pipe.metrics)
    on_drop = count_evictions(pipe.metrics)
    group = QueueGroup()
    ids = [s.id for s in pipe.sources]
    post_q = FrameQueue("postprocess", cfg.pipeline.queue_size, "block", on_drop)
    sink_q = FrameQueue("sink", cfg.pipeline.queue_size, "block", on_drop)
    stages: list[Stage] = []
    queues: list[FrameQueue] = []
    readers: dict[str, ReaderStage] = {}
    for src, scfg in zip(pipe.sources, pipe.source_cfgs):
        policy = pipe.policies[src.id]
        read_q = FrameQueue("preprocess", policy.queue_size, policy.queue_policy, on_drop)
        infer_q = group.add(src.id, "inference", policy.inference_queue_size, policy.queue_policy, on_drop)
        queues += [read_q, infer_q]
        pipe.sinks[src.id] = make_sinks(pipe, src, scfg, sink_ctx)
        readers[src.id] = ReaderStage(ctx, src, read_q, opened=src.id in pipe._opened, max_frames=scfg.max_frames)
        stages.append(readers[src.id])
        stages.append(PreprocessStage(ctx, src.id, pipe.spec, read_q, infer_q))
    queues += [post_q, sink_q]
    inference = InferenceStage(ctx, pipe.backend, group, post_q, ids, cfg.backend.max_batch,
                               cfg.backend.batch_timeout_ms, warm_up=pipe._warm_up, model=pipe.model_path.name,
                               workers=pipe.workers, side_backend=pipe.side_backend)
    m = cfg.model
    settings = DecodeSettings(pipe.fmt, m.conf_threshold, m.iou_threshold, m.max_detections,
                              tuple(m.classes) if m.classes else None, pipe.output_index)
    sink = SinkStage(ctx, sink_q, pipe.sinks, pipe.names, pipe._on_end, pipe.tracking)
    stages += [inference, PostprocessStage(ctx, settings, post_q, sink_q, ids), sink]
    return StageGraph(readers, inference, sink, stages, queues)


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
