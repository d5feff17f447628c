"""Sources: a URI or path picks the kind (file, rtsp/http stream, webcam)."""

from __future__ import annotations

import glob
import threading
from collections.abc import Callable

from pipeline.config import SourceConfig
from pipeline.sources.base import Grab, Source, default_id, local_path, redact_text, redact_uri, source_kind
from pipeline.sources.file import FileSource
from pipeline.sources.stream import StreamSource, backoff_delays, probe_finite


def redacted_config(cfg) -> dict:
    """The resolved config as a mapping for logs and ``inferpath config``, with every source URI
    redacted: credentials never reach a log line or a printout."""
    from pipeline.config import to_dict

    data = to_dict(cfg)
    for src in data.get("sources", []):
        src["uri"] = redact_uri(src["uri"])
    return data


def quiet_native_logs(debug: bool) -> None:
    """Keep FFmpeg's and OpenCV's own stderr lines (``[tcp @ 0x...] Connection ... failed``,
    ``[ WARN:0@0.2] global cap.cpp:212 ...``) out of the output unless debugging (``-v``): a
    failed open is reported once by our own log line instead. Measured with opencv-python 5.0:
    ``OPENCV_FFMPEG_LOGLEVEL`` (read at each open) silences FFmpeg, and
    ``cv2.utils.logging.setLogLevel`` silences OpenCV (``OPENCV_LOG_LEVEL`` alone does not reach
    FFmpeg). A level the user set in the environment is kept."""
    import os

    import cv2

    if debug:
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def unique_ids(paths: list[str]) -> list[str]:
    """Ids for files: the stem, and where stems collide (``a/clip.mp4``, ``b/clip.mp4``), as many
    parent folders as tell them apart (``a_clip``, ``b_clip``), then a number as a last resort."""
    from pathlib import Path

    parts = [Path(p).with_suffix("").parts for p in paths]
    ids = [p[-1] for p in parts]
    depth = 1
    while len(set(ids)) < len(ids) and depth < max(len(p) for p in parts):
        depth += 1
        ids = ["_".join(p[-depth:]).strip("/_") if ids.count(i) > 1 else i for p, i in zip(parts, ids)]
    seen: dict[str, int] = {}
    for n, i in enumerate(ids):
        seen[i] = seen.get(i, 0) + 1
        if seen[i] > 1:
            ids[n] = f"{i}_{seen[i]}"
    return ids


def expand_globs(sources: list[SourceConfig]) -> list[SourceConfig]:
    """A file source whose URI is a glob becomes one source per matching file (sorted)."""
    import dataclasses

    out = []
    for s in sources:
        if source_kind(s.uri) == "file" and any(c in s.uri for c in "*?["):
            matches = sorted(glob.glob(local_path(s.uri)))
            ids = unique_ids(matches)
            out.extend(dataclasses.replace(s, uri=m, id=i) for m, i in zip(matches, ids))
            if not matches:
                out.append(s)  # opening it reports "not found" with the pattern's name
        else:
            out.append(s)
    return out


def create_source(cfg: SourceConfig, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """Build (not open) the source a config describes. An HTTP(S) URL is probed once (``live:
    auto``): a finite file is read like a local file, anything else as a live stream."""
    sid = cfg.id or default_id(cfg.uri)
    kind = source_kind(cfg.uri)
    if kind == "file" or (kind == "http" and cfg.live is False):
        return FileSource(cfg.uri, sid, realtime=cfg.realtime, speed=cfg.speed, loop=cfg.loop,
                          start_frame=cfg.start_frame)
    if kind == "http" and cfg.live == "auto":
        cap = probe_finite(cfg.uri, cfg.open_timeout_ms, cfg.read_timeout_ms)
        if cap is not None:
            return FileSource(cfg.uri, sid, realtime=cfg.realtime, speed=cfg.speed, loop=cfg.loop, cap=cap,
                              start_frame=cfg.start_frame)
    return StreamSource(
        cfg.uri, sid, transport=cfg.transport, open_timeout_ms=cfg.open_timeout_ms,
        read_timeout_ms=cfg.read_timeout_ms, reconnect=cfg.reconnect, stop=stop, on_event=on_event,
    )


__all__ = [
    "FileSource", "Grab", "Source", "StreamSource", "backoff_delays", "create_source", "default_id",
    "expand_globs", "redacted_config", "quiet_native_logs", "redact_text", "redact_uri", "source_kind",
]
