"""A service on the Ray engine (``cluster.engine: ray`` with ``inferpath serve`` or
``Pipeline(cfg, serve=True)``): streams placed on the least-loaded worker, removed there with
whole outputs (JSON lines on the driver, the video on the worker), live edits forwarded to the
workers, a stream added at runtime resumed after its worker is killed, and SIGTERM.

Real Ray, the real model, real videos (a file read at its own pace and looped is a live stream).
The HTTP test runs first: its service process starts a Ray of its own (as a user's would); the
Python API test then runs on one Ray started for this module (tests/test_cluster.py's fixture)."""

from __future__ import annotations

import json
import os
import signal
import threading

import cv2
import pytest
import yaml

from pipeline.config import build_config
from pipeline.errors import ConfigError, RestartRequiredError, StreamExistsError, UnknownStreamError
from pipeline.openapi import openapi_document
from tests.conftest import TREE, VTEST
from tests.test_openapi import _validator
from tests.test_web import _get, watch

ray = pytest.importorskip("ray")
from tests.test_cluster import _wait_for as _wait  # noqa: E402 (after the skip: it imports ray)
from tests.test_cluster import ray_cluster  # noqa: E402, F401 (the module's one Ray: 4 logical CPUs)

pytest.importorskip("prometheus_client", reason="prometheus-client not installed (extra: inferpath[metrics])")
CLUSTER = {"engine": "ray", "workers": 2, "cpus_per_worker": 1, "connect_timeout_s": 90}
LIVE_A = {"id": "a", "uri": str(VTEST), "realtime": True, "loop": True}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]  # a partial line would not parse


def _video_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_serve_on_ray_over_http(tmp_path):
    """``inferpath serve`` with cluster.engine: ray and sources: []: POST places the streams one
    per worker, GET lists them, a file that ends leaves the service running, live and restart
    edits, DELETE returns the summary with whole outputs, SIGTERM writes the rest."""
    from tests.test_service import Service

    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"sources": [], "output": {"video": True}, "cluster": CLUSTER,
                                      "metrics": {"log_interval_s": 0}}))
    svc = Service(config, tmp_path / "out", start_timeout=240)
    out = tmp_path / "out"
    try:
        assert svc.request("GET", "/api/streams") == (200, [])
        assert svc.request("GET", "/readyz") == (200, {"ready": True, "streams": 0})
        code, a = svc.request("POST", "/api/streams", LIVE_A)
        assert code == 201, a
        code, b = svc.request("POST", "/api/streams", {"id": "b", "uri": str(TREE), "max_frames": 40})
        assert code == 201, b
        assert {a["worker"], b["worker"]} == {"w0", "w1"}  # least loaded: one stream each
        assert svc.request("POST", "/api/streams", {"id": "a", "uri": str(TREE)})[0] == 409
        bad = {"id": "x", "uri": str(TREE), "latency_budget_ms": -3}
        code, body = svc.request("POST", "/api/streams", bad)
        with pytest.raises(ConfigError) as yaml_err:
            build_config({"sources": [bad]})
        assert code == 400 and body["error"] in str(yaml_err.value)
        code, body = svc.request("POST", "/api/streams", {"id": "gone", "uri": "/no/such.mp4"})
        assert code == 400 and "/no/such.mp4" in body["error"], body  # the worker's one line
        svc.wait(lambda: svc.stream("b")["state"] == "ended", 90, "the file b to end")
        # its JSON lines are closed on the driver at its end, whole, while the service runs on
        svc.wait(lambda: len(_lines(out / "b.jsonl")) == 40, 10, "b.jsonl to hold its 40 lines")
        svc.wait(lambda: svc.stream("a")["frames_out"] >= 20, 90, "stream a's frames")
        assert svc.proc.poll() is None  # a file that ends leaves the service running
        # The live view on Ray: each stream has its place on the page; a watched stream's JPEGs are
        # encoded on its worker, which has the frames, and come with the polls.
        code, stats = svc.request("GET", "/stats.json")
        assert code == 200 and [s["id"] for s in stats["streams"]] == ["a", "b"], stats
        assert stats["streams"][1]["frames_out"] == 40 and stats["streams"][1]["state"] == "ended"
        picture = watch(svc.port, "/stream/0.mjpg", 3)  # newer frames, each once
        assert picture.shape == (576, 768, 3)  # vtest.avi's frames, from worker w0
        svc.wait(lambda: _get(f"http://127.0.0.1:{svc.port}/frame/1.jpg")[0] == 200, 15,
                 "b's last frame (b has ended) as a snapshot")
        listed = {s["id"]: s for s in svc.request("GET", "/api/streams")[1]}
        assert listed["a"]["state"] == "up" and listed["a"]["fps"] > 0 and listed["b"]["frames_out"] == 40
        assert svc.request("GET", "/readyz")[0] == 200
        code, body = svc.request("PATCH", "/api/config", {"model": {"conf_threshold": 0.5}})
        assert (code, body) == (200, {"changed": ["model.conf_threshold"]})
        assert svc.request("GET", "/api/config")[1]["model"]["conf_threshold"] == 0.5
        code, body = svc.request("PATCH", "/api/config", {"backend": {"max_batch": 2}})
        assert code == 409 and body["restart_keys"] == ["backend.max_batch"]
        code, text = svc.request("GET", "/metrics")
        assert code == 200 and 'inferpath_worker_up{' in text and 'source="a"' in text
        code, summary_a = svc.request("DELETE", "/api/streams/a")
        assert code == 200, summary_a
        code, doc = svc.request("GET", "/api/openapi.json")  # the answers on Ray fit the same document
        assert code == 200 and doc == openapi_document("ray") and "worker" in doc["info"]["description"]
        for schema, answer in (("Stream", a), ("Stream", listed["a"]), ("Stream", listed["b"]),
                               ("StreamSummary", summary_a)):
            assert not list(_validator(doc, {"$ref": f"#/components/schemas/{schema}"}).iter_errors(answer)), answer
        assert summary_a["frames_out"] >= 20
        assert summary_a["frames_in"] == summary_a["frames_out"] + sum(summary_a["drops"].values())
        assert len(_lines(out / "a.jsonl")) == summary_a["frames_out"]  # closed on the driver: every line whole
        assert _video_frames(out / "a.mp4") >= summary_a["frames_out"]  # closed on the worker: it plays
        assert svc.request("DELETE", "/api/streams/a")[0] == 404
        assert [s["id"] for s in svc.request("GET", "/api/streams")[1]] == ["b"]
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(90) == 0, "".join(svc.log[-30:])
    finally:
        svc.stop()
    log = "".join(svc.log)
    assert "placement: a -> w0" in log and "placement: b -> w1" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM"
    assert [s["id"] for s in summary["sources"]] == ["a", "b"]  # the removed a first
    assert len(_lines(out / "b.jsonl")) == 40 and _video_frames(out / "b.mp4") == 40


