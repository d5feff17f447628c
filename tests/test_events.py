"""Events out (pipeline/events): against a real mosquitto broker and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import build_config
from pipeline.events import EventSelector, sink_labels
from pipeline.events.webhook import WebhookDelivery
from pipeline.frame import Detections, Frame
from pipeline.metrics import Metrics
from tests.brokers import OPENSSL, Broker, Receiver, Subscriber, needs_mosquitto
from tests.conftest import REPO, VTEST, run_cli

SECRET = "s3cret-Pa55"


def counting_config(tmp_path, events: list[dict], max_frames: int, **source) -> dict:
    """configs/counting.yaml on the first ``max_frames`` of vtest.avi, no video, with ``events``."""
    cfg = yaml.safe_load((REPO / "configs" / "counting.yaml").read_text())
    cfg["sources"] = [{"uri": str(VTEST), "id": "vtest", "max_frames": max_frames, **source}]
    cfg["output"] = {"dir": str(tmp_path / "out"), "video": False, "events": events}
    return cfg


def write_config(tmp_path, cfg: dict):
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def jsonl_events(tmp_path) -> list[dict]:
    out = []
    for line in (tmp_path / "out" / "vtest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out += [{**e, "seq": rec["seq"]} for e in rec.get("events", [])]
    return out


def summary_events(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "summary.json").read_text())["sources"][0]["events"]


@needs_mosquitto
def test_counting_config_sends_every_line_event_over_mqtt_with_its_clip(tmp_path):
    """Exactly the JSON lines' line events arrive over MQTT (same seq, track, direction, clip),
    through a URL with credentials that never reach the output, even at debug level."""
    with Broker(tmp_path) as broker:
        sub = Subscriber(broker.port)
        try:
            cfg = counting_config(tmp_path, [{"type": "mqtt", "url": f"mqtt://bob:{SECRET}@127.0.0.1:{broker.port}",
                                              "topic": "inferpath/{source}/{type}"}], max_frames=200)
            cfg["output"]["clips"] = {"pre_s": 1.0, "post_s": 0.5, "on": ["line"]}
            res = run_cli("-v", "run", str(write_config(tmp_path, cfg)))
            assert res.returncode == 0, res.stderr[-2000:]
            expected = [e for e in jsonl_events(tmp_path) if e["type"] == "line"]
            assert expected, "the sample must cross the line in 200 frames"
            got = [p for p in sub.wait_for(len(jsonl_events(tmp_path))) if p["type"] == "line"]
        finally:
            sub.close()
    key = lambda e: (e["seq"], e["track_id"], e["direction"], e["clip"])  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert all(Path(e["clip"]).parent == tmp_path / "out" / "clips" / "vtest" and Path(e["clip"]).exists()
               for e in got)
    assert {topic for topic, msg, _ in sub.messages if msg["type"] == "line"} == {"inferpath/vtest/line"}
    assert summary_events(tmp_path)["events_sent:mqtt"] == len(jsonl_events(tmp_path))
    assert SECRET not in res.stdout + res.stderr
    assert f"mqtt://***@127.0.0.1:{broker.port}" in res.stderr  # the resolved config, redacted


@needs_mosquitto
def test_broker_killed_mid_run_pipeline_keeps_going_events_resume_drops_counted(tmp_path):
    """A live stream (vtest.avi played in real time at 2x) while its broker is killed for 3 s:
    every frame still goes through, the queue (3 messages) overflows and the drops are counted,
    and events sent after the broker is back arrive."""
    with Broker(tmp_path) as broker:
        sub = Subscriber(broker.port)
        try:
            cfg = counting_config(tmp_path, [{"type": "mqtt", "url": f"mqtt://127.0.0.1:{broker.port}",
                                              "queue_size": 3, "initial_backoff_s": 0.2, "max_backoff_s": 1.0,
                                              "timeout_s": 1.0, "keepalive_s": 5}],
                                  max_frames=240, realtime=True, speed=2.0)
            cmd = [sys.executable, "-m", "pipeline", "run", str(write_config(tmp_path, cfg))]
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert sub.wait_for(1, timeout=60), "no event before the kill"
                broker.kill()
                down_at = time.monotonic()
                time.sleep(3.0)
                broker.start()
                up_at = time.monotonic()
                out, err = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, err[-2000:]
            time.sleep(1.0)
        finally:
            sub.close()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["sources"][0]
    assert summary["frames_in"] == 240
    assert summary["frames_out"] >= 0.9 * summary["frames_in"], summary["drops"]  # the pipeline kept its rate
    events = summary["events"]
    produced = len(jsonl_events(tmp_path))
    dropped = sum(v for k, v in events.items() if k.startswith("events_dropped:mqtt:"))
    assert events.get("events_dropped:mqtt:queue_full", 0) > 0, events
    assert events["events_sent:mqtt"] + dropped == produced
    after = [m for _, m, at in sub.messages if at > up_at]
    assert after, "no event arrived after the broker came back"
    assert "connection lost" in err or "not connected" in err
    assert down_at < up_at


@needs_mosquitto
@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed (it makes the test certificates)")
def test_mqtts_delivers_with_the_brokers_ca_and_refuses_an_unknown_certificate(tmp_path, caplog):
    from pipeline.events.mqtt import MqttDelivery

    caplog.set_level(logging.INFO)
    with Broker(tmp_path, tls=True) as broker:
        sub = Subscriber(broker.port)
        try:
            def target(**extra):
                return build_config({"output": {"events": [{
                    "type": "mqtt", "url": f"mqtts://bob:{SECRET}@127.0.0.1:{broker.tls_port}", "timeout_s": 1.0,
                    "drain_s": 3.0, **extra}]}}).output.events[0]

            trusted = MqttDelivery(target(ca_file=str(broker.ca)), "tls", "cam", Metrics())
            for i in range(3):
                trusted.offer({"id": f"cam-{i}-0", "type": "line"})
            trusted.close()
            assert trusted.sent == 3 and not trusted.dropped
            assert sorted(p["id"] for p in sub.wait_for(3)) == ["cam-0-0", "cam-1-0", "cam-2-0"]
            untrusted = MqttDelivery(target(), "untrusted", "cam", Metrics())  # the system's CAs only
            untrusted.offer({"id": "never", "type": "line"})
            untrusted.close()
            assert untrusted.sent == 0 and untrusted.dropped == {"shutdown": 1}
            assert "never" not in {p["id"] for p in sub.payloads()}
        finally:
            sub.close()
    assert "events untrusted (mqtts://***@127.0.0.1" in caplog.text and SECRET not in caplog.text


def _post(receiver_statuses, cfg_extra=None, messages=5, drain_s=5.0):
    receiver = Receiver(receiver_statuses)
    metrics = Metrics()
    cfg = build_config({"output": {"events": [{
        "type": "webhook", "url": f"http://hook:{SECRET}@127.0.0.1:{receiver.port}/in?token={SECRET}",
        "headers": {"X-Site": "lab"}, "initial_backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 2.0,
        "drain_s": drain_s, **(cfg_extra or {})}]}}).output.events[0]
    delivery = WebhookDelivery(cfg, "webhook", "cam", metrics)
    try:
        for i in range(messages):
            delivery.offer({"id": f"cam-{i}-0", "type": "line", "seq": i})
    finally:
        delivery.close()
        receiver.close()
    return delivery, receiver, metrics


def test_webhook_500_then_200_delivers_every_message_in_order_after_retries(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    delivery, receiver, metrics = _post([500, 500, 503])
    assert [b["id"] for b in receiver.delivered()] == [f"cam-{i}-0" for i in range(5)]
    assert [s for s, *_ in receiver.requests[:4]] == [500, 500, 503, 200]
    assert delivery.sent == 5 and not delivery.dropped
    assert metrics.sources["cam"].events == {"events_sent:webhook": 5}
    _, path, headers, _ = receiver.requests[0]
    assert headers["Authorization"].startswith("Basic ") and headers["X-Site"] == "lab"
    assert path == f"/in?token={SECRET}"  # the request itself keeps its query
    assert "HTTP 500" in caplog.text and "delivering again" in caplog.text
    assert SECRET not in caplog.text


def test_webhook_full_queue_drops_the_oldest_and_counts_every_drop():
    """A receiver that always fails: 1 message in flight, 3 waiting, the 6 older ones dropped as
    queue_full, the rest at the end as shutdown; all of it in the Prometheus counters too."""
    from pipeline.exporters import PrometheusExporter

    receiver = Receiver([500] * 1000)
    metrics = Metrics()
    exporter = PrometheusExporter(port=0)
    exporter.start(metrics)
    cfg = build_config({"output": {"events": [{
        "type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/", "queue_size": 3,
        "initial_backoff_s": 0.05, "max_backoff_s": 0.05, "drain_s": 0.3}]}}).output.events[0]
    delivery = WebhookDelivery(cfg, "hook", "cam", metrics)
    try:
        deadline = time.monotonic() + 5
        delivery.offer({"id": "first"})
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.01)  # the first message is in flight (failing)
        for i in range(9):
            delivery.offer({"id": f"m{i}"})
        assert delivery.dropped == {"queue_full": 6}
    finally:
        delivery.close()
        receiver.close()
        exporter.stop()
    assert delivery.sent == 0 and delivery.dropped == {"queue_full": 6, "shutdown": 4}
    get = exporter.registry.get_sample_value
    assert get("inferpath_events_dropped_total", {"source": "cam", "sink": "hook", "reason": "queue_full"}) == 6
    assert get("inferpath_events_dropped_total", {"source": "cam", "sink": "hook", "reason": "shutdown"}) == 4
    assert {b["id"] for *_, b in receiver.requests} == {"first"}


def test_a_streams_end_starts_the_drain_and_the_runs_end_waits_for_it():
    """The sink stage closes a stream's sinks in its own thread, which serves every stream: the
    first close only starts the drain; the second (the run's end) waits for it and counts."""
    from pipeline.events import EventsSink

    receiver = Receiver([500] * 1000)
    cfg = build_config({"output": {"events": [{
        "type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/", "initial_backoff_s": 0.05,
        "max_backoff_s": 0.05, "drain_s": 30.0}]}}).output.events[0]
    delivery = WebhookDelivery(cfg, "webhook", "cam", Metrics())
    sink = EventsSink("cam", [(EventSelector(cfg, ("person",)), delivery)])
    try:
        delivery.offer({"id": "m"})
        sink.close()
        assert delivery._thread.is_alive() and not delivery.dropped  # draining, in its own thread
    finally:
        delivery.begin_close(drain_s=0.2)  # what 30 s of drain_s would end in, sooner
        sink.close()
        receiver.close()
    assert not delivery._thread.is_alive()
    assert delivery.dropped == {"shutdown": 1} and len(receiver.requests) >= 1


def test_webhook_4xx_is_rejected_not_retried():
    delivery, receiver, metrics = _post([400], messages=2)
    assert [s for s, *_ in receiver.requests] == [400, 200]
    assert delivery.dropped == {"rejected": 1} and delivery.sent == 1
    assert metrics.sources["cam"].events["events_dropped:webhook:rejected"] == 1


def _frame(seq: int, t_s: float, scores, classes) -> Frame:
    n = len(scores)
    f = Frame("cam", seq, t_s, int(t_s * 1e9), np.zeros((4, 4, 3), np.uint8))
    f.detections = Detections(np.tile(np.array([[0, 0, 2, 2]], np.float32), (n, 1)), np.asarray(scores, np.float32),
                              np.asarray(classes, np.int64))
    return f


def test_detection_messages_are_filtered_and_rate_limited():
    cfg = build_config({"output": {"events": [{"type": "mqtt", "url": "mqtt://127.0.0.1", "on": ["detection"],
                                               "classes": ["person"], "min_score": 0.5,
                                               "max_rate_hz": 2.0}]}}).output.events[0]
    sel = EventSelector(cfg, ("person", "car"))
    sent = []
    for seq in range(30):  # 3 s at 10 fps
        msg = sel.detections(_frame(seq, seq / 10, [0.9, 0.4, 0.8], [0, 0, 1]), {"source": "cam", "seq": seq})
        if msg is not None:
            sent.append(msg)
    assert [m["seq"] for m in sent] == [0, 5, 10, 15, 20, 25]
    assert all([(d["class_name"], d["score"]) for d in m["detections"]] == [("person", 0.9)] for m in sent)
    assert sel.detections(_frame(40, 4.0, [0.3], [0]), {"source": "cam", "seq": 40}) is None  # nothing left


def test_event_selector_keeps_the_kinds_classes_and_scores_asked_for():
    cfg = build_config({"output": {"events": [{"type": "mqtt", "url": "mqtt://h", "on": ["line"],
                                               "classes": ["person"], "min_score": 0.5}]}}).output.events[0]
    sel = EventSelector(cfg, ("person", "car"))
    base = [{"type": "line", "class": "person", "score": 0.9}, {"type": "line", "class": "car", "score": 0.9},
            {"type": "zone", "class": "person", "score": 0.9}, {"type": "line", "class": "person", "score": 0.2},
            {"type": "line", "class": "person", "score": None}]
    assert sel.events(base) == [base[0], base[4]]


def test_config_takes_yaml_on_and_checks_urls(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output:\n  events:\n    - {type: mqtt, url: 'mqtt://h', on: [zone]}\n"
                    "  clips: {pre_s: 2, on: [line]}\n")
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    cfg = load_config(path)
    assert cfg.output.events[0].on == ["zone"] and cfg.output.clips.on == ["line"]
    with pytest.raises(ConfigError, match=r"output.events\[0\].url: expected an mqtt://"):
        build_config({"output": {"events": [{"type": "mqtt", "url": "ftp://h"}]}})
    with pytest.raises(ConfigError, match="unknown key 'pre'"):
        build_config({"output": {"clips": {"pre": 2}}})
    assert sink_labels(build_config({"output": {"events": [
        {"type": "mqtt", "url": "mqtt://a"}, {"type": "mqtt", "url": "mqtt://b"},
        {"type": "webhook", "url": "http://c"}]}}).output.events) == ["mqtt0", "mqtt1", "webhook"]
