"""The run's summary: per source counts, drops, latency; per stage percentiles. A public object:
the CLI, ``inferpath inspect``, the bench and the cluster driver read its fields. Every engine
builds it with :func:`summarize`, from the run's metrics and a :class:`StreamEnd` per stream."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.metrics import NETWORK, STAGES, Metrics, percentiles
from pipeline.tables import sources_table, stage_table


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
    canary: dict | None = None  # the FP32 canary (model.canary): frames, agreement, ... (see canary_summary)

    @property
    def e2e_ms(self) -> list[float]:
        """End-to-end p50, p95, p99 (NaN when no frame was delivered)."""
        return self.stages_ms.get("e2e", [float("nan")] * 3)

    def to_dict(self) -> dict:
        """The JSON form (``summary.json``'s ``sources[]``, a service's ``DELETE`` answer); NaN
        values are left for the writer to turn into null."""
        return {"id": self.id, "uri": self.uri, "live": self.live, "frames_in": self.frames_in,
                "frames_out": self.frames_out, "claimed_frames": self.claimed_frames, "drops": self.drops,
                "events": self.events, "detections": self.detections, "fps": round(self.fps, 2),
                "e2e_ms": {"p50": self.e2e_ms[0], "p95": self.e2e_ms[1], "p99": self.e2e_ms[2]},
                "error": self.error, "never_connected": self.never_connected, "outputs": self.outputs,
                **({"tracking": self.tracking} if self.tracking else {}),
                **({"canary": self.canary} if self.canary is not None else {})}


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
            c = s.canary
            if c is not None:
                agree = "n/a (no FP32 box yet)" if c["agreement"] is None else f"{c['agreement']:.3f} of {c['boxes']} boxes"
                lines.append(f"canary {s.id}: {c['frames']} sampled frames vs FP32, agreement {agree}"
                             + (f", {c['warnings']} warning(s)" if c["warnings"] else "")
                             + (f", {c['saved']} disagreeing frame(s) saved" if c["saved"] else ""))
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


def account_in_flight(metrics: Metrics, failed: bool, only: str | None = None) -> None:
    """Frames read but neither delivered nor dropped (discarded by an abort or a failed stage)
    are counted as drops, so in = out + dropped holds for every source (or ``only`` that one), always."""
    reason = "error" if failed else "shutdown"
    for sid, st in list(metrics.sources.items()):
        if only is not None and sid != only:
            continue
        lost = st.frames_in - st.frames_out - sum(st.drops.values())
        if lost > 0:
            metrics.drop(sid, reason, lost)


@dataclass
class StreamEnd:
    """What an engine knows of one stream at the end of a run, besides the run's metrics."""

    id: str
    uri: str
    live: bool
    claimed_frames: int = 0
    max_frames: int | None = None
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    never_connected: bool = False
    source_failed: bool = False
    tracking: dict | None = None
    fps: float | None = None  # None: frames delivered over the span from the first read to the last delivery
    canary: dict | None = None  # None: from the metrics (a cluster stream: its worker's final numbers)


def canary_summary(events: dict[str, int], gauges: dict[str, float]) -> dict | None:
    """``sources[].canary`` from a source's counted events and gauges (None when no canary watched
    it, :mod:`pipeline.canary`): ``agreement`` is the window's margin-agreement recall (0..1; null
    until the window holds an FP32 box), ``map50`` its pseudo-mAP, ``cpu_s`` the canary thread's
    CPU time on this source's samples."""
    if "canary_frames" not in events:
        return None
    return {"frames": events["canary_frames"], "agreement": gauges.get("canary_agreement"),
            "map50": gauges.get("canary_map50"), "boxes": int(gauges.get("canary_boxes", 0)),
            "warnings": events.get("canary_warnings", 0), "saved": events.get("canary_saved", 0),
            "dropped": events.get("canary_dropped", 0), "cpu_s": round(gauges.get("canary_cpu_s", 0.0), 3)}


def finite(value):
    """The same structure with NaN/inf as null: strict JSON parsers reject ``NaN``."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def source_summary(metrics: Metrics, end: StreamEnd) -> SourceSummary:
    """One stream's row of the summary, from the metrics and what its engine knows of it."""
    m = metrics
    st = m.snapshot(end.id) if end.id in m.sources else None
    span = ((st.last_ns - st.first_ns) / 1e9) if st and st.last_ns and st.first_ns else 0.0
    fps = end.fps if end.fps is not None else ((st.frames_out / span) if st and span > 0 else 0.0)
    return SourceSummary(
        id=end.id, uri=end.uri, live=end.live,
        frames_in=st.frames_in if st else 0, frames_out=st.frames_out if st else 0,
        drops=dict(st.drops) if st else {}, events=dict(st.events) if st else {},
        detections=dict(st.detections) if st else {}, fps=fps,
        stages_ms={**stage_percentiles_ms(m, (NETWORK,), end.id, skip_empty=True),
                   **stage_percentiles_ms(m, (*STAGES, "e2e"), end.id)},
        claimed_frames=end.claimed_frames, max_frames=end.max_frames, error=end.error, outputs=list(end.outputs),
        never_connected=end.never_connected, source_failed=end.source_failed, tracking=end.tracking,
        canary=end.canary if end.canary is not None else canary_summary(st.events, st.gauges) if st else None,
    )


def summarize(metrics: Metrics, streams: Iterable[StreamEnd], wall_s: float, model: str, backend: str,
              batch_sizes: dict[int, int], errors: list[tuple[str, str]], stopped_by: str | None,
              failed: bool, extra_stages: tuple[str, ...] = (), workers: list[dict] | None = None) -> RunSummary:
    """The summary of a finished run, for every engine. Frames neither delivered nor dropped are
    counted as drops first (``error`` when ``failed``, else ``shutdown``); ``extra_stages``: run-wide
    stages besides :data:`~pipeline.metrics.STAGES` and e2e (the cluster's ``delivery``)."""
    m = metrics
    account_in_flight(m, failed=failed)
    out = [source_summary(m, end) for end in streams]
    return RunSummary(out, wall_s, model, backend, dict(batch_sizes), list(errors), stopped_by,
                      workers=list(workers or []),
                      stages_ms=stage_percentiles_ms(m, (NETWORK, *STAGES, "e2e", *extra_stages), skip_empty=True))
