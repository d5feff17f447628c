"""Counting on tracks: line crossings per direction and class, zone occupancy and dwell time.

Both test one point per track, its *anchor* (the bottom centre of the box by default: where a
person or a car touches the ground). The geometry is a few vectorized numpy lines, so it is
small enough to test exhaustively and costs microseconds per frame; supervision's ``LineZone`` /
``PolygonZone`` would add a dependency and count per detection, not per track, across our gaps.

- A **line** ``[[x1, y1], [x2, y2]]`` counts a track each time its anchor moves from one side of
  the line to the other through the segment. Direction ``in`` is from the left of the line to
  its right, looking from its first point to its second (image coordinates, y down: for a line
  drawn left to right, ``in`` is moving down the image); ``out`` is the reverse. An anchor
  exactly on the line keeps the side it had.
- A **zone** polygon holds a track from the first frame its anchor is seen inside until it is
  seen outside or the tracker ends the track (a missed detection does not empty the zone).
  Occupancy is per class (current and peak); dwell is stream time from entering to leaving.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import ConfigError


def anchors(xyxy: np.ndarray, kind: str = "bottom_center") -> np.ndarray:
    """The point of each box that lines and zones test: [N, 2]."""
    cx = (xyxy[:, 0] + xyxy[:, 2]) / 2
    y = xyxy[:, 3] if kind == "bottom_center" else (xyxy[:, 1] + xyxy[:, 3]) / 2
    return np.stack([cx, y], axis=1).astype(np.float64)


def side_of_line(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product sign of each point against the line a->b: +1 right, -1 left, 0 on it (y down)."""
    d = b - a
    cross = d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0])
    return np.sign(cross).astype(np.int8)


