"""Where the CLI's and the Ray workers' log lines go: standard error, as it is when a line is written."""

from __future__ import annotations

import logging
import sys


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is at each record, not as it was when
    the handler was made: code that swaps standard error for a while (a test's capture, a notebook,
    ``contextlib.redirect_stderr``) and closes its stand-in leaves no handler writing to a closed
    file (logging's "I/O operation on closed file" error on every record after)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ sets it: always sys.stderr
        pass


def log_to_stderr(fmt: str, level: int) -> None:
    """The root logger writes ``fmt`` lines at ``level`` and above to standard error, and nowhere else."""
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
