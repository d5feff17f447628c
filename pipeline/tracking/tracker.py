"""One stream's tracker: Roboflow's ``trackers`` (ByteTrack by default) fed with stream time.

The library's Kalman filter scales its transition and noise matrices by the time elapsed since
the previous update (``timestamp``, seconds, times ``frame_rate``) and ends lost tracks on a
budget in seconds, so a frame the pipeline dropped under its latency budget is a longer
prediction step, not a lost track. We give it each frame's stream time (``pts``: the capture
time for a live source, the frame's time in the file for a file), never the pipeline's clock.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.frame import Detections

INSTALL_HINT = "tracking: the tracker library is not installed; pip install 'inferpath[track]'"


def import_trackers():
    """The ``trackers`` module, or one ConfigError line saying what to install."""
    try:
        import supervision  # noqa: F401  (trackers' detection type)
        import trackers
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return trackers


def make_tracker(cfg: TrackingConfig, fps: float):
    """A fresh library tracker for one stream, from the ``tracking`` settings."""
    lib = import_trackers()
    common = dict(
        lost_track_buffer=max(1, round(cfg.lost_track_s * 30)),  # the library counts it in 30 fps frames
        frame_rate=fps,
        minimum_consecutive_frames=cfg.min_hits,
        minimum_iou_threshold=cfg.match_iou,
    )
    if cfg.tracker == "sort":
        return lib.SORTTracker(track_activation_threshold=cfg.activation_threshold, **common)
    if cfg.tracker == "ocsort":
        return lib.OCSORTTracker(high_conf_det_threshold=cfg.high_threshold, **common)
    return lib.ByteTrackTracker(track_activation_threshold=cfg.activation_threshold,
                                high_conf_det_threshold=cfg.high_threshold, **common)


class StreamTracker:
    """Assigns track ids (from 1; -1 = not in a confirmed track) to one stream's detections, in order."""

    def __init__(self, cfg: TrackingConfig, fps: float) -> None:
        import supervision as sv

        self._sv = sv
        self.fps = fps if fps and fps > 0 else 25.0
        self.tracker = make_tracker(cfg, self.fps)
        self.last_t: float | None = None

    def update(self, det: Detections, t: float) -> np.ndarray:
        """Track ids for ``det`` (same order), at stream time ``t`` seconds."""
        if self.last_t is not None and t <= self.last_t:  # a repeated or restarted clock: a tiny step
            t = self.last_t + 1e-6
        self.last_t = t
        n = len(det)
        svd = self._sv.Detections(
            xyxy=det.xyxy.astype(np.float32, copy=False), confidence=det.confidence.astype(np.float32, copy=False),
            class_id=det.class_id.astype(int, copy=False), data={"row": np.arange(n)})
        out = self.tracker.update(svd, timestamp=t)
        ids = np.full(n, -1, np.int64)
        if len(out):
            tid = np.asarray(out.tracker_id, np.int64)
            ids[np.asarray(out.data["row"])] = np.where(tid >= 0, tid + 1, -1)
        return ids

    def alive(self) -> set[int]:
        """Ids of the confirmed tracks the library still keeps (matched now or being predicted)."""
        return {t.tracker_id + 1 for t in self.tracker.tracks if t.tracker_id >= 0}

    @property
    def tracks_started(self) -> int:
        return int(getattr(self.tracker, "_next_track_id", 0))
