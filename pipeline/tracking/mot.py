"""MOTChallenge files: detections in (``frame,id,x,y,w,h,conf,...``, frames from 1), results out
(``frame,id,x,y,w,h,conf,-1,-1,-1``), tracked by the same :class:`StreamTracker` and settings as
the pipeline, so the standard scoring tools measure exactly what a deployment runs.
"""

from __future__ import annotations

import configparser
import math
from pathlib import Path

import numpy as np

from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.frame import Detections
from pipeline.tracking.tracker import StreamTracker

DEFAULT_FPS = 30.0
MAX_FRAME = 2**31 - 1  # frame numbers beyond int32 are not a sequence, they are a broken file


def read_detections(path: str | Path) -> np.ndarray:
    """MOTChallenge detections as [K, 7] float64 rows: frame, id, x, y, w, h, conf (conf 1 if absent)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: detections file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read detections ({getattr(exc, 'strerror', None) or exc})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(" ", "").split(",")
        try:
            values = [float(v) for v in parts[:7]]
        except ValueError:
            values = []
        if (len(values) < 6 or not all(math.isfinite(v) for v in values) or not 1 <= values[0] <= MAX_FRAME
                or values[0] != int(values[0]) or values[4] < 0 or values[5] < 0):
            raise ConfigError(f"{p}:{n}: expected MOTChallenge 'frame,id,x,y,w,h,conf,...' with finite numbers, "
                              f"whole frames from 1 to {MAX_FRAME} and non-negative w, h; got {line[:80]!r}")
        rows.append(values + [1.0] * (7 - len(values)))
    return np.array(rows, np.float64).reshape(-1, 7)


def sequence_fps(det_path: str | Path) -> float | None:
    """``frameRate`` of the sequence's ``seqinfo.ini`` (MOTChallenge layout: SEQ/det/det.txt), if there is one."""
    p = Path(det_path).resolve()
    for ini in (p.parent / "seqinfo.ini", p.parent.parent / "seqinfo.ini"):
        if ini.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read(ini)
                return float(parser["Sequence"]["frameRate"])
            except (KeyError, ValueError, configparser.Error):
                return None
    return None


def track_detections(dets: np.ndarray, cfg: TrackingConfig, fps: float) -> np.ndarray:
    """Track MOTChallenge detection rows frame by frame; returns result rows: frame, id, x, y, w, h, conf.

    An empty frame is a prediction step, as in the pipeline, but only while a track could still be
    alive (``tracking.lost_track_s`` after the last detection); past that the tracker has nothing to
    predict, so a long gap (or a frame number of 10^8) costs nothing: the work and memory follow the
    frames that hold detections, never the highest frame number.
    """
    tracker = StreamTracker(cfg, fps)
    out = []
    if len(dets) == 0:
        return np.zeros((0, 7))
    frames = dets[:, 0].astype(np.int64)
    order = np.argsort(frames, kind="stable")
    dets, frames = dets[order], frames[order]
    present, starts = np.unique(frames, return_index=True)
    ends = np.r_[starts[1:], len(frames)]
    gap = math.ceil(cfg.lost_track_s * tracker.fps) + 2  # empty frames worth predicting after a detection
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    prev = 0
    for f, a, b in zip(present.tolist(), starts.tolist(), ends.tolist()):
        for e in range(prev + 1, min(f, prev + 1 + gap) if prev else prev + 1):
            tracker.update(empty, (e - 1) / tracker.fps)
        d = dets[a:b]
        xyxy = np.c_[d[:, 2], d[:, 3], d[:, 2] + d[:, 4], d[:, 3] + d[:, 5]].astype(np.float32)
        det = Detections(xyxy, d[:, 6].astype(np.float32), np.zeros(len(d), np.int64))
        ids = tracker.update(det, (f - 1) / tracker.fps)
        keep = ids >= 0
        for tid, row in zip(ids[keep].tolist(), d[keep]):
            out.append([f, tid, row[2], row[3], row[4], row[5], row[6]])
        prev = f
    return np.array(out, np.float64).reshape(-1, 7)


def write_results(path: str | Path, rows: np.ndarray) -> None:
    """MOTChallenge results: ``frame,id,x,y,w,h,conf,-1,-1,-1`` per line."""
    p = Path(path)
    lines = [f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:.4f},-1,-1,-1"
             for r in rows]
    try:
        p.write_text("\n".join(lines) + ("\n" if lines else ""))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot write results ({exc.strerror})") from None
