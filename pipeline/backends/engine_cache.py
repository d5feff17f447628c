"""TensorRT engine cache: never rebuild needlessly, never load a stale engine.

An engine is only valid for the exact ONNX it was built from, the precision it was built for,
the TensorRT version that built it, the GPU model (name and compute capability) it was tuned on,
and the input shapes of its optimization profile. All of these form an :class:`EngineKey`; the
key's digest names the engine file, and a JSON manifest beside it records the full key plus the
engine's own SHA-256. Loading checks the manifest field by field and the engine bytes against
the recorded hash, so a changed key, a hand-copied engine, or a half-written file is a miss
(and a rebuild), never a crash inside TensorRT.

Writes are atomic (:mod:`pipeline.fileio`: temporary file in the same directory, then ``os.replace``) and the manifest
is written after the engine, so a reader never sees a manifest for an incomplete engine. A
per-key lock file serializes concurrent builds of the same engine on POSIX.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.fileio import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1

ShapeSpec = tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # name, min, opt, max


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two keys are equal iff an engine is interchangeable."""

    onnx_sha256: str
    precision: str  # fp32 | fp16 | int8 (what the engine was built for)
    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    input_shapes: tuple[ShapeSpec, ...]  # per dynamic input: (name, min, opt, max)
    builder: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # other build settings

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shapes"] = [[n, list(a), list(b), list(c)] for n, a, b, c in self.input_shapes]
        d["builder"] = [list(kv) for kv in self.builder]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineKey:
        return cls(
            onnx_sha256=str(d["onnx_sha256"]),
            precision=str(d["precision"]),
            trt_version=str(d["trt_version"]),
            gpu_name=str(d["gpu_name"]),
            compute_capability=str(d["compute_capability"]),
            input_shapes=tuple(
                (str(n), tuple(int(x) for x in a), tuple(int(x) for x in b), tuple(int(x) for x in c))
                for n, a, b, c in d["input_shapes"]
            ),
            builder=tuple((str(k), str(v)) for k, v in d.get("builder", [])),
        )

    def digest(self) -> str:
        """Short stable hash of the canonical JSON of the key (names the engine file)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


@dataclass(frozen=True)
class CacheEntry:
    """Where an engine for a key lives (whether or not it exists yet)."""

    engine_path: Path
    manifest_path: Path
    key: EngineKey


class EngineCache:
    """A directory of ``<stem>-<precision>-<digest>.engine`` files, each with a ``.json`` manifest."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(os.path.expanduser(str(cache_dir)))

    def entry(self, key: EngineKey, stem: str = "model") -> CacheEntry:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "model"
        base = self.dir / f"{safe}-{key.precision}-{key.digest()}"
        return CacheEntry(base.with_suffix(".engine"), base.with_suffix(".json"), key)

    def stale_reason(self, entry: CacheEntry) -> str | None:
        """Why the cached engine for ``entry`` cannot be used (None: it can)."""
        if not entry.engine_path.exists():
            return "no engine file"
        if not entry.manifest_path.exists():
            return "no manifest beside the engine"
        try:
            manifest = json.loads(entry.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return f"unreadable manifest ({exc})"
        if manifest.get("manifest_version") != MANIFEST_VERSION:
            return f"manifest version {manifest.get('manifest_version')!r} != {MANIFEST_VERSION}"
        try:
            recorded = EngineKey.from_dict(manifest["key"])
        except (KeyError, TypeError, ValueError) as exc:
            return f"malformed manifest key ({exc})"
        if recorded != entry.key:
            ours, theirs = entry.key.to_dict(), recorded.to_dict()
            diff = [k for k in ours if ours[k] != theirs.get(k)]
            return "key mismatch in " + ", ".join(diff)
        size = entry.engine_path.stat().st_size
        if size != manifest.get("engine_bytes"):
            return f"engine size {size} != manifest {manifest.get('engine_bytes')}"
        if sha256_file(entry.engine_path) != manifest.get("engine_sha256"):
            return "engine SHA-256 does not match its manifest"
        return None

    def load(self, entry: CacheEntry) -> bytes | None:
        """The engine bytes if the cached engine matches ``entry.key`` exactly, else None."""
        reason = self.stale_reason(entry)
        if reason is not None:
            if entry.engine_path.exists():
                log.info("engine cache: %s is stale (%s); rebuilding", entry.engine_path, reason)
            return None
        return entry.engine_path.read_bytes()

    def store(self, entry: CacheEntry, engine: bytes, info: dict[str, Any] | None = None) -> Path:
        """Write the engine then its manifest, both atomically; returns the engine path."""
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "key": entry.key.to_dict(),
            "engine_bytes": len(engine),
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
            "info": info or {},
        }
        # Remove an old manifest first: between the two writes nothing claims the new engine is valid.
        with contextlib.suppress(FileNotFoundError):
            entry.manifest_path.unlink()
        atomic_write_bytes(entry.engine_path, engine)
        atomic_write_bytes(entry.manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return entry.engine_path

    @contextlib.contextmanager
    def lock(self, entry: CacheEntry) -> Iterator[None]:
        """Hold an exclusive lock for building ``entry`` (POSIX flock; no-op elsewhere)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock_path = entry.engine_path.with_suffix(".lock")
        with open(lock_path, "a+b") as f:
            try:
                import fcntl
            except ImportError:  # Windows: concurrent builds just race; writes stay atomic
                yield
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def get_or_build(
        self, entry: CacheEntry, build: Callable[[], bytes], info: dict[str, Any] | None = None
    ) -> tuple[bytes, bool]:
        """The cached engine, or ``build()``'s result stored for next time. Returns (engine, built)."""
        cached = self.load(entry)
        if cached is not None:
            return cached, False
        with self.lock(entry):
            cached = self.load(entry)  # another process may have built it while we waited
            if cached is not None:
                return cached, False
            engine = build()
            self.store(entry, engine, info)
            return engine, True
