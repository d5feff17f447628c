"""A service's engine through the Python API: ``Pipeline(cfg, serve=True)`` running in a thread,
streams added and removed while another runs (real videos, the real model), live edits.

What is checked: the stream that runs throughout loses no frame while another joins and leaves
(every frame of its file is delivered and written); the removed stream's outputs are closed and
whole (JSON lines parse, the video plays with as many frames as were delivered); its summary
balances (in = out + drops); the service outlives a file that ends; errors are the config's
one-line messages; live edits apply and other keys are refused whole."""

from __future__ import annotations

import json
import threading
import time

import cv2
import pytest

from pipeline import Pipeline
from pipeline.config import build_config
from pipeline.errors import ConfigError, RestartRequiredError, StreamExistsError, UnknownStreamError
from pipeline.queues import EndOfStream, QueueGroup
from pipeline.runtime.live import changed_keys, merge
from tests.conftest import TREE, VTEST
from tests.rtsp import RtspServer, needs_rtsp


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _service(tmp_path, sources: list[dict], **sections) -> tuple[Pipeline, threading.Thread, dict]:
    data = {"sources": sources, "output": {"dir": str(tmp_path)},
            "pipeline": {"progress": False}, "metrics": {"log_interval_s": 0}, **sections}
    pipe = Pipeline(build_config(data), serve=True)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(summary=pipe.run()), daemon=True)
    thread.start()
    _wait(lambda: pipe.engine.running.is_set(), 60, "the service to start")
    return pipe, thread, box


def _stop(pipe: Pipeline, thread: threading.Thread) -> None:
    pipe.stop("test over")
    thread.join(60)
    assert not thread.is_alive()


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_a_stream_joins_and_leaves_while_another_loses_no_frame(tmp_path, no_thread_leak):
    pipe, thread, box = _service(tmp_path, [{"id": "a", "uri": str(VTEST), "max_frames": 150}])
    try:
        _wait(lambda: pipe.stream("a")["frames_in"] > 0, 30, "stream a's first frame")
        added = pipe.add_source({"id": "b", "uri": str(TREE), "realtime": True, "loop": True})
        assert added["id"] == "b" and added["state"] in ("starting", "up")
        _wait(lambda: pipe.stream("b")["frames_out"] >= 10, 30, "stream b's frames")
        assert [s["id"] for s in pipe.streams()] == ["a", "b"]
        b = pipe.remove_source("b")
        assert b.frames_out >= 10
        assert b.frames_in == b.frames_out + sum(b.drops.values())
        assert [s["id"] for s in pipe.streams()] == ["a"]
        jsonl, mp4 = sorted(b.outputs, key=lambda p: p.endswith(".mp4"))
        assert len(_lines(jsonl)) == b.frames_out  # closed: every line whole
        cap = cv2.VideoCapture(mp4)
        frames = 0
        while cap.read()[0]:
            frames += 1
        cap.release()
        assert frames == b.frames_out  # a playable video, every delivered frame in it
        with pytest.raises(UnknownStreamError):
            pipe.remove_source("b")
        _wait(lambda: pipe.stream("a")["state"] == "ended", 120, "stream a to end")
        assert thread.is_alive()  # a file that ends leaves the service running
        assert pipe.add_source({"id": "b", "uri": str(TREE), "max_frames": 5})["id"] == "b"  # the id is free again
        _wait(lambda: pipe.stream("b")["state"] == "ended", 60, "the second b to end")
    finally:
        _stop(pipe, thread)
    summary = box["summary"]
    by_id = {s.id: s for s in summary.sources}
    a = by_id["a"]
    assert a.frames_in == a.frames_out == 150 and not a.drops  # nothing of a was lost to b's coming and going
    assert len(_lines(tmp_path / "a.jsonl")) == 150
    assert [s.id for s in summary.sources].count("b") == 2  # the removed b, then the second


