"""The Source interface, the registry of source kinds, URI parsing and credential redaction.

A new kind of source is one module in this package that implements :class:`Source` and calls
:func:`register_source` with its factory and the URIs it claims."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline.errors import SourceError
from pipeline.registry import LAST, Registry

if TYPE_CHECKING:
    from pipeline.config import SourceConfig

_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
# Query parameters whose values are secrets: password=..., api_key=..., X-Amz-Signature=...
SECRET_PARAM = re.compile(
    r"(pass(word|wd)?|pwd|token|secret|key|auth|sig(nature)?|credential|session|cookie)", re.IGNORECASE
)
_PARAM_IN_TEXT = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)=(?P<value>[^&\s'\"]*)")


def _split_url(uri: str) -> tuple[str, str, str, str] | None:
    """``(scheme://, userinfo or '', host[:port], path?query)``; None if ``uri`` is not a URL.

    The authority ends at the first ``/``, ``?`` or ``#``; the userinfo runs to the LAST ``@``
    in it, so an unencoded ``@`` in a password stays inside the userinfo."""
    m = _SCHEME.match(uri)
    if not m:
        return None
    body = uri[m.end():]
    end = min([i for i in (body.find(c) for c in "/?#") if i != -1], default=len(body))
    at = body.rfind("@", 0, end)
    return m.group("scheme"), body[:at] if at != -1 else "", body[at + 1:end], body[end:]


def _redact_params(text: str) -> str:
    return _PARAM_IN_TEXT.sub(
        lambda m: f"{m.group('name')}=***" if SECRET_PARAM.search(m.group("name")) and m.group("value") else m.group(0),
        text)


def redact_uri(uri: str) -> str:
    """Credentials never reach a log or output: ``rtsp://user:p@ss@host/x?token=t`` →
    ``rtsp://***@host/x?token=***`` (userinfo, and the values of secret-looking query parameters)."""
    parts = _split_url(uri)
    if parts is None:
        return uri
    scheme, userinfo, host, rest = parts
    return scheme + ("***@" if userinfo else "") + host + _redact_params(rest)


def redact_text(text: str) -> str:
    """Redact every URL inside free text (e.g. an FFmpeg or OpenCV message)."""
    return _redact_params(_URL_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text))


@dataclass(frozen=True)
class Grab:
    """One frame as a source delivers it."""

    image: np.ndarray
    pts: float  # stream time, seconds
    captured_ns: int  # monotonic clock when it was (or, for a paced file, would have been) captured
    # with the sender's clock: when our reader had the decoded frame (captured_ns is then the
    # camera's capture time, mapped to our clock); None when captured_ns is the reader's own time
    received_ns: int | None = None


class Source(Protocol):
    """open → read (one frame, or None at the end) → close. ``is_live`` picks the defaults.

    Every source has every attribute below (a kind that lacks a notion gives its neutral value),
    so callers never probe."""

    id: str
    uri: str  # redacted
    is_live: bool  # frames arrive in real time (a stream, or a file played ``realtime``): drops allowed
    is_file: bool  # a finite file: opened up front, so a missing or undecodable one fails before any work
    fps: float  # the rate the source reports (files: the header's)
    size: tuple[int, int]  # (width, height), known after open
    claimed_frames: int  # frames the file's header claims (0: unknown, or a stream)
    skipped: int  # frames a paced file skipped because their time had passed (never decoded)
    start_frame: int  # index of the first frame read (a file resumed mid-way); the reader's first seq
    ever_opened: bool  # opened at least once
    down_at_end: bool  # a live stream that was not up when it closed

    @property
    def measured_fps(self) -> float:
        """The rate the source really delivers (0.0 while unknown; always 0.0 for a file)."""
        ...

    def open(self) -> None: ...
    def read(self) -> Grab | None: ...
    def close(self) -> None: ...


SourceFactory = Callable[["SourceConfig", str, threading.Event, Callable[[str], None]], Source]
"""``factory(config, source id, stop event, on_event) -> Source`` (built, not opened)."""

# Each source module registers its kinds (file.py, stream.py), with the URI forms each claims.
SOURCES: Registry[SourceFactory] = Registry("source kind", "pipeline.sources", error=SourceError)
_URI_FORMS: dict[str, tuple[int, Callable[[str], bool]]] = {}  # kind -> (order, claims(uri))


def register_source(kind: str, factory: SourceFactory, claims: Callable[[str], bool] | None = None,
                    order: int = LAST) -> None:
    """Register the factory for a kind of URI, and (``claims``) which URIs are of that kind; a URI
    no kind claims is a file path. ``claims`` is kept when a kind's factory is registered again."""
    SOURCES.register(kind, factory, order)
    if claims is not None:
        _URI_FORMS[kind] = (order, claims)


def source_kind(uri: str) -> str:
    """The registered kind whose URI form ``uri`` has (``rtsp``, ``http``, ``webcam`` ...), else
    ``file`` (a path; ``file://`` URLs are files)."""
    SOURCES.discover()
    for kind, (_, claims) in sorted(_URI_FORMS.items(), key=lambda item: item[1][0]):
        if claims(uri):
            return kind
    return "file"


def local_path(uri: str) -> str:
    """A file source's path: ``file:///a/b.mp4`` → ``/a/b.mp4`` (percent-escapes decoded)."""
    if uri.lower().startswith("file://"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(uri)
        return unquote(parts.path if parts.netloc in ("", "localhost") else f"//{parts.netloc}{parts.path}")
    return uri


def webcam_index(uri: str) -> int:
    """``webcam:2``, ``/dev/video2`` or ``2`` → 2; SourceError for anything else (``webcam:abc``)."""
    m = re.fullmatch(r"(?:webcam:|/dev/video)?(\d+)", uri.strip(), re.IGNORECASE)
    if not m:
        raise SourceError(f"{uri}: not a camera; expected webcam:N, /dev/videoN or N (N a number, e.g. webcam:0)")
    return int(m.group(1))


def default_id(uri: str) -> str:
    """A stable, credential-free id: the file stem, ``webcamN``, or host + path of a stream
    (never the userinfo or the query; the path's extension dropped, so outputs are ``host_x.mp4``,
    not ``host_x.mp4.mp4``)."""
    kind = source_kind(uri)
    if kind == "file":
        return Path(local_path(uri)).stem
    if kind == "webcam":
        return f"webcam{webcam_index(uri)}"
    parts = _split_url(uri)
    host, path = (parts[2], parts[3]) if parts else (uri, "")
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    path = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", path)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", host + path).strip("_") or kind
