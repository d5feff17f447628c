from __future__ import annotations

import numpy as np
import pytest

from pipeline.model import ModelSpec
from pipeline.preprocess import letterbox, preprocess, to_input
from tests.conftest import VTEST


@pytest.mark.parametrize(
    "frame_hw, size",
    [((576, 768), (416, 416)), ((528, 720), (416, 416)), ((240, 320), (640, 640)), ((1080, 1920), (640, 384)),
     ((416, 416), (416, 416)), ((100, 37), (320, 320))],
)
def test_letterbox_shape_and_round_trip(frame_hw, size):
    h, w = frame_hw
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    padded, lb = letterbox(image, size)
    assert padded.shape == (size[1], size[0], 3)
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.1, w * 0.5, h * 0.9], [1, 2, 3, 4]], np.float32)
    back = lb.to_frame(lb.to_input(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # The whole frame maps inside the padded input, centred (padding split evenly, within a pixel).
    full = lb.to_input(np.array([[0, 0, w, h]], np.float32))[0]
    assert full[0] >= 0 and full[1] >= 0 and full[2] <= size[0] + 0.5 and full[3] <= size[1] + 0.5
    assert abs(full[0] - (size[0] - full[2])) <= 1.0 and abs(full[1] - (size[1] - full[3])) <= 1.0


def test_letterbox_pads_with_grey_and_keeps_pixels():
    image = np.full((100, 200, 3), 7, np.uint8)
    padded, lb = letterbox(image, (200, 200))
    assert lb.scale == 1.0 and lb.pad_y == 50
    assert (padded[:50] == 114).all() and (padded[150:] == 114).all()
    assert (padded[50:150] == 7).all()


def test_to_frame_clips_to_frame():
    _, lb = letterbox(np.zeros((576, 768, 3), np.uint8), (416, 416))
    out = lb.to_frame(np.array([[-20, -20, 500, 500]], np.float32))
    assert out.min() >= 0 and out[0, 2] <= 768 and out[0, 3] <= 576


def test_normalization_matches_reference():
    rng = np.random.default_rng(1)
    padded = rng.integers(0, 255, (32, 48, 3), np.uint8)
    spec = ModelSpec(input_size=(48, 32), color="RGB", scale=1 / 255, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225))
    ref = ((padded[..., ::-1] / 255.0 - spec.mean) / spec.std).transpose(2, 0, 1)
    np.testing.assert_allclose(to_input(padded, spec), ref, atol=1e-5)
    plain = ModelSpec(input_size=(48, 32), color="BGR")
    np.testing.assert_allclose(to_input(padded, plain), padded.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_uint8_nhwc_input_passes_frame_through():
    padded = np.random.default_rng(2).integers(0, 255, (16, 16, 3), np.uint8)
    spec = ModelSpec(input_size=(16, 16), layout="NHWC", input_dtype="uint8", color="BGR")
    out = to_input(padded, spec)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3) and (out == padded).all()


def test_preprocess_bundled_spec(spec):
    tensor, lb = preprocess(np.zeros((576, 768, 3), np.uint8), spec)
    assert tensor.shape == (3, 416, 416) and tensor.dtype == np.float32
    assert lb.frame_w == 768 and lb.frame_h == 576


def test_planewise_input_equals_opencv_blob_on_real_frames(spec):
    """The plane-by-plane conversion gives the very values cv2.dnn.blobFromImage gave (the path it
    replaced for speed), bit for bit, on real frames with the bundled model's spec."""
    import cv2

    cap = cv2.VideoCapture(str(VTEST))
    for _ in range(5):
        ok, image = cap.read()
        assert ok
        padded, _ = letterbox(image, spec.input_size, spec.letterbox_color)
        rgb = np.ascontiguousarray(padded[..., ::-1]) if spec.color == "RGB" else padded
        blob = cv2.dnn.blobFromImage(rgb, spec.scale, mean=(0, 0, 0), swapRB=False)[0]
        out = to_input(padded, spec)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert np.array_equal(out, blob)
    cap.release()
