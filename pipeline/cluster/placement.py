"""Which worker runs which stream: by cost, frame rate x pixels, the heaviest first onto the
least loaded worker (longest-processing-time first, within 4/3 of the best split). A stream a
service adds while it runs goes to the worker with the fewest running streams
(:func:`least_loaded`)."""

from __future__ import annotations

import logging

from pipeline.config import SourceConfig
from pipeline.sources.base import local_path, source_kind

log = logging.getLogger(__name__)
LIVE_GUESS = (1280, 720, 25.0)  # a camera's size and rate are only known once it is open (on a worker)


def stream_cost(scfg: SourceConfig) -> tuple[float, str]:
    """``(frames per second x pixels per frame, how it was found)``: a file's header is read here
    (no frame is decoded); a live stream is guessed at 1280x720, 25 fps."""
    if source_kind(scfg.uri) == "file":
        from pipeline.videoio import probe_video

        info = probe_video(local_path(scfg.uri))
        if info is not None and info.width > 0 and info.height > 0:
            fps, w, h = info.fps or 25.0, info.width, info.height
            return fps * w * h * (scfg.speed if scfg.realtime else 1.0), f"{w}x{h} at {fps:.3g} fps"
    w, h, fps = LIVE_GUESS
    return fps * w * h, f"guessed {w}x{h} at {fps:g} fps"


def assign(costs: dict[str, float], workers: int) -> list[list[str]]:
    """Stream ids per worker: heaviest first, each onto the worker with the least cost so far
    (ties: the lower index); the input order breaks ties between equal streams."""
    loads = [0.0] * workers
    out: list[list[str]] = [[] for _ in range(workers)]
    for sid in sorted(costs, key=lambda s: -costs[s]):
        i = min(range(workers), key=lambda k: (loads[k], k))
        out[i].append(sid)
        loads[i] += costs[sid]
    return out


def least_loaded(loads: dict[int, list[float]]) -> int:
    """The worker a stream added at runtime starts on, from each worker's running streams' costs:
    the fewest streams; ties: the least summed cost (as :func:`assign` measures it), then the
    lower index. Streams, not measured frames/s: a camera just added has delivered nothing yet,
    and a worker's rate says how busy it is only once it is saturated."""
    return min(loads, key=lambda i: (len(loads[i]), sum(loads[i]), i))


__all__ = ["assign", "least_loaded", "stream_cost", "LIVE_GUESS"]
