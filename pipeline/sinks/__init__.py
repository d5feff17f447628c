"""Sinks: where results go. Each source has its own set; a sink error is logged and counted,
never fatal to the pipeline. Outputs are checked for writability before the first frame."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from pipeline.errors import SinkError
from pipeline.frame import Frame

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    def write(self, frame: Frame) -> None: ...
    def close(self) -> None: ...


def ensure_writable_dir(path: Path, what: str = "output.dir") -> Path:
    """Create ``path`` if needed and prove it is writable; one clear SinkError otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{path}: cannot create {what} ({exc.strerror})") from None
    if not path.is_dir():
        raise SinkError(f"{path}: {what} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SinkError(f"{path}: {what} is not writable")
    probe = path / f".inferpath-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SinkError(f"{path}: {what} is not writable ({exc.strerror})") from None
    return path
