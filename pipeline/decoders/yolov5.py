"""YOLOv5: ``[B, N, 5+C]``: cx, cy, w, h, objectness, then C class scores (score = objectness x class)."""

from __future__ import annotations

import numpy as np

from pipeline.decoders import Candidates, OutputDecoder, Shape, fits_class_columns, register


def fits(shape: Shape, num_classes: int | None) -> bool:
    return fits_class_columns(shape, num_classes, axis=2, fixed=5)  # [B, N, 5+C]


def decode(output: np.ndarray, conf: float) -> Candidates:
    pred = output  # [N, 5+C]
    class_scores = pred[:, 5:]
    if class_scores.shape[1]:
        class_id = class_scores.argmax(1)
        class_score = class_scores[np.arange(len(pred)), class_id]
    else:
        class_id, class_score = np.zeros(len(pred), np.int64), 1.0
    return pred[:, :4], pred[:, 4] * class_score, class_id


register(OutputDecoder("yolov5", "YOLOv5", "[B,N,5+C]", order=20, fits=fits, decode=decode))