def test_errors_are_the_config_messages(tmp_path, no_thread_leak):
    pipe, thread, _ = _service(tmp_path, [])
    try:
        assert pipe.streams() == []
        bad = {"id": "x", "uri": str(TREE), "latency_budget_ms": -5}
        with pytest.raises(ConfigError) as api_err:
            pipe.add_source(bad)
        with pytest.raises(ConfigError) as yaml_err:
            build_config({"sources": [bad]})
        assert str(api_err.value) in str(yaml_err.value)
        assert str(api_err.value).startswith("sources[0].latency_budget_ms:")
        with pytest.raises(ConfigError, match="unknown key"):
            pipe.add_source({"uri": str(TREE), "colour": "red"})
        pipe.add_source({"id": "t", "uri": str(TREE), "realtime": True, "loop": True})
        with pytest.raises(StreamExistsError):
            pipe.add_source({"id": "t", "uri": str(VTEST)})
        with pytest.raises(UnknownStreamError):
            pipe.remove_source("nope")
        with pytest.raises(RestartRequiredError) as restart:
            pipe.update({"model": {"iou_threshold": 0.3, "conf_threshold": 0.6}, "backend": {"max_batch": 2}})
        assert restart.value.keys == ["backend.max_batch", "model.iou_threshold"]
        assert pipe.cfg.model.conf_threshold != 0.6  # refused whole: nothing applied
        with pytest.raises(ConfigError, match="model.conf_threshold"):
            pipe.update({"model": {"conf_threshold": 7}})
        assert pipe.update({"sources": [{"id": "t", "latency_budget_ms": 250}]}) == ["sources[t].latency_budget_ms"]
        assert pipe.engine.graph.ctx.budget.budgets_ms["t"] == 250
        assert pipe.engine.graph.group.weight("t") == 1.0
        with pytest.raises(ConfigError, match=r"sources\[0\]\.weight: expected a positive number"):
            pipe.update({"sources": [{"id": "t", "weight": 0}]})
        assert pipe.engine.graph.group.weight("t") == 1.0  # a bad edit changed nothing
        assert pipe.update({"sources": [{"id": "t", "weight": 0.25, "latency_budget_ms": 300}]}) == [
            "sources[t].latency_budget_ms", "sources[t].weight"]
        assert pipe.engine.graph.group.weight("t") == 0.25 and pipe.engine.graph.ctx.budget.budgets_ms["t"] == 300
        assert pipe.engine.streams["t"].config.weight == 0.25  # the running entry keeps it for later edits
        assert pipe.update({"sources": [{"id": "t", "weight": 0.25}]}) == []  # unchanged: nothing to apply
    finally:
        _stop(pipe, thread)


def test_live_edits_apply_from_the_next_frame(tmp_path, no_thread_leak):
    line = {"name": "mid", "points": [[0, 288], [768, 288]]}
    pipe, thread, _ = _service(tmp_path, [{"id": "v", "uri": str(VTEST), "realtime": True, "loop": True}],
                               tracking={"enabled": True, "lines": [line]}, model={"conf_threshold": 0.3})
    try:
        _wait(lambda: pipe.stream("v")["frames_out"] >= 20, 60, "frames")
        postprocess = pipe.engine.graph.postprocess
        assert pipe.update({"model": {"conf_threshold": 0.9, "classes": [0]}}) == ["model.classes",
                                                                                  "model.conf_threshold"]
        assert postprocess.settings.conf == 0.9 and postprocess.settings.classes == (0,)
        seen = pipe.stream("v")["frames_out"]
        _wait(lambda: pipe.stream("v")["frames_out"] >= seen + 10, 30, "frames after the edit")
        tracking = pipe.tracking.streams["v"]
        kept = tracking.lines[0]
        moved = {"name": "mid", "points": [[0, 300], [768, 300]]}
        extra = {"name": "new", "points": [[384, 0], [384, 576]]}
        assert pipe.update({"tracking": {"lines": [line, extra]}}) == ["tracking.lines"]
        assert tracking.lines[0] is kept and [ln.name for ln in tracking.lines] == ["mid", "new"]
        assert "restarted" not in tracking.summary()  # an unchanged line keeps its counts
        pipe.update({"tracking": {"lines": [moved]}})
        assert tracking.lines[0] is not kept and "edited live" in tracking.summary()["restarted"]["mid"]
        with pytest.raises(ConfigError, match="outside"):
            pipe.update({"tracking": {"lines": [{"name": "off", "points": [[0, 0], [5000, 10]]}]}})
        assert [ln.name for ln in tracking.lines] == ["mid"]  # a bad edit changed nothing
    finally:
        _stop(pipe, thread)


