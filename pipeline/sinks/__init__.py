"""Sinks: where results go. Each source has its own set; a sink error is logged and counted,
never fatal to the pipeline. Outputs are checked for writability before the first frame.

Sinks are registered by name (:func:`register_sink`), as backends are; a new kind of output is
one module and one ``register_sink`` call."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import SinkError
from pipeline.frame import Frame

if TYPE_CHECKING:
    from pipeline.config import OutputConfig, SourceConfig
    from pipeline.sources.base import Source

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where one source's results go. ``write`` runs in the sink thread; so does ``close``, at the
    end of the source's stream. A sink that must run in the main thread (a display window) sets
    ``needs_main_thread``: the pipeline's watch loop then calls ``pump`` there, and ``destroy``
    once the run has ended. :class:`SinkBase` gives the defaults."""

    name: str
    path: Path | None  # the file it writes (None: none); listed in the summary's outputs
    needs_main_thread: bool

    @property
    def written(self) -> int:
        """Frames (or lines) written so far: a file sink that wrote none is removed at the end."""
        ...

    def write(self, frame: Frame) -> None: ...
    def close(self) -> None: ...
    def pump(self) -> None: ...
    def destroy(self) -> None: ...


class SinkBase:
    """Defaults for a sink that writes no file, runs in the sink thread, and counts ``written``."""

    name = "sink"
    path: Path | None = None
    needs_main_thread = False
    written = 0

    def pump(self) -> None:
        """Main thread, for sinks that need it; nothing to do otherwise."""

    def destroy(self) -> None:
        """Main thread, after the run, for sinks that need it; nothing to do otherwise."""


@dataclass
class SinkContext:
    """What a sink factory may use besides the source: the output settings, the class names, a
    way to ask the pipeline to stop (a display's 'q' key)."""

    output: OutputConfig
    names: tuple[str, ...]
    request_stop: Callable[..., None]
    _checked: set[Path] = field(default_factory=set)

    def directory(self, scfg: SourceConfig) -> Path:
        """The source's output directory, created and proved writable (once per directory)."""
        directory = Path(scfg.output_dir or self.output.dir).expanduser()
        if directory not in self._checked:
            ensure_writable_dir(directory)
            self._checked.add(directory)
        return directory


SinkFactory = Callable[["Source", "SourceConfig", SinkContext], "Sink | None"]
"""``factory(source, source config, context)`` -> a sink, or None when it is off for this run."""


def _jsonl(src: Source, scfg: SourceConfig, ctx: SinkContext) -> Sink | None:
    if not ctx.output.jsonl:
        return None
    from pipeline.sinks.jsonl import JsonlSink

    return JsonlSink(ctx.directory(scfg) / f"{src.id}.jsonl", src.id, ctx.names)


def _video(src: Source, scfg: SourceConfig, ctx: SinkContext) -> Sink | None:
    if not ctx.output.video:
        return None
    from pipeline.sinks.lazy_video import LazyVideoSink

    return LazyVideoSink.for_source(src, ctx.directory(scfg) / f"{src.id}.mp4", ctx.names, ctx.output.video_codec)


def _display(src: Source, scfg: SourceConfig, ctx: SinkContext) -> Sink | None:
    if not ctx.output.display:
        return None
    from pipeline.sinks.display import DisplaySink, display_available

    if not display_available():
        log.warning("output.display: no display ($DISPLAY unset); display sink skipped")
        return None
    return DisplaySink(src.id, ctx.names, ctx.request_stop)


# In delivery order. Each factory decides from the output settings whether it is on.
_REGISTRY: dict[str, SinkFactory] = {"jsonl": _jsonl, "video": _video, "display": _display}
_PIXELS: set[str] = {"video", "display"}  # sinks that need the frame's pixels, not only its results


def register_sink(name: str, factory: SinkFactory, pixels: bool = False) -> None:
    """Register a sink kind; its factory is called for every source of every run. ``pixels``: it
    needs the frame's image (a video, a window), so on a cluster it runs on the worker that has
    the frames; the others (results only: JSON lines, events) run on the driver."""
    _REGISTRY[name] = factory
    if pixels:
        _PIXELS.add(name)
    else:
        _PIXELS.discard(name)


def sink_names() -> list[str]:
    return list(_REGISTRY)


def create_sinks(src: Source, scfg: SourceConfig, ctx: SinkContext, pixels: bool | None = None) -> list[Sink]:
    """Every registered sink that is on for ``src``, in registry order; ``pixels`` True or False:
    only the sinks that need the frame's image, or only those that do not (see :func:`register_sink`)."""
    factories = (f for name, f in _REGISTRY.items() if pixels is None or (name in _PIXELS) == pixels)
    sinks = (factory(src, scfg, ctx) for factory in factories)
    return [s for s in sinks if s is not None]


def close_sinks(sinks_by_source: dict[str, list[Sink]]) -> None:
    """Close every sink; a failure is logged and the others still close. The one place sinks are
    closed: by the sink stage at a stream's end, and by the engine at the run's end (closing
    twice is harmless: every sink's ``close`` is idempotent)."""
    for sid, sinks in sinks_by_source.items():
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("%s: closing %s sink failed: %s", sid, sink.name, exc)


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
