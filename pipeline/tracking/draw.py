"""Drawing tracking on a frame: each track's trail, the counting lines and zones, and their counts."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.annotate import color_for

_LINE = (0, 215, 255)  # BGR amber
_ZONE = (255, 160, 0)  # BGR azure


def _label(image: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = max(0, org[0]), max(th + base, org[1])
    cv2.rectangle(image, (x, y - th - base), (x + tw + 2, y + 1), color, -1)
    cv2.putText(image, text, (x + 1, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _counts(per_class: dict) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(per_class.items())) or "0"


def draw_tracking(image: np.ndarray, tracking) -> np.ndarray:
    """Draw ``frame.tracking`` (a :class:`~pipeline.tracking.stream.FrameTracking`) on ``image`` in place."""
    st = tracking.stream
    h = image.shape[0]
    thick = max(1, round(h / 400))
    scale = max(0.4, h / 1200)
    for tid, pts in st.trails.items():
        if len(pts) > 1:
            cv2.polylines(image, [np.array(pts, np.int32)], False, color_for(tid), thick, cv2.LINE_AA)
    with st.lock:
        for zone in st.zones:
            poly = zone.polygon.astype(np.int32)
            cv2.polylines(image, [poly], True, _ZONE, thick + 1, cv2.LINE_AA)
            x, y = poly[:, 0].min(), poly[:, 1].max()  # below the zone: lines label above themselves
            _label(image, f"{zone.name}: {_counts(zone.occupancy())} (peak {_counts(zone.peak)})",
                   (int(x), int(y) + round(24 * scale)), _ZONE, scale)
        for line in st.lines:
            a, b = line.a.astype(int).tolist(), line.b.astype(int).tolist()
            cv2.line(image, tuple(a), tuple(b), _LINE, thick + 1, cv2.LINE_AA)
            text = f"{line.name}: in {_counts(line.counts['in'])} | out {_counts(line.counts['out'])}"
            _label(image, text, (min(a[0], b[0]), min(a[1], b[1]) - 4), _LINE, scale)
    return image
