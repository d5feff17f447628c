"""HTTP(S) sources: a URL that serves a whole file is read like a local file, anything else as a
live stream (``live: auto`` probes once; ``live: true``/``false`` decide)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.base import Source, redact_uri, register_source
from pipeline.sources.file import file_source
from pipeline.sources.stream import probe_finite, stream_source


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


def http_source(cfg: SourceConfig, sid: str, stop: threading.Event, on_event: Callable[[str], None]) -> Source:
    """An HTTP(S) URL's status is checked first (a 4xx is an error at once); then it is probed
    once (``live: auto``): a finite file is read like a local file, anything else as a live
    stream; ``live: false`` / ``true`` skip that probe."""
    check_http_status(cfg.uri, cfg.open_timeout_ms / 1000)
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
