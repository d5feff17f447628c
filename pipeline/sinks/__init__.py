"""Sinks: where results go. Each source has its own set; a sink error is logged and counted,
never fatal to the pipeline. Outputs are checked for writability before the first frame.

Sinks are registered by name (:func:`register_sink`), as backends are: a new kind of output is
one module in this package that calls ``register_sink`` (found by :class:`~pipeline.registry.Registry`),
plus its switch in ``OutputConfig``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import SinkError
from pipeline.frame import Frame
from pipeline.registry import LAST, Registry

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


@dataclass(frozen=True)
class SinkKind:
    """A registered sink: its factory, and whether it needs the frame's image (``pixels``: a video,
    a window) or only its results (JSON lines, events)."""

    factory: SinkFactory
    pixels: bool = False


# Each module of this package registers its own kind (jsonl.py, lazy_video.py, display.py), and so
# do the event sinks (pipeline.events: "clips" first, so an event names its clip before the JSON lines
# and the event sinks send it; "events" last), listed in delivery order; each factory decides from
# the output settings whether it is on.
SINKS: Registry[SinkKind] = Registry("sink", __name__, error=SinkError, plugins=("pipeline.events",))


def register_sink(name: str, factory: SinkFactory, order: int = LAST, pixels: bool = False) -> None:
    """Register a sink kind (listed by ``order``); its factory is called for every source of every
    run. ``pixels``: it needs the frame's image, not only its results."""
    SINKS.register(name, SinkKind(factory, pixels), order)


def sink_names() -> list[str]:
    return SINKS.names()


def create_sinks(src: Source, scfg: SourceConfig, ctx: SinkContext, pixels: bool | None = None) -> list[Sink]:
    """Every registered sink that is on for ``src``, in registry order; ``pixels`` True or False:
    only the sinks that need the frame's image, or only those that do not."""
    kinds = (SINKS[name] for name in SINKS.names())
    sinks = (kind.factory(src, scfg, ctx) for kind in kinds if pixels is None or kind.pixels == pixels)
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
