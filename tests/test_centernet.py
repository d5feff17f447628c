"""The optional CenterNet model (pipeline/models/centernet_coco.onnx): what the pipeline detects
with it on real frames equals an independent decoding of the same network's heads.

The independent path shares nothing with the pipeline's but the ONNX weights: its own letterbox,
the network's two head tensors (the sigmoid heat map and the box-side distances, exposed as
extra outputs of an in-memory copy of the graph), and CenterNet's decoding in numpy (3x3 peaks,
top 100 over classes x cells, cell * stride -/+ distances), then the inverse letterbox."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from pipeline.config import build_config
from pipeline.model import bundled_model_path
from pipeline.runtime import Pipeline
from tests.conftest import MEGAMIND, VTEST

MODEL = bundled_model_path().parent / "centernet_coco.onnx"
HEAT, SIDES = "tower_0/Sigmoid:0", "tower_0/mul:0"  # [1,80,128,128], [1,4,128,128]
SIZE, STRIDE, CONF = 512, 4, 0.35


@pytest.fixture(scope="module")
def heads_session() -> ort.InferenceSession:
    model = onnx.load(str(MODEL))
    for name in (HEAT, SIDES):
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def reference(sess: ort.InferenceSession, bgr: np.ndarray) -> np.ndarray:
    """[N, 6] (x1, y1, x2, y2 in frame pixels, score, class), score >= CONF, best first."""
    h, w = bgr.shape[:2]
    r = min(SIZE / w, SIZE / h)
    nw, nh = round(w * r), round(h * r)
    left, top = (SIZE - nw) // 2, (SIZE - nh) // 2
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))
    heat, sides = outs[HEAT][0], outs[SIDES][0].reshape(4, -1)
    c, gh, gw = heat.shape
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    hmax = np.max([padded[:, dy:dy + gh, dx:dx + gw] for dy in range(3) for dx in range(3)], axis=0)
    peaks = np.where(heat == hmax, heat, 0.0).ravel()
    top100 = np.argsort(-peaks, kind="stable")[:100]
    top100 = top100[peaks[top100] >= CONF]
    cls, cell = top100 // (gh * gw), top100 % (gh * gw)
    cx, cy = (cell % gw) * STRIDE, (cell // gw) * STRIDE
    box = np.stack([cx - sides[0, cell], cy - sides[1, cell], cx + sides[2, cell], cy + sides[3, cell]], 1)
    box = (box - [left, top, left, top]) / r
    box[:, [0, 2]] = box[:, [0, 2]].clip(0, w)
    box[:, [1, 3]] = box[:, [1, 3]].clip(0, h)
    return np.concatenate([box, peaks[top100, None], cls[:, None]], 1)


@pytest.mark.parametrize("video, start", [(VTEST, 100), (MEGAMIND, 200)])
def test_pipeline_detections_equal_an_independent_decoder(tmp_path, heads_session, video, start):
    cfg = build_config({
        "sources": [{"uri": str(video), "id": "clip", "start_frame": start, "max_frames": start + 3}],
        "model": {"path": str(MODEL)},
        "output": {"dir": str(tmp_path), "video": False}, "pipeline": {"progress": False},
    })
    with Pipeline(cfg) as p:
        results = list(p.results(images=True))
    assert len(results) == 3
    for r in results:
        ref = reference(heads_session, r.image)
        d = r.detections
        order = np.argsort(-d.confidence, kind="stable")
        assert len(d) == len(ref) > 0, (r.seq, len(d), len(ref))
        np.testing.assert_array_equal(d.class_id[order], ref[:, 5].astype(np.int64))
        np.testing.assert_allclose(d.confidence[order], ref[:, 4], atol=1e-4)
        np.testing.assert_allclose(d.xyxy[order], ref[:, :4], atol=0.05)
    if video == VTEST:  # a pedestrian street: several people in every frame
        assert all((r.detections.class_id == 0).sum() >= 4 for r in results)