def test_queue_group_takes_a_new_queue_and_retires_one():
    group = QueueGroup()
    a = group.add("a", "inference", 4, "drop_oldest", None)
    a.put("a0")
    stop = threading.Event()
    assert group.take(4, 0.0, stop) == ["a0"]
    b = group.add("b", "inference", 4, "drop_oldest", None)
    b.put("b0")
    a.put("a1")
    assert sorted(group.take(4, 0.0, stop)) == ["a1", "b0"]
    a.put(EndOfStream("a"))
    assert group.take(4, 0.0, stop) == [EndOfStream("a")]
    assert group.retire("a") is a and group.retire("a") is None
    assert group.arrived == 3  # a's count stays after it is retired
    b.put("b1")
    assert group.take(4, 0.0, stop) == ["b1"]
    with pytest.raises(ValueError):
        group.add("b", "inference", 4, "drop_oldest", None)


def test_partial_config_merge_and_diff():
    base = {"model": {"conf_threshold": 0.3, "classes": None}, "tracking": {"lines": [{"name": "a"}]}}
    new = merge(base, {"model": {"conf_threshold": 0.5}, "tracking": {"lines": []}})
    assert new == {"model": {"conf_threshold": 0.5, "classes": None}, "tracking": {"lines": []}}
    assert changed_keys(base, new) == ["model.conf_threshold", "tracking.lines"]


@needs_rtsp
def test_a_camera_whose_frame_misses_a_line_stops_alone(tmp_path, no_thread_leak, caplog):
    """A line that fits the running stream's frame but not a camera added later (its size is known
    only when it opens): that camera stops with one error line; the service and the other stream go on."""
    line = {"name": "mid", "points": [[0, 288], [768, 288]]}  # inside 768x576, outside tree.avi's 320x240
    pipe, thread, _ = _service(tmp_path, [{"id": "v", "uri": str(VTEST), "realtime": True, "loop": True}],
                               tracking={"enabled": True, "lines": [line]})
    try:
        with RtspServer(TREE) as srv:
            pipe.add_source({"id": "cam", "uri": srv.url})
            _wait(lambda: pipe.stream("cam")["state"] == "ended", 60, "the camera to stop")
            seen = pipe.stream("v")["frames_out"]
            _wait(lambda: pipe.stream("v")["frames_out"] >= seen + 10, 30, "the other stream's frames")
            assert thread.is_alive() and not pipe.state.stop_reading.is_set()
            assert pipe.stream("cam")["frames_out"] == 0
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "cam" in r.getMessage()]
        assert len(errors) == 1 and "outside" in errors[0], errors
    finally:
        _stop(pipe, thread)


def test_on_result_goes_on_while_streams_leave_and_come_back(tmp_path, no_thread_leak):
    """A service's results consumer (what a Ray worker runs) outlives its streams: a stream that
    leaves and comes back under the same id is delivered again, each time every frame of it."""
    cfg = build_config({"sources": [], "output": {"dir": str(tmp_path)}, "pipeline": {"progress": False},
                        "metrics": {"log_interval_s": 0}})
    pipe = Pipeline(cfg, serve=True)
    seen: list[str] = []
    runner = pipe.on_result(lambda r: seen.append(r.source))
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: pipe.engine.running.is_set(), 60, "the service to start")
        for time_round in (1, 2):
            pipe.add_source({"id": "t", "uri": str(TREE), "max_frames": 10})
            _wait(lambda: pipe.stream("t")["state"] == "ended", 60, "the clip to end")
            assert pipe.remove_source("t").frames_out == 10
            assert runner.buffer.wait_taken("t", 10)  # its end taken: every result of it handed over
            assert seen.count("t") == 10 * time_round
    finally:
        _stop(pipe, thread)
