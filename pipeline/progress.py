"""The run's progress: a bar on a terminal and the periodic log line, both read from the metrics.

The bar is rich's (``rich.progress``), drawn only when stderr is a terminal that can take it:
piped or redirected to a file, nothing of it is written (no carriage returns in a log). The log
line goes through :mod:`logging` every ``metrics.log_interval_s`` whatever the output is. On a
terminal the bar steps aside for every log record written where it is drawn (the periodic line,
a reconnect warning from a reader thread, an error), so no line ever lands glued onto the bar.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pipeline.metrics import Metrics, percentiles

log = logging.getLogger(__name__)

REDRAW_S = 0.5  # the bar is redrawn at most this often
BAR_WIDTH = 30  # characters of bar at most (rich narrows it on a narrow terminal)


class RunProgress:
    """Call :meth:`tick` often (the run's watch loop does, every 20-100 ms) and :meth:`close` once.

    ``total_frames``: frames the file sources will deliver, known up front; with it, and no live
    source, the bar shows done/total, otherwise a frame count. ``show``: the config's wish
    (``pipeline.progress``); the bar appears only if ``stream`` is also a terminal.
    """

    def __init__(self, metrics: Metrics, total_frames: int | None, live: bool, show: bool, log_interval_s: float,
                 *, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.total = total_frames if total_frames and not live else None
        self.interval = log_interval_s
        self.clock = clock
        self.t0 = clock()
        self.last_draw = float("-inf")
        self.last_log = self.t0
        self.last_out = 0
        self._bar = _Bar(stream if stream is not None else sys.stderr, self.total) if show else None
        if self._bar is not None and not self._bar.usable:
            self._bar = None

    def _done(self) -> int:
        return sum(st.frames_out for st in list(self.metrics.sources.values()))  # list(): sources may be added

    def _text(self, done: int, now: float) -> str:
        rate = done / max(now - self.t0, 1e-9)
        count = f"{done}/{self.total}" if self.total else f"{done} frames"
        return f"{count} {rate:5.1f} fps, {self.metrics.total_drops()} dropped"

    def tick(self) -> None:
        now = self.clock()
        if self._bar is not None and now - self.last_draw >= REDRAW_S:
            self.last_draw = now
            done = self._done()
            self._bar.draw(done, self._text(done, now))
        if self.interval and now - self.last_log >= self.interval:
            self._log_line(now)

    def _log_line(self, now: float) -> None:
        since, self.last_log = self.last_log, now
        done = self._done()
        latency = latency_text(self.metrics, since)
        log.info("%.1f fps over the last %.0f s, %s, %d dropped so far",
                 (done - self.last_out) / (now - since), now - since, latency, self.metrics.total_drops())
        self.last_out = done

    def close(self) -> None:
        """Leave the bar with the final counts on its own line (on a terminal); idempotent."""
        if self._bar is not None:
            done = self._done()
            self._bar.close(done, self._text(done, self.clock()))
            self._bar = None


class _Bar:
    """rich's progress display on ``stream``, refreshed only when asked (no thread of its own)."""

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self.stream = stream
        self._lock = threading.RLock()  # drawing (main thread) and log records (any thread) take turns
        self._hooked: dict[logging.StreamHandler, Callable] = {}  # handler -> its own emit
        self.usable = _is_terminal(stream)
        if not self.usable:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        # A real terminal (checked above); rich's own check still honours TERM=dumb, TTY_COMPATIBLE=0
        # and TTY_INTERACTIVE=0.
        console = Console(file=stream, highlight=False, emoji=False, markup=False)
        self.usable = console.is_interactive
        columns = ([BarColumn(bar_width=BAR_WIDTH)] if total else []) + [TextColumn("{task.description}", markup=False)]
        self.progress = Progress(*columns, console=console, auto_refresh=False, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)  # leave sys.std* alone
        self.task = self.progress.add_task("", total=total)
        self._started = False

    def draw(self, done: int, text: str) -> None:
        with self._lock:
            self.progress.update(self.task, completed=done, description=text)
            if self._started:
                self.progress.refresh()
            else:
                self._hook_logging()
                self.progress.start()  # draws
                self._started = True

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Takes the bar off the screen while a log line is written, and puts it back after."""
        with self._lock:
            shown = self._started
            if shown:
                self.progress.stop()  # transient: the bar's line is erased, the cursor at its start
            try:
                yield
            finally:
                if shown:
                    self.progress.start()  # draws again, below the log line

    def _hook_logging(self) -> None:
        """Each log handler that writes where the bar is drawn takes the bar aside for its records."""
        for logger in (logging.getLogger(), logging.getLogger("pipeline")):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                    self._hooked.setdefault(handler, handler.emit)
                    handler.emit = functools.partial(self._emit_aside, self._hooked[handler])  # type: ignore[method-assign]

    def _emit_aside(self, emit: Callable[[logging.LogRecord], None], record: logging.LogRecord) -> None:
        with self.aside():
            emit(record)

    def close(self, done: int, text: str) -> None:
        with self._lock:
            for handler in self._hooked:
                handler.__dict__.pop("emit", None)  # its own emit again
            self._hooked.clear()
            if self._started:
                self.progress.update(self.task, completed=done, description=text)
                self.progress.live.transient = False  # the last state stays on screen, as a line of its own
                self.progress.stop()
                self._started = False


def latency_text(metrics: Metrics, since: float) -> str:
    """The periodic line's latency part: end-to-end p50 and p99 of the frames delivered since ``since``."""
    e2e = metrics.stage_values("e2e", since=since) * 1000
    if not len(e2e):
        return "no frame delivered"
    p50, _, p99 = percentiles(e2e)
    return f"e2e p50 {p50:.1f} ms p99 {p99:.1f} ms"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # closed or a file-like object without a tty notion
        return False


__all__ = ["RunProgress", "REDRAW_S", "latency_text"]
