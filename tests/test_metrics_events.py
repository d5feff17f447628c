"""Typed metric events: what each record emits, and a failing listener is logged once, counted and
never stops the pipeline or the other listeners."""

from __future__ import annotations

import logging

from pipeline.config import build_config
from pipeline.metrics import Counted, Dropped, FrameIn, FrameOut, GaugeSet, Metrics, Observed
from tests.conftest import VTEST


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    def on_metric(self, event) -> None:
        self.events.append(event)


class Broken:
    """Raises on every event."""

    def __init__(self) -> None:
        self.calls = 0

    def on_metric(self, event) -> None:
        self.calls += 1
        raise ValueError("listener bug")


def record_one_of_each(m: Metrics) -> None:
    m.frame_in("cam")
    m.observe("cam", "inference", 0.02)
    m.frame_out("cam", ["person", "car"])
    m.drop("cam", "late@inference", 2)
    m.count("cam", "reconnects")
    m.gauge("cam", "up", 1.0)
    m.batch(4)  # recorded, but no event (as before)


ONE_OF_EACH = [FrameIn("cam"), Observed("cam", "inference", 0.02), FrameOut("cam"), Dropped("cam", "late@inference", 2),
               Counted("cam", "reconnects", 1), GaugeSet("cam", "up", 1.0)]


def test_each_record_emits_one_typed_event_in_order():
    m = Metrics()
    rec = Recorder()
    m.add_listener(rec)
    record_one_of_each(m)
    assert rec.events == ONE_OF_EACH
    assert m.snapshot("cam").frames_in == 1 and m.total_drops("cam") == 2


def test_failing_listener_is_logged_once_counted_and_others_still_get_every_event(caplog):
    m = Metrics()
    before, broken, after = Recorder(), Broken(), Recorder()
    for lst in (before, broken, after):
        m.add_listener(lst)
    with caplog.at_level(logging.WARNING, logger="pipeline.metrics"):
        record_one_of_each(m)
        record_one_of_each(m)
    assert before.events == ONE_OF_EACH * 2 and after.events == ONE_OF_EACH * 2
    assert broken.calls == 12  # it keeps receiving events
    name = f"{__name__}.Broken"
    assert dict(m.listener_errors) == {name: 12}
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert name in lines[0] and "ValueError: listener bug" in lines[0] and "FrameIn" in lines[0]
    assert "\n" not in lines[0]
    # the store itself was never disturbed
    assert m.snapshot("cam").frames_in == 2 and m.snapshot("cam").frames_out == 2 and m.total_drops() == 4


def test_no_listener_no_errors():
    m = Metrics()
    record_one_of_each(m)
    assert m.listeners == () and not m.listener_errors


class BrokenExporter(Broken):
    """An exporter (start/stop) whose listener raises on every event."""

    def start(self, metrics: Metrics) -> None:
        metrics.add_listener(self)

    def stop(self) -> None:
        pass


def test_failing_listener_never_stops_a_real_run(caplog, no_thread_leak):
    from pipeline.runtime import Pipeline

    cfg = build_config({
        "sources": [{"uri": str(VTEST), "max_frames": 12}],
        "output": {"jsonl": False, "video": False},
        "pipeline": {"progress": False},
        "metrics": {"log_interval_s": 0},
        "backend": {"onnxruntime": {"intra_op_threads": 1}},
    })
    pipe = Pipeline(cfg)
    broken, rec = BrokenExporter(), Recorder()
    pipe.add_exporter(broken)
    pipe.metrics.add_listener(rec)
    with caplog.at_level(logging.WARNING, logger="pipeline.metrics"):
        pipe.run(progress=False)
    st = pipe.metrics.snapshot(next(iter(pipe.metrics.sources)))
    assert st.frames_out == 12
    assert sum(isinstance(e, FrameOut) for e in rec.events) == 12
    assert sum(pipe.metrics.listener_errors.values()) == broken.calls > 12
    assert len([r for r in caplog.records if "metrics listener" in r.getMessage()]) == 1

