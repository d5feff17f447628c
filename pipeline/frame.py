"""Frames and detections: the two objects every stage passes on.

A :class:`Frame` is one captured image with its identity (``source_id``, ``seq``), its stream
time (``pts``), the monotonic time it was grabbed (``captured_ns``) and, per stage, when the stage
took it and when it let it go. Every latency Inferpath reports is a difference of these stamps,
so any figure can be traced back to one frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.model import class_label


@dataclass(frozen=True)
class Detections:
    """Columnar detections for one frame: ``xyxy`` [N,4] float32, ``confidence`` [N], ``class_id`` [N],
    and, once a tracker has seen them, ``tracker_id`` [N] (int, -1 for a detection not in a confirmed track)."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must be [N, 4], got {self.xyxy.shape}")
        if self.confidence.shape != (n,) or self.class_id.shape != (n,):
            raise ValueError(
                f"confidence {self.confidence.shape} and class_id {self.class_id.shape} must be [{n}]"
            )
        if self.tracker_id is not None and self.tracker_id.shape != (n,):
            raise ValueError(f"tracker_id {self.tracker_id.shape} must be [{n}]")

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        """Select rows by mask, index array or slice; returns a new object."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        tid = self.tracker_id[index] if self.tracker_id is not None else None
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index], tid)

    def to_records(self, names: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
        """One dict per detection, as JSON lines write them (box rounded to 0.01 px); tracked
        detections also carry ``track_id`` (null for one not in a confirmed track yet)."""
        out = []
        for box, score, cls in zip(self.xyxy.tolist(), self.confidence.tolist(), self.class_id.tolist()):
            out.append(
                {
                    "class_id": int(cls),
                    "class_name": class_label(names, cls),
                    "score": round(float(score), 4),
                    "box": [round(v, 2) for v in box],
                }
            )
        if self.tracker_id is not None:
            for rec, tid in zip(out, self.tracker_id.tolist()):
                rec["track_id"] = int(tid) if tid >= 0 else None
        return out


@dataclass(slots=True, eq=False)
class Frame:
    """One captured image on its way through the stages."""

    source_id: str
    seq: int  # per source, from 0, never reused
    pts: float  # stream time in seconds
    captured_ns: int  # time.monotonic_ns() when grabbed
    image: np.ndarray  # BGR uint8, as decoded
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)  # stage -> (taken_ns, done_ns)
    tensor: np.ndarray | None = None  # the model input for this frame (no batch dim)
    letterbox: Any = None  # pipeline.preprocess.Letterbox
    outputs: list[np.ndarray] | None = None  # raw model outputs for this frame (batch dim kept, size 1)
    keep_outputs: bool = False  # sampled by the canary: the raw outputs stay on to the sinks (pipeline/canary.py)
    detections: Detections | None = None
    batch_size: int = 0  # size of the inference batch it ran in
    latency_ms: float | None = None  # capture to sink, set when the result reaches the sinks
    tracking: Any = None  # pipeline.tracking.FrameTracking: trails, counts and events (tracking on)

    def age_ms(self, now_ns: int | None = None) -> float:
        """Milliseconds since capture."""
        return ((now_ns or time.monotonic_ns()) - self.captured_ns) / 1e6
