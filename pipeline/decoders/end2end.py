"""End-to-end: ``[B, N, 6]``: x1, y1, x2, y2, score, class, with NMS already done in the model."""

from __future__ import annotations

import numpy as np

from pipeline.decoders import EXACT, Candidates, OutputDecoder, Shape, dims3, register


def fits(shape: Shape, num_classes: int | None) -> bool:
    dims = dims3(shape)
    return dims is not None and dims[1] == 6


def claim(shape: Shape, num_classes: int | None) -> int | None:
    # With one class, [B,N,6] is also YOLOv5's [B,N,5+1]: leave it to the class count.
    return EXACT if fits(shape, num_classes) and num_classes != 1 else None


def decode(output: np.ndarray, conf: float) -> Candidates:
    return output[:, :4], output[:, 4], output[:, 5].astype(np.int64)


register(OutputDecoder("end2end", "end-to-end", "[B,N,6]", order=30, fits=fits, decode=decode,
                       boxes="xyxy", nms=False, per_class=False, claim=claim))
