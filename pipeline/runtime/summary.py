"""The run's summary: per source counts, drops, latency; per stage percentiles. A public object:
the CLI, ``inferpath inspect``, the bench and the cluster driver read its fields."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.metrics import NETWORK, STAGES, Metrics, percentiles
from pipeline.tables import sources_table, stage_table

if TYPE_CHECKING:
    from pipeline.runtime.build import StageGraph
    from pipeline.runtime.pipeline import Pipeline
    from pipeline.sources.base import Source


@dataclass
class SourceSummary:
    id: str
    uri: str
    live: bool
    frames_in: int
    frames_out: int
    drops: dict[str, int]
    events: dict[str, int]
    detections: dict[str, int]
    fps: float
    stages_ms: dict[str, list[float]]  # p50, p95, p99 per stage, and "e2e"
    claimed_frames: int = 0
    max_frames: int | None = None
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    never_connected: bool = False  # a live source that never delivered a frame and was down at the end
    source_failed: bool = False  # the error is the source's own (it could not be opened or read)
    tracking: dict | None = None  # tracks, line crossings, zone occupancy (tracking on)

    @property
    def e2e_ms(self) -> list[float]:
        """End-to-end p50, p95, p99 (NaN when no frame was delivered)."""
        return self.stages_ms.get("e2e", [float("nan")] * 3)


@dataclass
class RunSummary:
    sources: list[SourceSummary]
    wall_s: float
    model: str
    backend: str
    batch_sizes: dict[int, int]
    errors: list[tuple[str, str]]
    stopped_by: str | None = None
    workers: list[dict] = field(default_factory=list)  # cluster runs: one entry per Ray worker
    # The whole run, per stage (STAGES, then "e2e"; a cluster run adds "delivery"): [p50, p95, p99]
    # in ms; a stage no frame passed is left out.
    stages_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(s.frames_out for s in self.sources)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def table(self) -> str:
        """The human summary: per source counts, fps, latency, drops; per stage p50/p99."""
        lines = [f"model {self.model} on {self.backend}; {self.frames} frames in {self.wall_s:.1f} s "
                 f"({self.fps:.1f} fps)"]
        if self.batch_sizes:
            lines.append("batch sizes: " + ", ".join(f"{k}x{v}" for k, v in sorted(self.batch_sizes.items())))
        lines += ["", *sources_table(self.sources).splitlines()]
        if self.stages_ms:  # no frame passed: no stage table
            lines += ["", *stage_table(self.stages_ms).splitlines()]
        for s in self.sources:
            if s.drops:
                lines.append(f"drops {s.id}: " + ", ".join(f"{k}={v}" for k, v in sorted(s.drops.items())))
            if s.events:
                lines.append(f"events {s.id}: " + ", ".join(f"{k}={v}" for k, v in sorted(s.events.items())))
        dets: dict[str, int] = {}
        for s in self.sources:
            for k, v in s.detections.items():
                dets[k] = dets.get(k, 0) + v
        if dets:
            top = sorted(dets.items(), key=lambda kv: -kv[1])
            lines.append("detections: " + ", ".join(f"{k} {v}" for k, v in top))
        for s in self.sources:
            if s.tracking:
                from pipeline.tracking.stream import summary_lines

                lines += summary_lines(s.id, s.tracking)
        for s in self.sources:
            if s.outputs:
                lines.append(f"outputs {s.id}: " + ", ".join(s.outputs))
        for w in self.workers:
            lines.append(f"worker {w['worker']} (node {w['node']}, pid {w['pid']}): {w['frames']} frames of "
                         f"{', '.join(w['streams'])}" + (f"; lost and replaced {w['restarts']}x" if w['restarts'] else ""))
        return "\n".join(lines)


def stage_percentiles_ms(metrics: Metrics, stages: Iterable[str], source: str | None = None,
                         skip_empty: bool = False) -> dict[str, list[float]]:
    """``{stage: [p50, p95, p99] ms}`` over the run (one source's frames, or all); with
    ``skip_empty``, stages no frame passed are left out (else their percentiles are NaN)."""
    rows = {stage: [v * 1000 for v in percentiles(metrics.stage_values(stage, source))] for stage in stages}
    return {k: v for k, v in rows.items() if not (skip_empty and np.isnan(v[0]))}


def account_in_flight(metrics: Metrics, failed: bool) -> None:
    """Frames read but neither delivered nor dropped (discarded by an abort or a failed stage)
    are counted as drops, so in = out + dropped holds for every source, always."""
    reason = "error" if failed else "shutdown"
    for sid, st in list(metrics.sources.items()):
        lost = st.frames_in - st.frames_out - sum(st.drops.values())
        if lost > 0:
            metrics.drop(sid, reason, lost)


def _source_error(pipe: Pipeline, graph: StageGraph, src: Source, frames_in: int,
                  wall_s: float) -> tuple[str | None, bool, bool]:
    """``(error, never_connected, source_failed)`` for one source at the end of the run."""
    eos = pipe._ended.get(src.id)
    reader = graph.readers.get(src.id)
    failed = reader is not None and reader.error is not None
    never = src.is_live and frames_in == 0 and src.down_at_end
    if eos is not None and eos.error:  # e.g. retries ran out
        return (f"never connected: {eos.error}" if never else eos.error), never, failed
    if never:
        why = "opened but delivered no frame" if src.ever_opened else "could not be opened"
        return f"never connected: {src.uri} {why} in {wall_s:.0f} s", True, True
    shared = [msg for stage, msg in pipe.errors if stage != "capture"]
    return (shared[0] if shared and eos is None else None), False, False


def summarize(pipe: Pipeline, graph: StageGraph, wall_s: float) -> RunSummary:
    """The summary of a finished local run (in-flight frames are counted as drops first)."""
    m = pipe.metrics
    account_in_flight(m, failed=bool(pipe.errors))
    out = []
    for src, scfg in zip(pipe.sources, pipe.source_cfgs):
        st = m.sources.get(src.id)
        error, never, failed = _source_error(pipe, graph, src, st.frames_in if st else 0, wall_s)
        stages_ms = {**stage_percentiles_ms(m, (NETWORK,), src.id, skip_empty=True),
                     **stage_percentiles_ms(m, (*STAGES, "e2e"), src.id)}
        span = ((st.last_ns - st.first_ns) / 1e9) if st and st.last_ns and st.first_ns else 0.0
        out.append(SourceSummary(
            id=src.id, uri=src.uri, live=src.is_live,
            frames_in=st.frames_in if st else 0, frames_out=st.frames_out if st else 0,
            drops=dict(st.drops) if st else {}, events=dict(st.events) if st else {},
            detections=dict(st.detections) if st else {},
            fps=(st.frames_out / span) if st and span > 0 else 0.0,
            stages_ms=stages_ms,
            claimed_frames=src.claimed_frames, max_frames=scfg.max_frames,
            error=error, outputs=pipe.outputs.get(src.id, []), never_connected=never, source_failed=failed,
            tracking=pipe.tracking.summary(src.id) if pipe.tracking is not None else None,
        ))
    return RunSummary(out, wall_s, pipe.model_path.name, pipe.backend.name, dict(m.batch_sizes),
                      list(pipe.errors), pipe.stopped_by,
                      stages_ms=stage_percentiles_ms(m, (NETWORK, *STAGES, "e2e"), skip_empty=True))
