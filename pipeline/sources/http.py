"""HTTP(S) sources: a URL that serves a whole file is read like a local file, anything else as a
live stream (``live: auto`` probes once; ``live: true``/``false`` decide)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from pipeline.config import SourceConfig
from pipeline.sources.base import Source, register_source
from pipeline.sources.file import file_source
from pipeline.sources.stream import probe_finite, stream_source


def http_source(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """An HTTP(S) URL is probed once (``live: auto``): a finite file is read like a local file,
    anything else as a live stream; ``live: false`` / ``true`` skip the probe."""
    if cfg.live is False:
        return file_source(cfg, sid, stop, on_event)
    if cfg.live == "auto":
        cap = probe_finite(cfg.uri, cfg.open_timeout_ms, cfg.read_timeout_ms)
        if cap is not None:
            return file_source(cfg, sid, stop, on_event, cap=cap)
    return stream_source(cfg, sid, stop, on_event)


def _is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


register_source("http", http_source, _is_http, order=20)
