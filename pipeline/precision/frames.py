"""Frames from the user's own video: calibration and held-out (gate) sets, and the calibration reader.

The two sets never share a frame. Both are spread over the whole video, so a clip whose scene
changes (day/night, a crowd arriving) is represented in each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, SourceError
from pipeline.model import ModelSpec
from pipeline.preprocess import preprocess
from pipeline.videoio import count_frames, opened_video, sample_frames

CALIB_PHASE, GATE_PHASE = 0.25, 0.75  # where in each stride frames are taken: disjoint sets
MIN_VIDEO_FRAMES = 16  # at least 8 frames to calibrate on and 8 other frames to check


def spread_indices(total: int, n: int, phase: float) -> list[int]:
    """``n`` frame indices spread evenly over ``total`` frames, each at ``phase`` of its stride.

    Calibration uses phase 0.25 and the gate 0.75, so the two never share a frame while the video
    has at least twice as many frames as either set asks for.
    """
    if total <= 0 or n <= 0:
        return []
    n = min(n, total)
    return sorted({min(total - 1, int((i + phase) * total / n)) for i in range(n)})




def read_frames_at(video: str | Path, indices: Iterable[int]) -> tuple[list[np.ndarray], list[int]]:
    """Decode the frames at ``indices`` (sequential ``grab``: exact for every codec).

    Returns (frames, their indices); stops early at a truncated end. SourceError if none decode.
    """
    with opened_video(video) as cap:
        got = list(sample_frames(cap, indices))
    if not got:
        raise SourceError(f"{Path(video)}: no frames could be decoded")
    return [frame for _, frame in got], [i for i, _ in got]


def read_frames(
    video: str | Path, n: int, phase: float = CALIB_PHASE, exclude: Iterable[int] = ()
) -> tuple[list[np.ndarray], list[int]]:
    """Decode ``n`` BGR frames spread over ``video`` (see :func:`spread_indices`), skipping ``exclude``."""
    excluded = set(exclude)
    wanted = [i for i in spread_indices(count_frames(video), n, phase) if i not in excluded]
    return read_frames_at(video, wanted)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def read_image_dir(directory: str | Path, flag: str = "--calib-frames") -> tuple[list[np.ndarray], list[str]]:
    """Every image in ``directory`` (by name; :data:`IMAGE_SUFFIXES`) as BGR frames, and their names:
    e.g. the frames the FP32 canary saved where the quantized model disagreed. A missing or empty
    directory, or a file that does not decode, is one ConfigError line."""
    import cv2

    d = Path(directory).expanduser()
    if not d.is_dir():
        raise ConfigError(f"{flag}: {d}: no such directory")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{flag}: {d}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    frames = []
    for p in files:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"{flag}: {p}: cannot be decoded as an image")
        frames.append(image)
    return frames, [p.name for p in files]


def held_out_indices(total: int, n: int, exclude: Iterable[int]) -> list[int]:
    """``n`` indices spread evenly over the frames of ``range(total)`` not in ``exclude`` (all when fewer)."""
    pool = sorted(set(range(total)) - set(exclude))
    if n >= len(pool):
        return pool
    return [pool[min(len(pool) - 1, int((i + 0.5) * len(pool) / n))] for i in range(n)]


def split_video(video: str | Path, n_calib: int, n_gate: int) -> tuple[list[int], list[int]]:
    """(calibration indices, held-out indices) for ``video``: disjoint, each spread over the whole clip.

    Calibration takes at most half the video, so the gate always keeps held-out frames. A video
    shorter than :data:`MIN_VIDEO_FRAMES` is refused with one line.
    """
    total = count_frames(video)
    if total < MIN_VIDEO_FRAMES:
        raise SourceError(
            f"{video}: too short to calibrate on: {total} frame(s); quantize needs at least {MIN_VIDEO_FRAMES} "
            "(half to calibrate on, half held out for the accuracy gate)"
        )
    calib = spread_indices(total, min(n_calib, total // 2), CALIB_PHASE)
    return calib, held_out_indices(total, n_gate, calib)


class FrameCalibrationReader:
    """ONNX Runtime calibration data: one preprocessed frame per call, batch of 1.

    Frames go through :func:`pipeline.preprocess.preprocess` with the model's spec, so
    calibration sees exactly the tensors the pipeline will feed.
    """

    def __init__(self, frames: Sequence[np.ndarray], spec: ModelSpec, input_name: str) -> None:
        self._frames, self._spec, self._name = list(frames), spec, input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._frames):
            return None
        tensor, _ = preprocess(self._frames[self._i], self._spec)
        self._i += 1
        return {self._name: tensor[None]}

    def rewind(self) -> None:
        self._i = 0


def calibration_reader(frames: Sequence[np.ndarray], spec: ModelSpec, input_name: str) -> Any:
    """A real ``CalibrationDataReader`` subclass instance (ORT checks the type)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(FrameCalibrationReader, CalibrationDataReader):
        pass

    return _Reader(frames, spec, input_name)
