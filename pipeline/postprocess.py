"""Decoding model outputs into detections: output formats, NMS, mapping back to the frame.

Formats understood (``B`` batch, ``C`` classes, ``N`` candidates):

- ``yolov8`` (also YOLO11): one output ``[B, 4+C, N]``: cx, cy, w, h, then C class scores.
- ``yolov5``: ``[B, N, 5+C]``: cx, cy, w, h, objectness, then C class scores.
- ``end2end``: ``[B, N, 6]``: x1, y1, x2, y2, score, class (NMS already done in the model).

``detect_format`` picks one from the output shapes (``auto``) and says why; an output that fits
none raises :class:`ModelError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipeline.errors import ModelError
from pipeline.frame import Detections
from pipeline.preprocess import Letterbox

log = logging.getLogger(__name__)

FORMATS = ("yolov8", "yolov5", "end2end")
MAX_NMS = 3000  # most candidates that enter NMS per image


def detect_format(shapes: Sequence[Sequence[object]], num_classes: int | None = None, where: str = "model") -> str:
    """Pick the output format from the model's output shapes (first output decides)."""
    if not shapes:
        raise ModelError(f"{where}: model has no outputs")
    shape = list(shapes[0])
    if len(shape) != 3:
        raise ModelError(
            f"{where}: output shape {_fmt(shape)} fits no known format "
            "(expected [B,4+C,N] YOLOv8/11, [B,N,5+C] YOLOv5 or [B,N,6] end-to-end)"
        )
    _, d1, d2 = shape
    ints = [d if isinstance(d, int) else None for d in (d1, d2)]
    if ints[1] == 6 and (num_classes is None or num_classes != 1):
        return "end2end"
    if num_classes:
        if ints[0] == 4 + num_classes:
            return "yolov8"
        if ints[1] == 5 + num_classes:
            return "yolov5"
    # Without class names: the candidate axis is the long one.
    if ints[0] is not None and ints[1] is not None:
        if ints[0] > 4 and ints[0] < ints[1]:
            return "yolov8"
        if ints[1] > 5 and ints[1] < ints[0]:
            return "yolov5"
    elif ints[0] is not None and ints[0] > 4:
        return "yolov8"
    elif ints[1] is not None and ints[1] > 5:
        return "yolov5"
    raise ModelError(
        f"{where}: output shape {_fmt(shape)} fits no known format "
        "(expected [B,4+C,N] YOLOv8/11, [B,N,5+C] YOLOv5 or [B,N,6] end-to-end)"
    )


def fits_format(shape: Sequence[object], fmt: str, num_classes: int | None = None) -> bool:
    """Whether an output of ``shape`` can be read as ``fmt`` (a forced format is checked, not trusted)."""
    if len(shape) != 3:
        return False
    _, d1, d2 = (d if isinstance(d, int) else None for d in shape)
    if fmt == "end2end":
        return d2 == 6
    if fmt == "yolov8":  # [B, 4+C, N]: the candidate axis is the long one
        if num_classes:
            return d1 == 4 + num_classes
        return d1 is not None and d1 > 4 and (d2 is None or d2 > d1)
    if fmt == "yolov5":  # [B, N, 5+C]
        if num_classes:
            return d2 == 5 + num_classes
        return d2 is not None and d2 > 5 and (d1 is None or d1 > d2)
    return False


def choose_output(outputs: Sequence[tuple[str, Sequence[object]]], fmt: str = "auto",
                  num_classes: int | None = None, name: str | None = None, where: str = "model") -> tuple[int, str]:
    """``(output index, format)``: the output named ``name``, else the first whose shape fits ``fmt``
    (any known format for ``auto``). Every output is scanned, so an end-to-end model whose
    detections are its last output works; a refusal lists every output."""
    listing = ", ".join(f"{n} {_fmt(s)}" for n, s in outputs)
    expected = ("expected [B,4+C,N] YOLOv8/11, [B,N,5+C] YOLOv5 or [B,N,6] end-to-end" if fmt == "auto"
                else f"expected {_SHAPES[fmt]}" + (f" with {num_classes} classes" if num_classes and fmt != "end2end" else ""))
    if not outputs:
        raise ModelError(f"{where}: model has no outputs")
    indices = range(len(outputs))
    if name is not None:
        indices = [i for i, (n, _) in enumerate(outputs) if n == name]
        if not indices:
            raise ModelError(f"{where}: model.output: no output named {name!r}; outputs: {listing}")
    for i in indices:
        shape = list(outputs[i][1])
        if fmt != "auto":
            if fits_format(shape, fmt, num_classes):
                return i, fmt
            continue
        try:
            return i, detect_format([shape], num_classes, where)
        except ModelError:
            continue
    if name is not None or len(outputs) == 1:
        n, shape = outputs[indices[0]]
        if fmt == "auto":
            raise ModelError(f"{where}: output {n} {_fmt(shape)} fits no known format ({expected})")
        raise ModelError(f"{where}: output {n} {_fmt(shape)} is not {fmt} ({expected}); "
                         "set model.format: auto or fix the spec")
    raise ModelError(f"{where}: no output fits {'a known format' if fmt == 'auto' else fmt} ({expected}); "
                     f"outputs: {listing}; choose one with model.output: NAME")


_SHAPES = {"yolov8": "[B,4+C,N]", "yolov5": "[B,N,5+C]", "end2end": "[B,N,6]"}


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
    if fmt == "yolov8":
        pred = output.T  # [N, 4+C]
        scores_all = pred[:, 4:]
        class_id = scores_all.argmax(1)
        score = scores_all[np.arange(len(pred)), class_id]
        boxes = pred[:, :4]
        xyxy_needed = True
    elif fmt == "yolov5":
        pred = output  # [N, 5+C]
        class_scores = pred[:, 5:]
        class_id = class_scores.argmax(1) if class_scores.shape[1] else np.zeros(len(pred), np.int64)
        cls_score = class_scores[np.arange(len(pred)), class_id] if class_scores.shape[1] else 1.0
        score = pred[:, 4] * cls_score
        boxes = pred[:, :4]
        xyxy_needed = True
    elif fmt == "end2end":
        score = output[:, 4]
        class_id = output[:, 5].astype(np.int64)
        boxes = output[:, :4]
        xyxy_needed = False
    else:
        raise ModelError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
    mask = score > conf
    if classes is not None:
        mask &= np.isin(class_id, classes)
    boxes, score, class_id = boxes[mask].astype(np.float32), score[mask].astype(np.float32), class_id[mask]
    if len(score) > MAX_NMS:  # bound NMS's O(n^2) work, as Ultralytics does with max_nms
        top = np.argpartition(-score, MAX_NMS)[:MAX_NMS]
        boxes, score, class_id = boxes[top], score[top], class_id[top]
    if xyxy_needed:
        boxes = _cxcywh_to_xyxy(boxes)
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
