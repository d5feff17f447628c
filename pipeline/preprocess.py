"""Letterbox and normalization, driven by the model's spec, and the inverse box mapping.

``letterbox`` resizes keeping the aspect ratio and pads to the model's input size (the
Ultralytics convention: padding split evenly, grey 114). ``to_input`` turns the padded BGR uint8
image into what the model takes: float planes (NCHW, scaled, mean/std, channel order) or, for a
model that normalizes inside its graph, the raw uint8 NHWC frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.model import ModelSpec


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: ``input = frame * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    frame_w: int
    frame_h: int

    def to_frame(self, xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from model-input pixels back to frame pixels, clipped to the frame."""
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.frame_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.frame_h)
        return out

    def to_input(self, xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from frame pixels to model-input pixels (the forward transform)."""
        out = np.asarray(xyxy, dtype=np.float32).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale + self.pad_y
        return out


def letterbox(
    image: np.ndarray, size: tuple[int, int], color: tuple[int, int, int] = (114, 114, 114)
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (H, W, 3) to fit ``size`` = (width, height) keeping aspect, pad the rest."""
    h, w = image.shape[:2]
    tw, th = size
    scale = min(tw / w, th / h)
    nw, nh = round(w * scale), round(h * scale)
    pad_x, pad_y = (tw - nw) / 2, (th - nh) / 2
    top, left = int(round(pad_y - 0.1)), int(round(pad_x - 0.1))
    bottom, right = th - nh - top, tw - nw - left
    if (nw, nh) != (w, h):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return padded, Letterbox(scale=scale, pad_x=float(left), pad_y=float(top), frame_w=w, frame_h=h)


def to_input(padded_bgr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """One model input item (no batch dim) from a letterboxed BGR uint8 image.

    Float input is built plane by plane: each uint8 channel is converted into its float plane of
    the output and scaled there, in place (``(x * scale - mean) / std``, in float32). Measured on
    the bundled 416x416 model (``docs/bench/outputs.md``): 0.2 ms of CPU a frame against 1.0 to
    1.4 ms for ``cv2.dnn.blobFromImage``, with the same values bit for bit when mean is 0 and std 1.
    """
    if spec.layout == "NHWC" and spec.input_dtype == "uint8":
        return padded_bgr if spec.color == "BGR" else padded_bgr[..., ::-1]
    planes = cv2.split(padded_bgr)  # B, G, R
    if spec.color == "RGB":
        planes = planes[::-1]
    h, w = padded_bgr.shape[:2]
    out = np.empty((3, h, w), np.float32)
    for c, plane in enumerate(planes):
        o = out[c]
        o[...] = plane
        o *= spec.scale
        if spec.mean[c]:
            o -= spec.mean[c]
        if spec.std[c] != 1.0:
            o /= spec.std[c]
    if spec.layout == "NHWC":
        out = np.ascontiguousarray(out.transpose(1, 2, 0))
    return out.astype(np.float16) if spec.input_dtype == "float16" else out


def preprocess(image_bgr: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, Letterbox]:
    """Letterbox + normalize one frame: the exact path the pipeline, calibration and tests use."""
    padded, lb = letterbox(image_bgr, spec.input_size, spec.letterbox_color)
    return to_input(padded, spec), lb
