"""Input drift: per-frame image statistics compared with a reference profile of "normal" video.

A detector trained on daytime video degrades quietly when night falls, a lens fogs up or a
camera is knocked out of focus: nothing fails, the boxes just get worse. Three cheap statistics
of each frame catch the common cases:

- ``brightness``: mean of the gray image (0..255); falls at dusk, rises with glare.
- ``contrast``: standard deviation of the gray image; falls with fog, haze, a dirty lens.
- ``sharpness``: variance of the Laplacian of the gray image; falls when the image blurs.

All three are computed on a gray copy downscaled to :data:`STATS_WIDTH` pixels wide (well under
1 ms a frame), so ``sharpness`` is on that scale, not the camera's: profile and monitor use the
same one, so they compare.

``inferpath profile VIDEO`` writes a reference profile (JSON): per statistic, the mean and the
standard deviation over frames spread evenly through the video. :class:`DriftMonitor` keeps a
rolling window of the last ``window`` frames per source and computes the **drift score**::

    score = max over stats of |window_mean - ref_mean| / max(ref_std, floor)

a z-score-like number: "how many reference standard deviations the recent input has moved",
taken for the statistic that moved most. ``floor`` (see :func:`std_floor`) keeps a reference
with almost no variation (a static camera) from turning noise into drift. The score and the
window means are published as gauges (``drift_score``, ``brightness``, ``contrast``,
``sharpness``); one warning is logged when the score reaches the threshold, and one info line
when it falls back below ``RECOVER_RATIO`` times the threshold (hysteresis, so it does not flap).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipeline.errors import ConfigError, SourceError
from pipeline.videoio import opened_video, sample_frames, video_info

if TYPE_CHECKING:
    from pipeline.config import DriftConfig
    from pipeline.frame import Frame
    from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

STAT_NAMES = ("brightness", "contrast", "sharpness")
STATS_WIDTH = 160  # statistics are computed on a gray copy this many pixels wide
PROFILE_KIND = "inferpath.drift-profile"
PROFILE_VERSION = 1
RECOVER_RATIO = 0.7  # a drifting source recovers when its score falls below threshold * this
# Smallest standard deviation a score divides by, per stat: an absolute floor and a fraction of
# the reference mean. A static scene has almost no frame-to-frame variation; without a floor a
# one-level change in brightness would read as "drift".
ABS_FLOOR = {"brightness": 2.0, "contrast": 1.0, "sharpness": 5.0}
REL_FLOOR = {"brightness": 0.05, "contrast": 0.05, "sharpness": 0.10}


def frame_stats(image_bgr: np.ndarray) -> np.ndarray:
    """``[brightness, contrast, sharpness]`` of one BGR (or gray) uint8 image, as float64.

    Computed on a gray copy :data:`STATS_WIDTH` pixels wide (box-averaged), so the cost stays
    well under 1 ms a frame whatever the camera's resolution.
    """
    h, w = image_bgr.shape[:2]
    if w > 2 * STATS_WIDTH:
        # Bilinear to twice the target, then an exact 2x bilinear halving (a 2x2 box average):
        # close to INTER_AREA, at a fifth of its cost for non-integer factors.
        small_h = max(1, round(h * STATS_WIDTH / w))
        mid = cv2.resize(image_bgr, (2 * STATS_WIDTH, 2 * small_h), interpolation=cv2.INTER_LINEAR)
        small = cv2.resize(mid, (STATS_WIDTH, small_h), interpolation=cv2.INTER_LINEAR)
    elif w > STATS_WIDTH:
        small = cv2.resize(image_bgr, (STATS_WIDTH, max(1, round(h * STATS_WIDTH / w))), interpolation=cv2.INTER_AREA)
    else:
        small = image_bgr
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    mean, std = cv2.meanStdDev(gray)
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    _, lap_std = cv2.meanStdDev(lap)
    return np.array([mean[0, 0], std[0, 0], lap_std[0, 0] ** 2], np.float64)


def std_floor(stat: str, ref_mean: float) -> float:
    """The smallest standard deviation the drift score divides by for ``stat``."""
    return max(ABS_FLOOR[stat], REL_FLOOR[stat] * abs(ref_mean))


@dataclass(frozen=True)
class Profile:
    """A reference profile: per statistic, mean and standard deviation over representative frames."""

    mean: np.ndarray  # [3], in STAT_NAMES order
    std: np.ndarray  # [3]
    video: str
    frames: int  # frames the statistics were taken from
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "video": self.video,
            "frames": self.frames,
            "stats_width": STATS_WIDTH,
            "stats": {name: {"mean": round(float(m), 4), "std": round(float(s), 4)}
                      for name, m, s in zip(STAT_NAMES, self.mean, self.std)},
        }

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile written by :func:`write_profile`; ConfigError naming the file if it is not one."""
        p = Path(path).expanduser()
        hint = "write one with: inferpath profile VIDEO"
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"metrics.drift.reference: {p}: profile file not found; {hint}") from None
        except OSError as exc:
            raise ConfigError(f"metrics.drift.reference: {p}: cannot read profile ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"metrics.drift.reference: {p}: not a drift profile (not JSON); {hint}") from None
        try:
            if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
                raise ValueError(f"'kind' is not {PROFILE_KIND!r}")
            stats = data["stats"]
            mean = np.array([float(stats[n]["mean"]) for n in STAT_NAMES], np.float64)
            std = np.array([float(stats[n]["std"]) for n in STAT_NAMES], np.float64)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
                raise ValueError("statistics must be finite, standard deviations >= 0")
            if int(data.get("stats_width", STATS_WIDTH)) != STATS_WIDTH:
                raise ValueError(f"made at stats_width {data.get('stats_width')}, this version uses {STATS_WIDTH}")
            return cls(mean, std, str(data.get("video", "")), int(data.get("frames", 0)), str(p))
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(f"metrics.drift.reference: {p}: not a valid drift profile ({what}); {hint}") from None


def profile_video(video_path: str | Path, frames: int = 200) -> Profile:
    """Statistics of up to ``frames`` frames spread evenly over a video file.

    Frames are taken at evenly spaced indices (from the header's frame count); the frames in
    between are only grabbed, not converted. A video whose header gives no count is read whole
    and subsampled.
    """
    p = Path(video_path).expanduser()
    if frames < 2:
        raise ConfigError(f"--frames: expected at least 2, got {frames}")
    with opened_video(p) as cap:
        claimed = video_info(cap).claimed_frames
        targets = set(np.linspace(0, claimed - 1, min(frames, claimed)).round().astype(int).tolist()) if claimed > 0 \
            else None
        rows = [frame_stats(image) for _, image in sample_frames(cap, targets)]
    if targets is None and len(rows) > frames:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, frames).round().astype(int)]
    if len(rows) < 2:
        raise SourceError(f"{p}: only {len(rows)} decodable frame(s); a profile needs at least 2")
    stats = np.stack(rows)
    return Profile(stats.mean(axis=0), stats.std(axis=0), p.name, len(rows))


