"""Atomic file writes: readers see the old file or the whole new one, never a part.

Everything the tools write for later runs (engines and their manifests, timing caches, prepared
ONNX models) goes through here: the data goes to a hidden temp file in the target's directory (same
filesystem, so ``os.replace`` is atomic), is flushed to disk, and only then replaces the target. On
any failure, the temp file is removed and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temp_path_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A unique hidden temp name in ``path``'s directory, ending in ``suffix``.

    Unlike ``mkstemp`` (mode 0600), a file created there gets the usual umask permissions.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path beside ``path`` to write to; moved onto ``path`` only if the block succeeds.

    Creates the parent directory. Use it when a library writes the file (``onnx.save``, ONNX
    Runtime's quantizer); ``suffix`` keeps an extension such tools look at (``.onnx``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path, suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    path = Path(path)
    with staged_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return path


__all__ = ["atomic_write_bytes", "staged_path", "temp_path_beside"]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (models can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
