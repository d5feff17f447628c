"""YOLOv8 (also YOLO11): one output ``[B, 4+C, N]``: cx, cy, w, h, then C class scores."""

from __future__ import annotations

import numpy as np

from pipeline.decoders import Candidates, OutputDecoder, Shape, fits_class_columns, register


def fits(shape: Shape, num_classes: int | None) -> bool:
    return fits_class_columns(shape, num_classes, axis=1, fixed=4)  # [B, 4+C, N]


def decode(output: np.ndarray) -> Candidates:
    pred = output.T  # [N, 4+C]
    scores = pred[:, 4:]
    class_id = scores.argmax(1)
    return pred[:, :4], scores[np.arange(len(pred)), class_id], class_id


register(OutputDecoder("yolov8", "YOLOv8/11", "[B,4+C,N]", order=10, fits=fits, decode=decode))
