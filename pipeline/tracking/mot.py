"""MOTChallenge files: detections in (``frame,id,x,y,w,h,conf,...``, frames from 1), results out
(``frame,id,x,y,w,h,conf,-1,-1,-1``), tracked by the same :class:`StreamTracker` and settings as
the pipeline, so the standard scoring tools measure exactly what a deployment runs.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np

from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.frame import Detections
from pipeline.tracking.tracker import StreamTracker

DEFAULT_FPS = 30.0


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
        if len(values) < 6 or values[0] < 1 or values[0] != int(values[0]) or values[4] < 0 or values[5] < 0:
            raise ConfigError(f"{p}:{n}: expected MOTChallenge 'frame,id,x,y,w,h,conf,...' with frames from 1 and "
                              f"non-negative w, h; got {line[:80]!r}")
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
    """Track MOTChallenge detection rows frame by frame (every frame from 1 to the last, so an
    empty frame is a prediction step); returns result rows: frame, id, x, y, w, h, conf."""
    tracker = StreamTracker(cfg, fps)
    out = []
    if len(dets) == 0:
        return np.zeros((0, 7))
    frames = dets[:, 0].astype(np.int64)
    order = np.argsort(frames, kind="stable")
    dets, frames = dets[order], frames[order]
    bounds = np.searchsorted(frames, np.arange(1, frames[-1] + 2))
    for f in range(1, int(frames[-1]) + 1):
        d = dets[bounds[f - 1]:bounds[f]]
        xyxy = np.c_[d[:, 2], d[:, 3], d[:, 2] + d[:, 4], d[:, 3] + d[:, 5]].astype(np.float32)
        det = Detections(xyxy, d[:, 6].astype(np.float32), np.zeros(len(d), np.int64))
        ids = tracker.update(det, (f - 1) / tracker.fps)
        keep = ids >= 0
        for tid, row in zip(ids[keep].tolist(), d[keep]):
            out.append([f, tid, row[2], row[3], row[4], row[5], row[6]])
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
