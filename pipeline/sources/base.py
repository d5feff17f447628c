"""The Source interface, URI parsing and credential redaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/]*@)")
_ANY_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^@/\s]*@")


def redact_uri(uri: str) -> str:
    """``rtsp://user:pass@host/x`` → ``rtsp://***@host/x``: credentials never reach a log or output."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", uri)


def redact_text(text: str) -> str:
    """Redact every URL userinfo inside free text (e.g. an FFmpeg or OpenCV message)."""
    return _ANY_URL_USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


@dataclass(frozen=True)
class Grab:
    """One frame as a source delivers it."""

    image: np.ndarray
    pts: float  # stream time, seconds
    captured_ns: int  # monotonic clock when it was (or, for a paced file, would have been) captured


class Source(Protocol):
    """open → read (one frame, or None at the end) → close. ``is_live`` picks the defaults."""

    id: str
    uri: str  # redacted
    is_live: bool
    fps: float
    size: tuple[int, int]  # (width, height), known after open

    def open(self) -> None: ...
    def read(self) -> Grab | None: ...
    def close(self) -> None: ...


def source_kind(uri: str) -> str:
    """``file``, ``rtsp``, ``http`` or ``webcam`` from a URI or path."""
    low = uri.lower()
    if low.startswith(("rtsp://", "rtsps://", "rtmp://", "udp://", "srt://")):
        return "rtsp"
    if low.startswith(("http://", "https://")):
        return "http"
    if low.startswith("webcam:") or re.fullmatch(r"/dev/video\d+", uri) or uri.isdigit():
        return "webcam"
    return "file"


def default_id(uri: str) -> str:
    """A stable, credential-free id: the file stem, ``webcamN``, or host+path of a stream."""
    kind = source_kind(uri)
    if kind == "file":
        return Path(uri).stem
    if kind == "webcam":
        return "webcam" + re.sub(r"\D", "", uri)
    red = redact_uri(uri).split("://", 1)[1].replace("***@", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", red).strip("_") or kind
