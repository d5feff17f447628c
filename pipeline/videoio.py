"""Opening a local video file and sampling frames from it, for the tools that read videos outside
the frame path: calibration and gate frames (:mod:`pipeline.precision.frames`), drift profiles
(:mod:`pipeline.drift`), stream placement and benchmarks.

Files are opened through OpenCV's FFmpeg backend, the one the pipeline's file source reads with,
so a tool sees the same frames as a run. A file that is missing or cannot be opened is one
:class:`~pipeline.errors.SourceError` line naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import SourceError


def check_video_path(path: Path) -> None:
    """SourceError unless ``path`` is an existing file."""
    if not path.exists():
        raise SourceError(f"{path}: video file not found")
    if path.is_dir():
        exts = sorted({f.suffix.lower() for f in path.iterdir() if f.is_file() and f.suffix})
        pattern = f"{path}/*{exts[0]}" if len(exts) == 1 else f"{path}/*.jpg"
        raise SourceError(f"{path}: a directory, not a video; to run on the files in it give a glob: "
                          f"--source '{pattern}'")
    if not path.is_file():
        raise SourceError(f"{path}: not a file; expected a video file")


def open_video(path: str | Path) -> Any:
    """An opened ``cv2.VideoCapture`` of the file ``path`` (the caller releases it), or SourceError."""
    import cv2

    p = Path(path)
    check_video_path(p)
    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{p}: cannot open as a video (not a video file, or a codec OpenCV lacks)")
    return cap


@contextlib.contextmanager
def opened_video(path: str | Path) -> Iterator[Any]:
    """:func:`open_video` as a context manager: the capture is released on exit."""
    cap = open_video(path)
    try:
        yield cap
    finally:
        cap.release()


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says (no frame decoded). ``claimed_frames`` can lie: a truncated
    file's header still claims the whole clip; :func:`count_frames` counts what decodes."""

    fps: float  # 0 when the header has none
    width: int
    height: int
    claimed_frames: int  # 0 when unknown


def video_info(cap: Any) -> VideoInfo:
    """The header of an opened capture."""
    import cv2

    return VideoInfo(float(cap.get(cv2.CAP_PROP_FPS) or 0.0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)))


def probe_video(path: str | Path) -> VideoInfo | None:
    """The header of the file ``path``, or None when it cannot be opened (for callers that fall back)."""
    try:
        with opened_video(path) as cap:
            return video_info(cap)
    except SourceError:
        return None


def sample_frames(cap: Any, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, BGR frame)`` for the frames at ``indices`` (every frame when None), in order.

    Every frame is grabbed (sequential ``grab``: exact for every codec, unlike seeking) and only the
    wanted ones are decoded. Stops after the last wanted index, or where the file stops decoding.
    """
    wanted = None if indices is None else set(indices)
    last = max(wanted, default=-1) if wanted is not None else None
    index = 0
    while last is None or index <= last:
        if not cap.grab():
            return
        if wanted is None or index in wanted:
            ok, image = cap.retrieve()
            if ok and image is not None:
                yield index, image
        index += 1


def count_frames(path: str | Path) -> int:
    """Frames of ``path`` that decode, counted with ``grab`` (about 2 ms a frame).

    A container's frame count can lie (``sample_videos/tree.avi`` claims 444 and 68 decode).
    """
    total = 0
    with opened_video(path) as cap:
        while cap.grab():
            total += 1
    return total


__all__ = ["VideoInfo", "count_frames", "open_video", "opened_video", "probe_video", "sample_frames", "video_info"]
