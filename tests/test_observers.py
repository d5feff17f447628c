"""Observers are built from the config by the plan: the Python API serves what ``inferpath run``
serves. ``configs/live.yaml`` (Prometheus on) with its camera replaced by a sample video played
in real time: ``Pipeline(cfg).results()`` and ``Pipeline(cfg).run()`` answer a real HTTP GET of
``/metrics``, and with ``output.web`` the live view; both are gone when the run ends."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from pipeline import Pipeline
from pipeline.config import build_config, read_yaml
from tests.conftest import REPO, VTEST
from tests.rtsp import free_port

pytest.importorskip("prometheus_client", reason="prometheus-client not installed (extra: inferpath[metrics])")


def _live_yaml(tmp_path, **changes):
    """configs/live.yaml as shipped, with the camera replaced by vtest.avi played in real time."""
    data = read_yaml(REPO / "configs" / "live.yaml")
    assert data["metrics"]["prometheus"]["enabled"] is True  # what this test relies on
    data["sources"][0].update(uri=str(VTEST), realtime=True, loop=True)
    data["output"].update(dir=str(tmp_path), video=False)
    data["metrics"]["prometheus"]["port"] = free_port()
    data["metrics"]["log_interval_s"] = 0
    data["pipeline"]["progress"] = False
    for section, values in changes.items():
        data[section].update(values)
    return build_config(data, "configs/live.yaml")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _frames_out(text: str, source: str) -> float:
    prefix = f'inferpath_frames_total{{direction="out",source="{source}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def _closed(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


def test_results_loop_serves_metrics_and_the_live_view(tmp_path, no_thread_leak):
    cfg = _live_yaml(tmp_path, output={"web": {"enabled": True, "port": 0}})
    port = cfg.metrics.prometheus.port
    seen = []
    with Pipeline(cfg) as pipe:
        view = next(ob for ob in pipe.observers if type(ob).__name__ == "LiveView")
        for result in pipe.results():
            seen.append(result.seq)
            if len(seen) == 5:
                code, text = _get(f"http://127.0.0.1:{port}/metrics")  # while the loop runs
                assert code == 200 and _frames_out(text, "cam1") >= 4, text[:500]
                assert "inferpath_stage_latency_seconds_bucket" in text
                code, body = _get(f"http://127.0.0.1:{view.port}/stats.json")
                stream = json.loads(body)["streams"][0]
                assert code == 200 and stream["id"] == "cam1" and stream["frames_out"] >= 4
                code, text = _get(f"http://127.0.0.1:{view.port}/metrics")  # Prometheus on: served there too
                assert code == 200 and _frames_out(text, "cam1") >= 4
                break
    assert seen == sorted(seen) and len(seen) == 5
    assert _closed(port)  # the exporter stopped with the run


def test_run_serves_metrics_as_the_cli_does(tmp_path, no_thread_leak):
    cfg = _live_yaml(tmp_path, pipeline={"duration_s": 30})
    port = cfg.metrics.prometheus.port
    pipe = Pipeline(cfg)
    out: dict = {}
    runner = threading.Thread(target=lambda: out.update(summary=pipe.run()), name="test-run")
    runner.start()
    try:
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            code, text = _get(f"http://127.0.0.1:{port}/metrics")
            if code == 200 and _frames_out(text, "cam1") >= 3:
                break
            time.sleep(0.2)
        assert _frames_out(text, "cam1") >= 3, text[:500]
        assert 'inferpath_queue_depth{queue="inference"}' in text  # the run's queues, read at scrape time
    finally:
        pipe.stop("test done")
        runner.join(60)
    assert not runner.is_alive()
    assert out["summary"].sources[0].frames_out >= 3 and _closed(port)


def test_observers_bind_before_any_frame_and_are_released_unrun(tmp_path, no_thread_leak):
    """A busy metrics port fails when the pipeline is built; one that never runs frees its port."""
    from pipeline.errors import ConfigError

    cfg = _live_yaml(tmp_path)
    port = cfg.metrics.prometheus.port
    with Pipeline(cfg):
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}"):
            Pipeline(cfg)
    assert _closed(port)
    with Pipeline(cfg):  # the port is free again
        pass
