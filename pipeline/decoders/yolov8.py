"""YOLOv8 (also YOLO11): one output ``[B, 4+C, N]``: cx, cy, w, h, then C class scores."""

from __future__ import annotations

import numpy as np

from pipeline.decoders import Candidates, OutputDecoder, Shape, fits_class_columns, register


def fits(shape: Shape, num_classes: int | None) -> bool:
    return fits_class_columns(shape, num_classes, axis=1, fixed=4)  # [B, 4+C, N]


def decode(output: np.ndarray, conf: float) -> Candidates:
    """Only candidates whose best class scores above ``conf``: the best score comes from a max
    over the class rows (contiguous), and the class argmax is taken for those few columns only.
    Same candidates, in the same order, as an argmax over every column; 0.2 ms a frame here for
    the bundled model's [1,84,3549] output instead of 0.75 ms."""
    scores = output[4:]  # [C, N]
    best = scores.max(0)
    keep = np.flatnonzero(best > conf)
    return output[:4, keep].T, best[keep], scores[:, keep].argmax(0)


register(OutputDecoder("yolov8", "YOLOv8/11", "[B,4+C,N]", order=10, fits=fits, decode=decode))
