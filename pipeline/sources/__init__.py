"""Sources: a URI or path picks the kind (file, rtsp/http stream, webcam); each kind is registered
by its own module (:func:`~pipeline.sources.base.register_source`)."""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable

from pipeline.config import SourceConfig, to_dict
from pipeline.errors import SourceError
from pipeline.sources.base import (
    SECRET_PARAM,
    SOURCES,
    Grab,
    Source,
    SourceFactory,
    default_id,
    local_path,
    redact_text,
    redact_uri,
    register_source,
    source_kind,
)
from pipeline.sources.file import FileSource
from pipeline.sources.http import check_http_status
from pipeline.sources.stream import StreamSource, backoff_delays


def redacted_config(cfg) -> dict:
    """The resolved config as a mapping for logs and ``inferpath config``, with every source URI
    redacted: credentials never reach a log line or a printout."""
    data = to_dict(cfg)
    for src in data.get("sources", []):
        src["uri"] = redact_uri(src["uri"])
    for target in data.get("output", {}).get("events", []):  # MQTT brokers and webhooks (pipeline/events)
        target["url"] = redact_uri(target["url"])
        target["headers"] = {k: "***" if SECRET_PARAM.search(k) else v for k, v in target["headers"].items()}
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
                raise SourceError(f"{s.uri}: the pattern matched no files")
        elif source_kind(s.uri) == "file" and os.path.isdir(local_path(s.uri)):
            from pathlib import Path

            from pipeline.videoio import check_video_path

            check_video_path(Path(local_path(s.uri)))  # a directory: says which glob to give, before any work
        else:
            out.append(s)
    # Files given one by one (--source a/clip.mp4 --source b/clip.mp4) whose stems collide get
    # their folders in the id too, as a glob's do; an explicit id is kept as given.
    ids = [s.id or default_id(s.uri) for s in out]
    clash = [i for i, (s, sid) in enumerate(zip(out, ids))
             if s.id is None and source_kind(s.uri) == "file" and ids.count(sid) > 1]
    for i, new_id in zip(clash, unique_ids([local_path(out[i].uri) for i in clash])):
        out[i] = dataclasses.replace(out[i], id=new_id)
    return out


def source_kinds() -> list[str]:
    return sorted(SOURCES.names())


def create_source(cfg: SourceConfig, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """Build (not open) the source a config describes, by the kind of its URI."""
    kind = source_kind(cfg.uri)
    try:
        factory = SOURCES[kind]
    except KeyError:
        raise SourceError(f"{redact_uri(cfg.uri)}: no source for URIs of kind {kind!r}; "
                          f"expected one of {', '.join(source_kinds())}") from None
    return factory(cfg, cfg.id or default_id(cfg.uri), stop, on_event)


__all__ = [
    "FileSource", "Grab", "Source", "SourceFactory", "StreamSource", "backoff_delays", "create_source", "default_id",
    "check_http_status", "register_source", "source_kinds", "SOURCES",
    "expand_globs", "redacted_config", "quiet_native_logs", "redact_text", "redact_uri", "source_kind",
]