def crosses_segment(p0: np.ndarray, p1: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the move p0->p1 (which changes side of the infinite line a-b) passes through the segment a-b."""
    d = b - a
    c0 = d[0] * (p0[1] - a[1]) - d[1] * (p0[0] - a[0])
    c1 = d[0] * (p1[1] - a[1]) - d[1] * (p1[0] - a[0])
    if c0 == c1:
        return False
    hit = p0 + (p1 - p0) * (c0 / (c0 - c1))
    u = float(np.dot(hit - a, d) / np.dot(d, d))
    return 0.0 <= u <= 1.0


def polygon_edges(polygon: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per edge of a closed polygon [M, 2]: start (x1, y1), end y2, and dx/dy (0 for a level edge)."""
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    dy = y2 - y1
    slope = np.divide(x2 - x1, dy, out=np.zeros_like(dy), where=dy != 0)
    return x1, y1, y2, slope


def inside_polygon(points: np.ndarray, polygon: np.ndarray, edges: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Even-odd ray casting, vectorized over points and edges: [N] bool (``edges``: precomputed)."""
    if len(points) == 0:
        return np.zeros(0, bool)
    x, y = points[:, 0:1], points[:, 1:2]  # [N, 1]
    x1, y1, y2, slope = edges if edges is not None else polygon_edges(polygon)
    straddles = (y1 > y) != (y2 > y)  # [N, M]; a level edge never straddles
    return np.count_nonzero(straddles & (x < x1 + (y - y1) * slope), axis=1) % 2 == 1


def check_inside_frame(kind: str, index: int, name: str, points: np.ndarray, size: tuple[int, int],
                       source_id: str) -> None:
    """Refuse a line or zone with a point outside the ``size`` (w, h) frame of ``source_id``."""
    w, h = size
    bad = (points[:, 0] < 0) | (points[:, 0] > w) | (points[:, 1] < 0) | (points[:, 1] > h)
    if bad.any():
        x, y = points[int(np.argmax(bad))].tolist()
        raise ConfigError(f"tracking.{kind}[{index}] ({name}): point [{x:g}, {y:g}] is outside the {w}x{h} "
                          f"frame of source {source_id!r}; coordinates are that source's frame pixels")


@dataclass
class LineCounter:
    """Crossings of one line, per direction and class."""

    name: str
    a: np.ndarray
    b: np.ndarray
    classes: frozenset[str] | None
    counts: dict[str, Counter] = field(default_factory=lambda: {"in": Counter(), "out": Counter()})
    _side: dict[int, int] = field(default_factory=dict)  # track id -> last non-zero side
    _last: dict[int, np.ndarray] = field(default_factory=dict)  # track id -> anchor when that side was seen

    def update(self, ids: np.ndarray, points: np.ndarray, classes: list[str]) -> list[dict]:
        """Feed this frame's tracked anchors; returns the crossing events."""
        events = []
        sides = side_of_line(points, self.a, self.b)
        for tid, side, p, cls in zip(ids.tolist(), sides.tolist(), points, classes):
            if side == 0:
                continue
            prev = self._side.get(tid)
            if prev is not None and prev != side and crosses_segment(self._last[tid], p, self.a, self.b):
                if self.classes is None or cls in self.classes:
                    direction = "in" if side > 0 else "out"
                    self.counts[direction][cls] += 1
                    events.append({"type": "line", "line": self.name, "direction": direction, "class": cls,
                                   "track_id": tid})
            self._side[tid] = side
            self._last[tid] = p
        return events

    def forget(self, gone) -> None:
        """Drop the remembered side of tracks that ended."""
        for tid in gone:
            self._side.pop(tid, None)
            self._last.pop(tid, None)

    def summary(self) -> dict:
        return {d: dict(sorted(c.items())) for d, c in self.counts.items()}


@dataclass
class ZoneCounter:
    """Tracks inside one polygon: occupancy per class (current, peak) and dwell time per class."""

    name: str
    polygon: np.ndarray
    classes: frozenset[str] | None
    inside: dict[int, tuple[float, str]] = field(default_factory=dict)  # track id -> (entered at, class)
    peak: Counter = field(default_factory=Counter)
    dwell: dict[str, list[float]] = field(default_factory=dict)  # class -> finished visits' dwell (s)

    def __post_init__(self) -> None:
        self._edges = polygon_edges(self.polygon)

    def update(self, ids: np.ndarray, points: np.ndarray, classes: list[str], t: float,
               gone: dict[int, float]) -> list[dict]:
        """Feed this frame's tracked anchors (time ``t``) and the tracks that ended (id -> last seen)."""
        events = []
        flags = inside_polygon(points, self.polygon, self._edges)
        for tid, now_in, cls in zip(ids.tolist(), flags.tolist(), classes):
            counted = now_in and (self.classes is None or cls in self.classes)
            if counted and tid not in self.inside:
                self.inside[tid] = (t, cls)
                events.append({"type": "zone", "zone": self.name, "action": "enter", "class": cls, "track_id": tid})
            elif not counted and tid in self.inside:
                events.append(self._leave(tid, t))
            elif counted:
                self.inside[tid] = (self.inside[tid][0], cls)
        for tid, last_seen in gone.items():
            if tid in self.inside:
                events.append(self._leave(tid, last_seen))
        for cls, n in self.occupancy().items():
            self.peak[cls] = max(self.peak[cls], n)
        return events

    def _leave(self, tid: int, t: float) -> dict:
        entered, cls = self.inside.pop(tid)
        dwell = max(0.0, t - entered)
        self.dwell.setdefault(cls, []).append(dwell)
        return {"type": "zone", "zone": self.name, "action": "exit", "class": cls, "track_id": tid,
                "dwell_s": round(dwell, 3)}

    def occupancy(self) -> Counter:
        return Counter(cls for _, cls in self.inside.values())

    def summary(self, t_end: float) -> dict:
        """Current and peak occupancy; dwell over finished visits plus those still open at ``t_end``."""
        dwell: dict[str, list[float]] = {k: list(v) for k, v in self.dwell.items()}
        for entered, cls in self.inside.values():
            dwell.setdefault(cls, []).append(max(0.0, t_end - entered))
        return {
            "current": dict(sorted(self.occupancy().items())),
            "peak": dict(sorted((k, v) for k, v in self.peak.items() if v)),
            "dwell_s": {cls: {"visits": len(v), "mean": round(float(np.mean(v)), 3), "max": round(float(max(v)), 3)}
                        for cls, v in sorted(dwell.items())},
        }
