"""Sources: a URI or path picks the kind (file, rtsp/http stream, webcam)."""

from __future__ import annotations

import glob
import threading
from collections.abc import Callable

from pipeline.config import SourceConfig
from pipeline.sources.base import Grab, Source, default_id, redact_text, redact_uri, source_kind
from pipeline.sources.file import FileSource
from pipeline.sources.stream import StreamSource, backoff_delays


def expand_globs(sources: list[SourceConfig]) -> list[SourceConfig]:
    """A file source whose URI is a glob becomes one source per matching file (sorted)."""
    import dataclasses

    out = []
    for s in sources:
        if source_kind(s.uri) == "file" and any(c in s.uri for c in "*?["):
            matches = sorted(glob.glob(s.uri))
            out.extend(dataclasses.replace(s, uri=m, id=None) for m in matches)
            if not matches:
                out.append(s)  # opening it reports "not found" with the pattern's name
        else:
            out.append(s)
    return out


def create_source(cfg: SourceConfig, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """Build (not open) the source a config describes."""
    sid = cfg.id or default_id(cfg.uri)
    kind = source_kind(cfg.uri)
    if kind == "file":
        return FileSource(cfg.uri, sid, realtime=cfg.realtime, speed=cfg.speed, loop=cfg.loop)
    return StreamSource(
        cfg.uri, sid, transport=cfg.transport, open_timeout_ms=cfg.open_timeout_ms,
        read_timeout_ms=cfg.read_timeout_ms, reconnect=cfg.reconnect, stop=stop, on_event=on_event,
    )


__all__ = [
    "FileSource", "Grab", "Source", "StreamSource", "backoff_delays", "create_source", "default_id",
    "expand_globs", "redact_text", "redact_uri", "source_kind",
]
