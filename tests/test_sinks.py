"""Sinks: the protocol every sink keeps (name, path, written, main thread), and the registry."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from pipeline.config import build_config
from pipeline.frame import Detections, Frame
from pipeline.sinks import Sink, SinkContext, create_sinks, sink_names
from pipeline.sources import FileSource
from tests.conftest import VTEST


def _frame(seq: int) -> Frame:
    f = Frame("v", seq, seq / 10, time.monotonic_ns(), np.zeros((48, 64, 3), np.uint8))
    f.detections = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9], np.float32),
                              np.array([0]))
    f.latency_ms = 5.0
    return f


def _context(tmp_path, **output) -> SinkContext:
    cfg = build_config({"sources": [str(VTEST)], "output": {"dir": str(tmp_path), **output}})
    return SinkContext(cfg.output, ("person",), lambda reason="": None)


def _source() -> FileSource:
    src = FileSource(str(VTEST), "v")
    src.open()
    src.close()
    return src


def test_registry_builds_the_configured_sinks_in_order(tmp_path):
    # clips first: they name an event's clip before the JSON lines and the event sinks send it
    assert sink_names()[:5] == ["clips", "jsonl", "video", "display", "events"]
    scfg = build_config({"sources": [str(VTEST)]}).sources[0]
    sinks = create_sinks(_source(), scfg, _context(tmp_path))
    try:
        assert [s.name for s in sinks] == ["jsonl", "video"]
        assert [s.path for s in sinks] == [tmp_path / "v.jsonl", tmp_path / "v.mp4"]
        assert [s.needs_main_thread for s in sinks] == [False, False]
    finally:
        for s in sinks:
            s.close()
    only_jsonl = create_sinks(_source(), scfg, _context(tmp_path / "j", video=False))
    assert [s.name for s in only_jsonl] == ["jsonl"]
    only_jsonl[0].close()
    assert create_sinks(_source(), scfg, _context(tmp_path / "n", video=False, jsonl=False)) == []


def test_registry_uses_the_source_output_dir(tmp_path):
    scfg = build_config({"sources": [{"uri": str(VTEST), "output_dir": str(tmp_path / "mine")}]}).sources[0]
    (sink,) = create_sinks(_source(), scfg, _context(tmp_path / "default", video=False))
    sink.close()
    assert sink.path == tmp_path / "mine" / "v.jsonl" and sink.path.exists()


def test_display_needs_the_main_thread_and_is_skipped_without_a_display(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    scfg = build_config({"sources": [str(VTEST)]}).sources[0]
    assert create_sinks(_source(), scfg, _context(tmp_path, jsonl=False, video=False, display=True)) == []
    monkeypatch.setenv("DISPLAY", ":99")
    (display,) = create_sinks(_source(), scfg, _context(tmp_path, jsonl=False, video=False, display=True))
    assert display.name == "display" and display.needs_main_thread and display.path is None
    display.write(_frame(0))
    assert display.written == 1
    display.close()
    display.destroy()  # nothing was shown: nothing to close, no error


def test_jsonl_counts_written_lines(tmp_path):
    from pipeline.sinks.jsonl import JsonlSink

    sink = JsonlSink(tmp_path / "v.jsonl", "v", ("person",))
    assert sink.written == 0
    for i in range(3):
        sink.write(_frame(i))
    sink.close()
    lines = (tmp_path / "v.jsonl").read_text().splitlines()
    assert sink.written == len(lines) == 3
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]


def test_video_sink_counts_frames_it_holds_and_writes(tmp_path):
    from pipeline.sinks.lazy_video import LazyVideoSink

    sink = LazyVideoSink(tmp_path / "v.mp4", 10.0, (0, 0), ("person",), "mp4v")
    assert sink.written == 0 and not sink.path.exists()  # opens at the first frame
    for i in range(4):
        sink.write(_frame(i))
    sink.close()
    assert sink.written == 4 and sink.path.stat().st_size > 0


@pytest.mark.parametrize("make", ["results", "web"])
def test_factory_sinks_keep_the_protocol(make):
    """Sinks added with ``add_sink_factory`` (results stream, web view) are sinks like the others."""
    if make == "results":
        from pipeline.results import ResultBuffer, ResultSink

        buf = ResultBuffer(lambda sid: None, threading.Event(), 4, 8)
        sink: Sink = ResultSink(buf, "v", ("person",), live=False, budget_ms=None, images=False)
    else:
        from pipeline.web import LiveView

        view = LiveView(port=0)
        view.names = ("person",)
        sink = view.sink_for(_source())
    sink.write(_frame(0))
    assert (sink.path, sink.needs_main_thread, sink.written) == (None, False, 1)
    sink.pump()
    sink.close()
    sink.destroy()
    if make == "web":
        view.stop()


def test_a_registered_sink_kind_gets_every_frame_of_a_run(tmp_path):
    """A new kind of output is one ``register_sink`` call: its factory is asked for each source of
    the run, and the sink it returns gets that source's frames, in order, and is closed."""
    from pipeline import sinks as registry
    from pipeline.config import build_config
    from pipeline.runtime import Pipeline
    from pipeline.sinks import SinkBase
    from tests.conftest import VTEST

    class Seqs(SinkBase):
        name = "seqs"

        def __init__(self) -> None:
            self.seqs: list[int] = []
            self.closed = False

        def write(self, frame) -> None:
            self.seqs.append(frame.seq)

        def close(self) -> None:
            self.closed = True

    made: dict[str, Seqs] = {}
    registry.register_sink("seqs", lambda src, scfg, ctx: made.setdefault(src.id, Seqs()))
    try:
        cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": 6}],
                            "output": {"dir": str(tmp_path), "jsonl": False, "video": False},
                            "pipeline": {"progress": False}})
        Pipeline(cfg).run()
    finally:
        del registry.SINKS["seqs"]
    assert made["vtest"].seqs == list(range(6)) and made["vtest"].closed
    assert "seqs" not in registry.sink_names()
