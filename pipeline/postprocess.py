"""Decoding model outputs into detections: output formats, NMS, mapping back to the frame.

The formats themselves (their shape tests and column layouts) live in :mod:`pipeline.decoders`,
one module each (today ``yolov8``/YOLO11 ``[B,4+C,N]``, ``yolov5`` ``[B,N,5+C]`` and ``end2end``
``[B,N,6]``). This module picks an output and a format (``auto`` says why), then thresholds,
filters classes, runs NMS where the model did not, and maps boxes back to the frame. An output
that fits no format raises :class:`ModelError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline import decoders
from pipeline.errors import ModelError
from pipeline.frame import Detections
from pipeline.preprocess import Letterbox

MAX_NMS = 3000  # most candidates that enter NMS per image


def detect_format(shapes: Sequence[Sequence[object]], num_classes: int | None = None, where: str = "model") -> str:
    """Pick the output format from the model's output shapes (first output decides)."""
    if not shapes:
        raise ModelError(f"{where}: model has no outputs")
    shape = list(shapes[0])
    fmt = decoders.detect(shape, num_classes)
    if fmt is None:
        raise ModelError(f"{where}: output shape {_fmt(shape)} fits no known format ({decoders.expected()})")
    return fmt


def fits_format(shape: Sequence[object], fmt: str, num_classes: int | None = None) -> bool:
    """Whether an output of ``shape`` can be read as ``fmt`` (a forced format is checked, not trusted)."""
    return decoders.get(fmt).fits(list(shape), num_classes)


def choose_output(outputs: Sequence[tuple[str, Sequence[object]]], fmt: str = "auto",
                  num_classes: int | None = None, name: str | None = None, where: str = "model") -> tuple[int, str]:
    """``(output index, format)``: the output named ``name``, else the first whose shape fits ``fmt``
    (any known format for ``auto``). Every output is scanned, so an end-to-end model whose
    detections are its last output works; a refusal lists every output."""
    listing = ", ".join(f"{n} {_fmt(s)}" for n, s in outputs)
    expected = decoders.expected(fmt, num_classes)
    if not outputs:
        raise ModelError(f"{where}: model has no outputs")
    indices = range(len(outputs))
    if name is not None:
        indices = [i for i, (n, _) in enumerate(outputs) if n == name]
        if not indices:
            raise ModelError(f"{where}: model.output: no output named {name!r}; outputs: {listing}")
    for i in indices:
        shape = list(outputs[i][1])
        found = decoders.detect(shape, num_classes) if fmt == "auto" else (fmt if fits_format(shape, fmt, num_classes)
                                                                            else None)
        if found is not None:
            return i, found
    if name is not None or len(outputs) == 1:
        n, shape = outputs[indices[0]]
        if fmt == "auto":
            raise ModelError(f"{where}: output {n} {_fmt(shape)} fits no known format ({expected})")
        raise ModelError(f"{where}: output {n} {_fmt(shape)} is not {fmt} ({expected}); "
                         "set model.format: auto or fix the spec")
    raise ModelError(f"{where}: no output fits {'a known format' if fmt == 'auto' else fmt} ({expected}); "
                     f"outputs: {listing}; choose one with model.output: NAME")


def _fmt(shape: Sequence[object]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [N,4] x [M,4] -> [N,M]."""
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Class-aware greedy NMS; returns kept indices, highest score first.

    Classes are separated by offsetting boxes (the batched-NMS trick), then a vectorized greedy
    pass suppresses, per kept box, every lower-scored box above ``iou``.
    """
    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    offset = class_id[order].astype(np.float32)[:, None] * (float(np.abs(xyxy).max()) + 1.0) * 2.0
    boxes = xyxy[order] + offset
    ious = box_iou(boxes, boxes)
    n = len(order)
    suppressed = np.zeros(n, bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_det:
            break
        suppressed |= ious[i] > iou
    return order[np.asarray(keep, np.int64)]


def decode(
    output: np.ndarray, fmt: str, conf: float, iou: float, max_det: int, classes: Sequence[int] | None = None
) -> Detections:
    """Decode one image's raw output (no batch dim) into detections in model-input pixels."""
    decoder = decoders.get(fmt)
    boxes, score, class_id = decoder.decode(output, conf)
    mask = score > conf
    if classes is not None:
        mask &= np.isin(class_id, classes)
    boxes, score, class_id = boxes[mask].astype(np.float32), score[mask].astype(np.float32), class_id[mask]
    if len(score) > MAX_NMS:  # bound NMS's O(n^2) work, as Ultralytics does with max_nms
        top = np.argpartition(-score, MAX_NMS)[:MAX_NMS]
        boxes, score, class_id = boxes[top], score[top], class_id[top]
    if decoder.boxes == "cxcywh":
        boxes = _cxcywh_to_xyxy(boxes)
    if decoder.nms:
        keep = nms(boxes, score, class_id, iou, max_det)
    else:
        keep = np.argsort(-score, kind="stable")[:max_det]
    return Detections(boxes[keep], score[keep], class_id[keep].astype(np.int64))


def postprocess(
    outputs: list[np.ndarray],
    letterboxes: Sequence[Letterbox],
    fmt: str,
    conf: float = 0.35,
    iou: float = 0.5,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
) -> list[Detections]:
    """Decode a batch's raw outputs (first output, batch dim first); boxes in frame pixels, clipped."""
    out = outputs[0]
    if len(out) != len(letterboxes):
        raise ValueError(f"batch of {len(out)} outputs for {len(letterboxes)} frames")
    results = []
    for item, lb in zip(out, letterboxes):
        det = decode(np.asarray(item, np.float32), fmt, conf, iou, max_det, classes)
        results.append(Detections(lb.to_frame(det.xyxy), det.confidence, det.class_id))
    return results
