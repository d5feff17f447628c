"""RunProgress: the periodic log line from a real Metrics, and the bar only on a terminal."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import termios
import threading

import pytest

from pipeline.metrics import Metrics
from pipeline.progress import RunProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _deliver(m: Metrics, n: int, source: str = "a") -> None:
    for _ in range(n):
        m.frame_in(source)
        m.frame_out(source, [])


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]


@pytest.fixture
def plain_env(monkeypatch):
    """A terminal rich will draw on, whatever the environment running the tests says."""
    for var in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")


def test_log_line_at_the_interval_with_the_window_numbers(caplog):
    m, clock = Metrics(), Clock(100.0)
    progress = RunProgress(m, total_frames=600, live=False, show=False, log_interval_s=10.0, clock=clock)
    _deliver(m, 25)
    for i, ms in enumerate((10, 20, 30, 40, 50)):
        m.series[("a", "e2e")].add(ms / 1000, at=101.0 + i)  # stamped inside the first window
    with caplog.at_level(logging.INFO, logger="pipeline"):
        clock.t = 109.9
        progress.tick()
        assert _lines(caplog) == []  # not yet
        clock.t = 110.0
        progress.tick()
        progress.tick()  # once per interval
        assert _lines(caplog) == ["2.5 fps over the last 10 s, e2e p50 30.0 ms p99 49.6 ms, 0 dropped so far"]

        _deliver(m, 5)
        m.drop("a", "late@inference", 3)
        m.series[("a", "e2e")].add(0.1, at=111.0)  # only this sample is in the second window
        clock.t = 120.0
        progress.tick()
        clock.t = 135.0  # no frame in this window
        progress.tick()
        progress.close()
    assert _lines(caplog)[1:] == ["0.5 fps over the last 10 s, e2e p50 100.0 ms p99 100.0 ms, 3 dropped so far",
                                  "0.0 fps over the last 15 s, no frame delivered, 3 dropped so far"]


def test_log_line_counts_every_source_and_can_be_off(caplog):
    m, clock = Metrics(), Clock()
    on = RunProgress(m, None, live=True, show=False, log_interval_s=2.0, clock=clock)
    off = RunProgress(m, None, live=True, show=False, log_interval_s=0, clock=clock)
    _deliver(m, 4, "cam1")
    _deliver(m, 6, "cam2")
    m.drop("cam2", "late@preprocess")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        clock.t += 4.0
        off.tick()
        assert _lines(caplog) == []
        on.tick()
    assert _lines(caplog) == ["2.5 fps over the last 4 s, no frame delivered, 1 dropped so far"]


@pytest.mark.parametrize("force", [None, "FORCE_COLOR", "TTY_COMPATIBLE"])
def test_nothing_is_written_when_not_a_terminal(caplog, monkeypatch, plain_env, force):
    """Piped or to a file: no bar, no carriage return, even when the environment forces colour."""
    if force:
        monkeypatch.setenv(force, "1")
    read_fd, write_fd = os.pipe()
    pipe = os.fdopen(write_fd, "w")
    targets = [io.StringIO(), pipe]
    m, clock = Metrics(), Clock()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        progresses = [RunProgress(m, 100, live=False, show=True, log_interval_s=1.0, stream=t, clock=clock)
                      for t in targets]  # no bar: nothing reaches either stream (checked below)
        for _ in range(7):
            _deliver(m, 5)
            clock.t += 0.5
            for p in progresses:
                p.tick()
        for p in progresses:
            p.close()
    pipe.close()
    with os.fdopen(read_fd, "rb") as r:
        assert r.read() == b""
    assert targets[0].getvalue() == ""
    assert len(_lines(caplog)) == 2 * 3  # the log line still comes, through logging


class Terminal:
    """The slave side of a pty as the progress stream; what was written is read from the master."""

    def __init__(self, columns: int = 100) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        fcntl.fcntl(self.master, fcntl.F_SETFL, os.O_NONBLOCK)
        self.stream = os.fdopen(slave, "w")
        self.data = b""

    def read(self) -> str:
        """Everything written so far: the kernel hands pty writes to the master a little later, so
        keep reading until nothing more comes for 50 ms."""
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            self.data += chunk
        return self.data.decode("utf-8", "replace")

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


@pytest.fixture
def terminal(plain_env):
    term = Terminal()
    yield term
    term.close()


def test_bar_on_a_terminal_shows_done_of_total_fps_and_drops(terminal):
    m, clock = Metrics(), Clock()
    progress = RunProgress(m, 40, live=False, show=True, log_interval_s=0, stream=terminal.stream, clock=clock)
    _deliver(m, 10)
    m.drop("a", "late@inference", 2)
    clock.t += 1.0
    progress.tick()
    assert "10/40  10.0 fps, 2 dropped" in ANSI.sub("", terminal.read())
    _deliver(m, 10)
    clock.t += 0.2
    progress.tick()  # within the redraw interval: not redrawn
    assert "20/40" not in terminal.read()
    _deliver(m, 20)
    clock.t += 0.8
    progress.close()  # the final counts stay on screen
    out = terminal.read()
    assert ANSI.sub("", out).rstrip().endswith("40/40  20.0 fps, 2 dropped") and "\r" in out


@pytest.mark.parametrize("total, live", [(None, False), (40, True)])
def test_frame_count_without_a_known_total_or_with_a_live_source(terminal, total, live):
    m, clock = Metrics(), Clock()
    progress = RunProgress(m, total, live=live, show=True, log_interval_s=0, stream=terminal.stream, clock=clock)
    _deliver(m, 7)
    clock.t += 2.0
    progress.tick()
    progress.close()
    text = ANSI.sub("", terminal.read())
    assert "7 frames   3.5 fps, 0 dropped" in text and "/40" not in text


def test_log_line_on_a_terminal_starts_its_own_line(terminal, caplog):
    """The bar steps aside: the log line is not glued onto it, and the bar comes back after it."""
    handler = logging.StreamHandler(terminal.stream)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logging.getLogger("pipeline").addHandler(handler)
    try:
        m, clock = Metrics(), Clock()
        progress = RunProgress(m, 100, live=False, show=True, log_interval_s=1.0, stream=terminal.stream, clock=clock)
        with caplog.at_level(logging.INFO, logger="pipeline"):
            _deliver(m, 10)
            clock.t += 0.5
            progress.tick()
            _deliver(m, 10)
            clock.t += 0.5
            progress.tick()
            raw = terminal.read()
            # Any other record, from another thread (a reader's reconnect warning), steps aside too.
            warn = threading.Thread(target=logging.getLogger("pipeline.sources").warning, args=("cam: reconnecting",))
            warn.start()
            warn.join()
            again = terminal.read()[len(raw):]
            progress.close()
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
    before, after = raw.split("LOG ", 1)
    assert "\x1b[2K" in before[before.rindex("10/100"):]  # the bar's line was erased first
    assert ANSI.sub("", before).endswith(("\r", "\n"))
    assert "20/100" in ANSI.sub("", after)  # and redrawn after the line
    before, after = again.split("LOG cam: reconnecting", 1)
    assert "\x1b[2K" in before and "20/100" in ANSI.sub("", after)
    assert "emit" not in handler.__dict__  # the handler is itself again once the bar is gone


@pytest.mark.parametrize("var, value", [("TERM", "dumb"), ("TTY_COMPATIBLE", "0"), ("TTY_INTERACTIVE", "0")])
def test_no_bar_on_a_dumb_terminal_or_when_not_wanted(terminal, monkeypatch, var, value):
    m = Metrics()
    unwanted = RunProgress(m, 10, live=False, show=False, log_interval_s=0, stream=terminal.stream)
    monkeypatch.setenv(var, value)
    dumb = RunProgress(m, 10, live=False, show=True, log_interval_s=0, stream=terminal.stream)
    _deliver(m, 3)
    for progress in (unwanted, dumb):
        progress.tick()
        progress.close()  # a bar would leave its final counts here
    assert terminal.read() == ""


def test_the_bar_total_counts_what_each_file_will_deliver():
    """Per file: its header's frame count, cut at ``max_frames`` (before: 795 for a 30-frame sample)."""
    from pipeline.config import build_config
    from pipeline.runtime import Pipeline
    from pipeline.runtime.supervise import files_total
    from tests.conftest import TREE, VTEST

    cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": 30}, str(TREE)],
                        "pipeline": {"progress": False}})
    with Pipeline(cfg) as pipe:
        pipe._open_sources()
        try:
            assert files_total(pipe) == 30 + 444  # tree.avi's header claims 444 (it is truncated)
        finally:
            for src in pipe.sources:
                src.close()
