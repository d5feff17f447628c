"""Prometheus exporter: scraped over real HTTP during a run, and its final numbers equal the run's summary."""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.exporters import PrometheusExporter
from pipeline.metrics import STAGES, Metrics
from tests.conftest import VTEST

pytest.importorskip("prometheus_client", reason="prometheus-client not installed (extra: inferpath[metrics])")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """GET /metrics; returns (content type, {(sample name, sorted labels): value})."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        ctype = resp.headers.get("Content-Type", "")
        text = resp.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return ctype, samples


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == want for k, want in labels.items()))


def test_listener_maps_every_kind_of_metric():
    m = Metrics()
    exp = PrometheusExporter("127.0.0.1", 0)
    try:
        exp.start(m)
        m.frame_in("cam")
        m.frame_in("cam")
        m.frame_out("cam", ["person"])
        m.observe("cam", "inference", 0.02)
        m.observe("cam", "e2e", 0.3)
        m.drop("cam", "late@inference", 2)
        m.count("cam", "reconnects")
        m.count("cam", "sink_errors_jsonl", 3)
        m.gauge("cam", "drift_score", 4.5)
        m.gauge("cam", "brightness", 41.0)
        m.gauge("cam", "fps_hint", 7.0)
        m.gauge("cam", "up", 0.0)
        r = exp.registry
        assert r.get_sample_value("inferpath_frames_total", {"source": "cam", "direction": "in"}) == 2
        assert r.get_sample_value("inferpath_frames_total", {"source": "cam", "direction": "out"}) == 1
        assert r.get_sample_value("inferpath_stage_latency_seconds_count", {"source": "cam", "stage": "inference"}) == 1
        assert r.get_sample_value("inferpath_stage_latency_seconds_bucket",
                                  {"source": "cam", "stage": "inference", "le": "0.015"}) == 0
        assert r.get_sample_value("inferpath_stage_latency_seconds_bucket",
                                  {"source": "cam", "stage": "inference", "le": "0.025"}) == 1
        assert r.get_sample_value("inferpath_e2e_latency_seconds_sum", {"source": "cam"}) == pytest.approx(0.3)
        assert r.get_sample_value("inferpath_drops_total", {"source": "cam", "reason": "late@inference"}) == 2
        assert r.get_sample_value("inferpath_reconnects_total", {"source": "cam"}) == 1
        assert r.get_sample_value("inferpath_events_total", {"source": "cam", "event": "sink_errors_jsonl"}) == 3
        assert r.get_sample_value("inferpath_input_drift_score", {"source": "cam"}) == 4.5
        assert r.get_sample_value("inferpath_input_brightness", {"source": "cam"}) == 41.0
        assert r.get_sample_value("inferpath_gauge", {"source": "cam", "name": "fps_hint"}) == 7.0
        assert r.get_sample_value("inferpath_source_up", {"source": "cam"}) == 0.0
        # e2e is its own histogram, not a stage
        assert r.get_sample_value("inferpath_stage_latency_seconds_count", {"source": "cam", "stage": "e2e"}) is None
    finally:
        exp.stop()


def test_port_in_use_is_a_config_error_naming_host_and_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}\b"):
            PrometheusExporter("127.0.0.1", port)


def test_missing_prometheus_client_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    with pytest.raises(ConfigError) as info:
        PrometheusExporter("127.0.0.1", free_port())
    msg = str(info.value)
    assert "\n" not in msg and "prometheus-client is not installed" in msg and "pip install prometheus-client" in msg


def test_scrape_during_run_and_final_numbers_match_summary(no_thread_leak):
    from pipeline.runtime import Pipeline

    # A camera stand-in (vtest played at 4x: 40 fps) with a latency budget: frames flow, and some are dropped.
    cfg = build_config({
        "sources": [{"uri": str(VTEST), "realtime": True, "speed": 4.0}],
        "output": {"jsonl": False, "video": False},
        "pipeline": {"duration_s": 4.0, "latency_budget_ms": 150, "progress": False},
        "metrics": {"log_interval_s": 0},
        "backend": {"onnxruntime": {"intra_op_threads": 1}},
    })
    pipe = Pipeline(cfg)
    port = free_port()
    exp = PrometheusExporter("127.0.0.1", port, pipeline=pipe)
    pipe.add_exporter(exp)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", pipe.run(progress=False)), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        first = None
        while time.monotonic() < deadline:
            ctype, first = scrape(port)
            if total(first, "inferpath_frames_total", direction="out") >= 3:
                break
            time.sleep(0.1)
        assert first is not None and total(first, "inferpath_frames_total", direction="out") >= 3, "no frames scraped"
        assert ctype.startswith("text/plain")
        time.sleep(0.8)
        _, second = scrape(port)
        assert runner.is_alive(), "the run ended before the second scrape; the test needs it mid-run"
    finally:
        runner.join(60)
    assert not runner.is_alive()
    summary = result["summary"]
    src = summary.sources[0]

    # Mid-run: every counter and histogram count only grows, and frames kept flowing between scrapes.
    for name in ("inferpath_frames_total", "inferpath_drops_total", "inferpath_e2e_latency_seconds_count",
                 "inferpath_stage_latency_seconds_count"):
        assert total(second, name) >= total(first, name), name
    assert total(second, "inferpath_frames_total", direction="out") > total(first, "inferpath_frames_total",
                                                                             direction="out")
    assert {dict(lab)["stage"] for (n, lab) in second if n == "inferpath_stage_latency_seconds_count"} == set(STAGES)
    # a live stream on the CPU backend is preprocessed when the batcher takes it: no preprocess queue
    assert {dict(lab)["queue"] for (n, lab) in second if n == "inferpath_queue_depth"} == {"inference", "postprocess",
                                                                                          "sink"}
    assert total(second, "inferpath_frames_total", direction="in") <= src.frames_in

    # After the run: the endpoint is closed, and the registry holds exactly the summary's numbers.
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    r = exp.registry
    sid = {"source": src.id}
    assert src.frames_out > 0
    assert r.get_sample_value("inferpath_frames_total", {**sid, "direction": "in"}) == src.frames_in
    assert r.get_sample_value("inferpath_frames_total", {**sid, "direction": "out"}) == src.frames_out
    assert r.get_sample_value("inferpath_e2e_latency_seconds_count", sid) == src.frames_out
    assert r.get_sample_value("inferpath_stage_latency_seconds_count", {**sid, "stage": "sink"}) == src.frames_out
    drops = {s.labels["reason"]: s.value for fam in r.collect() if fam.name == "inferpath_drops"
             for s in fam.samples if s.name == "inferpath_drops_total"}
    assert drops == {k: float(v) for k, v in src.drops.items()}
    assert src.frames_in == src.frames_out + sum(src.drops.values())
