"""Sources: a URI or path picks the kind (file, rtsp/http stream, webcam)."""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
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


SourceFactory = Callable[[SourceConfig, str, threading.Event, Callable[[str], None]], Source]
"""``factory(config, source id, stop event, on_event) -> Source`` (built, not opened)."""


def _file(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None],
          cap=None) -> Source:
    return FileSource(cfg.uri, sid, realtime=cfg.realtime, speed=cfg.speed, loop=cfg.loop, cap=cap,
                      start_frame=cfg.start_frame)


def _stream(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    return StreamSource(
        cfg.uri, sid, transport=cfg.transport, open_timeout_ms=cfg.open_timeout_ms,
        read_timeout_ms=cfg.read_timeout_ms, reconnect=cfg.reconnect, stop=stop, on_event=on_event,
    )


def check_http_status(uri: str, timeout_s: float) -> None:
    """Ask an HTTP(S) server for ``uri`` once, before FFmpeg does: a 4xx answer (404 Not Found,
    401 Unauthorized, ...) will not change on a retry, so it is one SourceError line at once
    instead of a camera retried for a minute. Only the status line and headers are read. Network
    errors, 5xx and anything this probe cannot judge (TLS FFmpeg accepts and urllib does not, a
    server that rejects the request form) are left to the stream's open and its retries."""
    import base64
    import http
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        parts = urllib.parse.urlsplit(uri)
        headers = {"User-Agent": "inferpath", "Range": "bytes=0-0"}
        if parts.username is not None:  # urllib takes credentials as a header, not in the URL
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        req = urllib.request.Request(urllib.parse.urlunsplit(parts), headers=headers)
        urllib.request.urlopen(req, timeout=timeout_s).close()
    except urllib.error.HTTPError as exc:
        exc.close()
        if 400 <= exc.code < 500 and exc.code != 416:  # 416: the server dislikes the probe's Range
            try:
                reason = http.HTTPStatus(exc.code).phrase
            except ValueError:
                reason = str(exc.reason)
            raise SourceError(f"{redact_uri(uri)}: HTTP {exc.code} {reason}") from None
    except Exception:  # a network error: the stream's own open and its retries report it
        return


def _http(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """An HTTP(S) URL's status is checked first (a 4xx is an error at once); then it is probed
    once (``live: auto``): a finite file is read like a local file, anything else as a live
    stream; ``live: false`` / ``true`` skip that probe."""
    check_http_status(cfg.uri, cfg.open_timeout_ms / 1000)
    if cfg.live is False:
        return _file(cfg, sid, stop, on_event)
    if cfg.live == "auto":
        cap = probe_finite(cfg.uri, cfg.open_timeout_ms, cfg.read_timeout_ms)
        if cap is not None:
            return _file(cfg, sid, stop, on_event, cap=cap)
    return _stream(cfg, sid, stop, on_event)


_REGISTRY: dict[str, SourceFactory] = {"file": _file, "http": _http, "rtsp": _stream, "webcam": _stream}


def register_source(kind: str, factory: SourceFactory) -> None:
    """Register the factory for a kind of URI (see :func:`~pipeline.sources.base.source_kind`)."""
    _REGISTRY[kind] = factory


def source_kinds() -> list[str]:
    return sorted(_REGISTRY)


def create_source(cfg: SourceConfig, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """Build (not open) the source a config describes, by the kind of its URI."""
    kind = source_kind(cfg.uri)
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise SourceError(f"{redact_uri(cfg.uri)}: no source for URIs of kind {kind!r}; "
                          f"expected one of {', '.join(source_kinds())}") from None
    return factory(cfg, cfg.id or default_id(cfg.uri), stop, on_event)


__all__ = [
    "FileSource", "Grab", "Source", "SourceFactory", "StreamSource", "backoff_delays", "create_source", "default_id",
    "check_http_status", "register_source", "source_kinds",
    "expand_globs", "redacted_config", "quiet_native_logs", "redact_text", "redact_uri", "source_kind",
]
