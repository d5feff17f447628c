"""Drawing boxes and labels on frames."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.frame import Detections
from pipeline.model import class_label

_PALETTE = np.array(
    [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
     (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
     (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
     (200, 149, 255), (199, 55, 255)],
    np.uint8,
)


def color_for(class_id: int) -> tuple[int, int, int]:
    c = _PALETTE[class_id % len(_PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def draw(image: np.ndarray, det: Detections, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Draw ``det`` on ``image`` in place (BGR) and return it."""
    h = image.shape[0]
    thickness = max(1, round(h / 400))
    font_scale = max(0.4, h / 1200)
    tids = det.tracker_id.tolist() if det.tracker_id is not None else [-1] * len(det)
    for (x1, y1, x2, y2), score, cls, tid in zip(det.xyxy.astype(int).tolist(), det.confidence.tolist(),
                                                  det.class_id.tolist(), tids):
        color = color_for(cls)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{class_label(names, cls)} {score:.2f}"
        if tid >= 0:  # a tracked object: its id first
            label = f"#{tid} {label}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(image, (x1, ty - th - base), (x1 + tw + 2, ty + base - 2), color, -1)
        cv2.putText(image, label, (x1 + 1, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return image