def write_profile(video_path: str | Path, out_path: str | Path, frames: int = 200) -> Profile:
    """Profile a video (see :func:`profile_video`) and write it as JSON to ``out_path``."""
    profile = profile_video(video_path, frames)
    out = Path(out_path).expanduser()
    try:
        out.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write profile ({exc.strerror})") from None
    return Profile(profile.mean, profile.std, profile.video, profile.frames, str(out))


class _SourceWindow:
    """Rolling window of one source's frame statistics, with its drift state."""

    __slots__ = ("rows", "total", "drifting", "max_score", "warnings", "n")

    def __init__(self, window: int) -> None:
        self.rows: deque[np.ndarray] = deque(maxlen=window)
        self.total = np.zeros(len(STAT_NAMES), np.float64)
        self.drifting = False
        self.max_score = 0.0
        self.warnings = 0
        self.n = 0

    def push(self, row: np.ndarray) -> None:
        if len(self.rows) == self.rows.maxlen:
            self.total -= self.rows[0]
        self.rows.append(row)
        self.total += row
        self.n += 1
        if self.n % 1000 == 0:  # re-sum now and then so float error cannot creep in
            self.total = np.sum(self.rows, axis=0)


class DriftMonitor:
    """Watches each source's input statistics against a reference profile (see the module doc).

    Runs as a frame hook in each source's preprocess thread and as an exporter (``start`` /
    ``stop``) of the pipeline, which hands it the :class:`~pipeline.metrics.Metrics` to publish to.
    """

    def __init__(self, profile: Profile, threshold: float = 3.0, window: int = 30) -> None:
        if not threshold > 0:
            raise ConfigError(f"metrics.drift.threshold: expected a positive number, got {threshold!r}")
        if window < 1:
            raise ConfigError(f"metrics.drift.window: expected an integer >= 1, got {window!r}")
        self.profile = profile
        self.threshold = float(threshold)
        self.window = int(window)
        self.floor = np.array([std_floor(n, m) for n, m in zip(STAT_NAMES, profile.mean)], np.float64)
        self._scale = np.maximum(profile.std, self.floor)
        self._sources: dict[str, _SourceWindow] = {}
        self._lock = threading.Lock()
        self.metrics: Metrics | None = None

    @classmethod
    def from_config(cls, cfg: DriftConfig, pipe: Any = None) -> DriftMonitor:
        """Load ``cfg.reference`` and return the monitor; with ``pipe``, hook it into its preprocess
        threads (the plan does that itself for ``metrics.drift``; the caller adds it as an observer
        with ``pipe.add_observer``, which hands it the metrics)."""
        monitor = cls.watching(cfg.reference, cfg.threshold, cfg.window)
        if pipe is not None:
            pipe.add_frame_hook(monitor.on_frame)
        return monitor

    @classmethod
    def watching(cls, reference: str | None, threshold: float, window: int) -> DriftMonitor:
        """A monitor against the profile at ``reference`` (``metrics.drift``), said in the log."""
        if not reference:
            raise ConfigError("metrics.drift.reference: no profile given; write one with: inferpath profile VIDEO")
        monitor = cls(Profile.load(reference), threshold, window)
        log.info("drift: watching input against %s (%s, %d frames), threshold %g over %d frames",
                 monitor.profile.path, monitor.profile.video, monitor.profile.frames, monitor.threshold, monitor.window)
        return monitor

    # ---- exporter protocol ------------------------------------------------------------------
    def start(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def forget_source(self, source_id: str) -> None:
        """A stream removed from a service: its rolling window goes."""
        self._sources.pop(source_id, None)

    def stop(self) -> None:
        for sid, st in sorted(self._sources.items()):
            if st.n:
                log.debug("drift %s: max score %.2f over %d frames, %d warning(s)", sid, st.max_score, st.n,
                          st.warnings)

    # ---- per frame --------------------------------------------------------------------------
    def on_frame(self, frame: Frame) -> None:
        """Frame hook: stats of ``frame.image``, then the window score for its source."""
        self.observe(frame.source_id, frame_stats(frame.image))

    def observe(self, source: str, stats: np.ndarray) -> float | None:
        """Add one frame's statistics for ``source``; returns the drift score once the window is full."""
        with self._lock:
            st = self._sources.get(source)
            if st is None:
                st = self._sources[source] = _SourceWindow(self.window)
        st.push(stats)  # frame hooks run one frame at a time per stream: the window itself needs no lock
        if len(st.rows) < self.window:
            return None
        means = st.total / len(st.rows)
        z = np.abs(means - self.profile.mean) / self._scale
        k = int(np.argmax(z))
        score = float(z[k])
        st.max_score = max(st.max_score, score)
        m = self.metrics
        if m is not None:
            m.gauge(source, "drift_score", score)
            for name, value in zip(STAT_NAMES, means):
                m.gauge(source, name, float(value))
        if not st.drifting and score >= self.threshold:
            st.drifting = True
            st.warnings += 1
            log.warning("%s: input drift: score %.1f >= %g: %s (reference %s); detections may degrade",
                        source, score, self.threshold, self._describe(means, z), self.profile.video)
            if m is not None:
                m.count(source, "drift_warnings")
        elif st.drifting and score < self.threshold * RECOVER_RATIO:
            st.drifting = False
            log.info("%s: input drift recovered: score %.1f < %g", source, score, self.threshold * RECOVER_RATIO)
        return score

    def _describe(self, means: np.ndarray, z: np.ndarray) -> str:
        """"brightness fell from 118 to 41", for every stat past the threshold, worst first."""
        parts = []
        for k in np.argsort(-z):
            if parts and z[k] < self.threshold:
                break
            ref, now = self.profile.mean[k], means[k]
            parts.append(f"{STAT_NAMES[k]} {'fell' if now < ref else 'rose'} from {_num(ref)} to {_num(now)}")
        return ", ".join(parts)

    # ---- reading ----------------------------------------------------------------------------
    def warnings(self, source: str) -> int:
        st = self._sources.get(source)
        return st.warnings if st else 0

    def drifting(self, source: str) -> bool:
        st = self._sources.get(source)
        return bool(st and st.drifting)


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 or x == 0 else f"{x:.3g}"


__all__ = ["STAT_NAMES", "frame_stats", "Profile", "profile_video", "write_profile", "DriftMonitor", "std_floor"]