@pytest.mark.usefixtures("ray_cluster")
def test_python_api_on_ray(tmp_path):
    """``Pipeline(cfg, serve=True)`` on 2 Ray workers: two streams added go one to each worker; a
    live threshold edit reaches the worker's postprocess; a removed stream's summary balances
    and its outputs are whole; its id can be used again; a stream added at runtime whose worker
    is killed resumes on the replacement (its gap counted as worker_lost drops); a live edit
    while that worker is lost changes nothing (retry), and one during which it is lost reaches
    its replacement."""
    from pipeline import Pipeline
    from pipeline.cluster import ClusterRun

    cfg = build_config({"sources": [], "output": {"dir": str(tmp_path), "video": True}, "cluster": CLUSTER,
                        "metrics": {"log_interval_s": 0}, "pipeline": {"progress": False}})
    pipe = Pipeline(cfg, serve=True)
    assert isinstance(pipe.engine, ClusterRun)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(summary=pipe.run()), daemon=True)
    thread.start()
    engine = pipe.engine
    try:
        _wait(engine.running.is_set, 120, "the service on Ray")
        assert pipe.streams() == []
        assert pipe.add_source(LIVE_A)["worker"] == "w0"
        assert pipe.add_source({"id": "b", "uri": str(TREE), "realtime": True, "loop": True})["worker"] == "w1"
        with pytest.raises(StreamExistsError):
            pipe.add_source({"id": "b", "uri": str(VTEST)})
        _wait(lambda: all(s["frames_out"] >= 10 for s in pipe.streams()), 90, "both streams' frames")
        assert [(s["id"], s["state"]) for s in pipe.streams()] == [("a", "up"), ("b", "up")]

        with pytest.raises(RestartRequiredError):
            pipe.update({"model": {"iou_threshold": 0.2}})
        assert pipe.update({"model": {"conf_threshold": 0.8}}) == ["model.conf_threshold"]
        edited_at = engine.streams["a"].received  # records written to a.jsonl when every worker had it
        _wait(lambda: engine.streams["a"].received >= edited_at + 30, 60, "frames after the edit")

        a = pipe.remove_source("a")
        assert a.frames_out >= edited_at + 30 and a.frames_in == a.frames_out + sum(a.drops.values())
        assert sorted(a.outputs) == [str(tmp_path / "a.jsonl"), str(tmp_path / "a.mp4")]
        records = _lines(tmp_path / "a.jsonl")
        assert len(records) == a.frames_out  # whole lines, every delivered frame
        assert _video_frames(tmp_path / "a.mp4") >= a.frames_out  # the worker closed it: it plays
        scores = [[d["score"] for d in r["detections"]] for r in records]
        assert any(s < 0.8 for frame in scores[:edited_at] for s in frame)  # before: the default 0.25
        # after: the frames in flight at the edit (queues of a few frames) came through first
        assert all(s >= 0.8 for frame in scores[edited_at + 15:] for s in frame)
        with pytest.raises(UnknownStreamError):
            pipe.remove_source("a")
        assert [s["id"] for s in pipe.streams()] == ["b"]
        # the id is free again: a file under it, on the worker a left (now the least loaded), ends there
        assert pipe.add_source({"id": "a", "uri": str(TREE), "max_frames": 20})["worker"] == "w0"
        _wait(lambda: pipe.stream("a")["state"] == "ended", 60, "the second a to end")
        assert pipe.stream("a")["frames_out"] == 20

        st = engine.streams["b"]
        victim = engine.slots[1].info["pid"]
        before = st.received
        found = sum(pipe.metrics.snapshot("b").detections.values())  # tree.avi: none at 0.8, a few at 0.35
        # An edit while b's worker is lost and not yet replaced (the driver's lock held keeps its
        # loop from noticing first): b's lines could not be checked there, so nothing changes (503).
        with engine._change:
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(RuntimeError, match="w1 is lost and being replaced"):
                pipe.update({"model": {"conf_threshold": 0.3}})
        assert engine.cfg.model.conf_threshold == 0.8
        _wait(lambda: st.received > before + 10, 90, "stream b back on a new worker")
        assert pipe.stream("b")["state"] == "up" and pipe.stream("b")["worker"] == "w1"
        assert sum(pipe.metrics.snapshot("b").detections.values()) == found  # still at 0.8
        # A worker lost between the edit's check and its apply: the edit is applied on the others,
        # and that worker is replaced with the new settings (not left with the old ones).
        _wait(lambda: engine.slots[1].info.get("pid") not in (None, victim), 60, "the replacement's pid")
        victim2 = engine.slots[1].info["pid"]
        checked = engine._update_workers

        def lost_between_the_rounds(base, edits, check):
            if check:
                return checked(base, edits, check)
            with engine._change:  # the driver's loop cannot notice the loss before the apply round does
                os.kill(victim2, signal.SIGKILL)
                return checked(base, edits, check)

        engine._update_workers = lost_between_the_rounds
        try:
            assert pipe.update({"model": {"conf_threshold": 0.3}}) == ["model.conf_threshold"]
        finally:
            engine._update_workers = checked
        _wait(lambda: sum(pipe.metrics.snapshot("b").detections.values()) > found, 90,
              "a detection under 0.8 on b's third worker")
    finally:
        pipe.stop("test over")
        thread.join(90)
    assert not thread.is_alive()
    summary = box["summary"]
    assert [s.id for s in summary.sources] == ["a", "b", "a"]  # the removed a first, then those running
    assert summary.sources[2].frames_out == 20 and len(_lines(tmp_path / "a.jsonl")) == 20
    b = summary.sources[1]
    assert b.drops.get("worker_lost", 0) > 0 and b.frames_in == b.frames_out + sum(b.drops.values())
    w1 = summary.workers[1]
    assert w1["restarts"] == 2 and w1["pids"][:2] == [victim, victim2]
    assert len(_lines(tmp_path / "b.jsonl")) == b.frames_out
    assert _video_frames(tmp_path / "b.part2.mp4") > 0  # the part after the second loss, closed at the stop
