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
    from pipeline.metrics import Metrics
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
    way to ask the pipeline to stop (a display's 'q' key), the run's metrics (what a sink counts:
    events dropped, clips written)."""

    output: OutputConfig
    names: tuple[str, ...]
    request_stop: Callable[..., None]
    metrics: Metrics | None = None
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


def _clips(src: Source, scfg: SourceConfig, ctx: SinkContext) -> Sink | None:
    if ctx.output.clips is None:
        return None
    from pipeline.events.clips import clip_sink

    return clip_sink(src, scfg, ctx)


def _events(src: Source, scfg: SourceConfig, ctx: SinkContext) -> Sink | None:
    if not ctx.output.events:
        return None
    from pipeline.events import event_sinks

    return event_sinks(src, ctx)


# In delivery order. Each factory decides from the output settings whether it is on. Clips come
# first: they name an event's clip before the JSON lines and the event sinks send the event.
_REGISTRY: dict[str, SinkFactory] = {"clips": _clips, "jsonl": _jsonl, "video": _video, "display": _display,
                                     "events": _events}


def register_sink(name: str, factory: SinkFactory) -> None:
    """Register a sink kind; its factory is called for every source of every run."""
    _REGISTRY[name] = factory


def sink_names() -> list[str]:
    return list(_REGISTRY)


def create_sinks(src: Source, scfg: SourceConfig, ctx: SinkContext) -> list[Sink]:
    """Every registered sink that is on for ``src``, in registry order."""
    sinks = (factory(src, scfg, ctx) for factory in _REGISTRY.values())
    return [s for s in sinks if s is not None]


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
