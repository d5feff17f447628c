from __future__ import annotations

import numpy as np
import pytest

from pipeline import decoders
from pipeline.errors import ConfigError, ModelError
from pipeline.model import ModelSpec
from pipeline.postprocess import box_iou, choose_output, decode, detect_format, nms, postprocess
from pipeline.preprocess import Letterbox
from tests.conftest import VTEST


def brute_force_nms(xyxy, scores, cls, iou_thr):
    """Reference: plain greedy per class, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if cls[i] != cls[j]:
                continue
            a, b = xyxy[i], xyxy[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > iou_thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_thr", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed, iou_thr):
    rng = np.random.default_rng(seed)
    n = 200
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    xyxy = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n + 0.001  # distinct scores: a unique greedy order
    cls = rng.integers(0, 4, n)
    got = nms(xyxy, scores, cls, iou_thr, max_det=1000).tolist()
    assert got == brute_force_nms(xyxy, scores, cls, iou_thr)


def test_nms_max_det_and_empty():
    xyxy = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]], np.float32)
    assert nms(xyxy, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, int), 0.5, 2).tolist() == [0, 1]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), 0.5, 10).size == 0


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0], atol=1e-6)


def _yolov8_output(boxes_cxcywh, class_scores):
    """[4+C, N] from N boxes and [N, C] scores."""
    return np.concatenate([np.asarray(boxes_cxcywh, np.float32).T, np.asarray(class_scores, np.float32).T], 0)


def test_decode_yolov8():
    out = _yolov8_output([[50, 50, 20, 40], [52, 50, 20, 40], [200, 100, 10, 10]],
                         [[0.9, 0.1], [0.8, 0.1], [0.05, 0.6]])
    det = decode(out, "yolov8", conf=0.3, iou=0.5, max_det=10)
    assert det.class_id.tolist() == [0, 1]
    np.testing.assert_allclose(det.xyxy[0], [40, 30, 60, 70])
    np.testing.assert_allclose(det.confidence, [0.9, 0.6], atol=1e-6)


def test_decode_yolov5_multiplies_objectness():
    out = np.array([[50, 50, 20, 40, 0.5, 0.9, 0.1], [200, 100, 10, 10, 0.9, 0.2, 0.8]], np.float32)
    det = decode(out, "yolov5", conf=0.3, iou=0.5, max_det=10)
    assert det.class_id.tolist() == [1, 0]
    np.testing.assert_allclose(det.confidence, [0.72, 0.45], atol=1e-6)
    np.testing.assert_allclose(det.xyxy[1], [40, 30, 60, 70])


def test_decode_end2end_keeps_boxes_as_given():
    out = np.array([[1, 2, 30, 40, 0.8, 3], [5, 5, 6, 6, 0.1, 1], [10, 10, 20, 20, 0.9, 0]], np.float32)
    det = decode(out, "end2end", conf=0.25, iou=0.5, max_det=10)
    assert det.class_id.tolist() == [0, 3]
    np.testing.assert_allclose(det.xyxy, [[10, 10, 20, 20], [1, 2, 30, 40]])


def test_decode_class_filter():
    out = _yolov8_output([[50, 50, 20, 40], [200, 100, 10, 10]], [[0.9, 0.1], [0.05, 0.6]])
    det = decode(out, "yolov8", conf=0.3, iou=0.5, max_det=10, classes=[1])
    assert det.class_id.tolist() == [1]


def test_postprocess_maps_to_frame():
    out = _yolov8_output([[208, 208, 416, 312]], [[0.9]])[None]  # whole letterboxed image content
    lb = Letterbox(scale=416 / 768, pad_x=0, pad_y=52, frame_w=768, frame_h=576)
    det = postprocess([out], [lb], "yolov8")[0]
    np.testing.assert_allclose(det.xyxy[0], [0, 0, 768, 576], atol=0.5)


@pytest.mark.parametrize(
    "shape, classes, expected",
    [
        (("batch", 84, 3549), 80, "yolov8"),
        ((1, 84, 8400), None, "yolov8"),
        ((1, 25200, 85), 80, "yolov5"),
        ((1, 25200, 85), None, "yolov5"),
        ((1, 300, 6), 80, "end2end"),
        ((1, 100, 6), None, "end2end"),
        ((1, 6, 8400), 2, "yolov8"),
    ],
)
def test_detect_format(shape, classes, expected):
    assert detect_format([shape], classes) == expected


@pytest.mark.parametrize("shape", [(1, 1000), (1, 3, 4, 5), (1, 4, 4)])
def test_detect_format_rejects(shape):
    with pytest.raises(ModelError, match="fits no known format"):
        detect_format([shape], None, "m.onnx")


# ---- a new output format is one registered decoder (issue 12) ----------------------------------------
def _columns_fit(shape, num_classes):
    dims = decoders.dims3(shape)
    return dims is not None and dims[0] == 6 and (dims[1] is None or dims[1] > 6)


def _columns_decode(output, conf):
    """``[6, N]``: rows x1, y1, x2, y2, score, class (end-to-end, candidates along the last axis)."""
    return output[:4].T, output[4], output[5].astype(np.int64)


@pytest.fixture
def columns_format():
    """Registers ``e2e_columns`` (some exports write end-to-end detections as [B,6,N]) for one test."""
    yield decoders.register(decoders.OutputDecoder(
        "e2e_columns", "end-to-end by columns", "[B,6,N]", order=40, fits=_columns_fit, decode=_columns_decode,
        boxes="xyxy", nms=False, per_class=False,
        claim=lambda shape, c: decoders.EXACT if _columns_fit(shape, c) and c != 2 else None))
    del decoders.FORMATS["e2e_columns"]


def test_a_registered_decoder_is_a_format_everywhere(columns_format):
    from pipeline.config import build_config

    assert build_config({"model": {"format": "e2e_columns"}}).model.format == "e2e_columns"
    assert ModelSpec(output_format="e2e_columns").output_format == "e2e_columns"
    with pytest.raises(ConfigError, match="model.format: expected one of 'auto', .*'end2end', 'e2e_columns', got 'x'"):
        build_config({"model": {"format": "x"}}, "d.yaml")
    # auto: [1,6,100] would otherwise be read as YOLOv8 (6 = 4 + 2 classes), a guess from its proportions
    outputs = [("heat", [1, 16, 16, 4]), ("dets", [1, 6, 100])]
    assert choose_output(outputs, "auto", 80) == (1, "e2e_columns")
    assert choose_output(outputs, "e2e_columns", 80) == (1, "e2e_columns")
    with pytest.raises(ModelError, match=r"output heat \[1,16,16,4\] is not e2e_columns \(expected \[B,6,N\]\)"):
        choose_output(outputs, "e2e_columns", 80, "heat")
    with pytest.raises(ModelError, match=r"fits no known format \(expected .* \[B,N,6\] end-to-end or \[B,6,N\] end"):
        detect_format([(1, 3, 4, 5)], None, "m.onnx")
    out = np.zeros((1, 6, 100), np.float32)
    out[0, :, 0] = [8, 8, 40, 40, 0.9, 1]
    out[0, :, 1] = [0, 0, 10, 10, 0.2, 3]  # below the threshold
    lb = Letterbox(scale=0.4, pad_x=0, pad_y=8, frame_w=160, frame_h=120)
    (det,) = postprocess([out], [lb], "e2e_columns", conf=0.35)
    assert det.class_id.tolist() == [1]
    np.testing.assert_allclose(det.xyxy[0], [20, 0, 100, 80], atol=1e-4)


def test_an_unregistered_format_is_refused():
    from pipeline.config import build_config

    with pytest.raises(ConfigError, match="model.format: expected one of 'auto', 'yolov8', 'yolov5', 'end2end', got"):
        build_config({"model": {"format": "e2e_columns"}}, "d.yaml")
    with pytest.raises(ModelError, match="output_format must be one of auto, yolov8, yolov5, end2end"):
        ModelSpec(output_format="e2e_columns")


def test_yolov8_candidates_equal_a_full_argmax_on_real_outputs(model_path, spec):
    """The yolov8 decoder filters by the best score before its class argmax; on the bundled
    model's real outputs it yields the very candidates, in the same order, that an argmax over
    every column and then the threshold give."""
    import cv2

    from pipeline.backends.base import BackendOptions, create_backend
    from pipeline.decoders import get
    from pipeline.preprocess import preprocess

    backend = create_backend("onnxruntime", str(model_path), BackendOptions(intra_op_threads=1, inter_op_threads=1,
                                                                      providers=("CPUExecutionProvider",)))
    cap = cv2.VideoCapture(str(VTEST))
    checked = 0
    for _ in range(4):
        ok, image = cap.read()
        assert ok
        output = backend.infer(preprocess(image, spec)[0][None])[0][0]
        pred = output.T
        full_class = pred[:, 4:].argmax(1)
        full_score = pred[np.arange(len(pred)), 4 + full_class]
        for conf in (0.001, 0.05, 0.35, 0.9):
            boxes, score, class_id = get("yolov8").decode(output, conf)
            mask = full_score > conf
            assert np.array_equal(boxes, pred[mask, :4])
            assert np.array_equal(score, full_score[mask])
            assert np.array_equal(class_id, full_class[mask])
            checked += int(mask.sum())
    cap.release()
    backend.close()
    assert checked > 100  # real candidates were compared, not empty sets
