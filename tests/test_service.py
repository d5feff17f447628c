"""``inferpath serve`` end to end: a real service process (``python -m pipeline serve``), a real
RTSP camera on 127.0.0.1 (tests/rtsp.py) and real HTTP requests.

One service runs for the module; the tests go in order: the streams API (add, list, errors),
a live line edit that changes the counts, readiness while the camera goes away and comes back,
SIGHUP, and SIGTERM with whole outputs. The token on a non-local bind has a service of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
import yaml

from pipeline.config import build_config
from pipeline.errors import ConfigError
from tests.conftest import REPO, TREE, VTEST
from tests.rtsp import RtspServer, free_port, needs_rtsp

pytest.importorskip("prometheus_client", reason="prometheus-client not installed (extra: inferpath[metrics])")
pytestmark = needs_rtsp


class Service:
    """``python -m pipeline serve CONFIG --port P`` in the worktree; stderr collected."""

    def __init__(self, config: Path, out: Path, host: str = "127.0.0.1", start_timeout: float = 90) -> None:
        self.port = free_port()
        self.host = host
        self.config = config
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", str(config), "--host", host, "--port", str(self.port),
             "-o", str(out)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("service exited at start:\n" + "".join(self.log))
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service did not answer /healthz in {start_timeout:g} s:\n" + "".join(self.log))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                raw: bytes | None = None) -> tuple[int, object]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                code, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            code, text = exc.code, exc.read().decode()
        assert "Traceback" not in text  # never a traceback to a client
        try:
            return code, json.loads(text)
        except ValueError:
            return code, text

    def wait(self, cond, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; log:\n" + "".join(self.log[-30:]))

    def stream(self, sid: str) -> dict:
        code, body = self.request("GET", f"/api/streams/{sid}")
        assert code == 200, body
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _write_config(path: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "configs" / "service.yaml").read_text())
    data["metrics"]["log_interval_s"] = 0
    data["output"]["video"] = True
    for dotted, value in changes.items():
        node = data
        *keys, last = dotted.split(".")
        for k in keys:
            node = node.setdefault(k, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def camera():
    with RtspServer(VTEST, fps=15) as srv:
        yield srv


@pytest.fixture(scope="module")
def service(tmp_path_factory, camera):
    tmp = tmp_path_factory.mktemp("service")
    svc = Service(_write_config(tmp / "service.yaml"), tmp / "out")
    yield svc
    svc.stop()


def test_streams_api(service, camera):
    code, body = service.request("GET", "/api/streams")
    assert (code, body) == (200, [])
    assert service.request("GET", "/readyz") == (200, {"ready": True, "streams": 0})
    t0 = time.monotonic()
    code, body = service.request("POST", "/api/streams", {"id": "cam", "uri": camera.url, "latency_budget_ms": 500})
    assert code == 201, body
    assert body["id"] == "cam" and body["uri"] == camera.url and body["state"] in ("starting", "up")
    service.wait(lambda: service.stream("cam")["frames_out"] > 0, 15, "the camera's first delivered frame")
    assert time.monotonic() - t0 < 10
    assert service.stream("cam")["state"] == "up"
    code, body = service.request("POST", "/api/streams", {"id": "cam", "uri": str(TREE)})
    assert code == 409 and "cam" in body["error"]
    bad = {"id": "x", "uri": str(TREE), "latency_budget_ms": -3}
    code, body = service.request("POST", "/api/streams", bad)
    with pytest.raises(ConfigError) as yaml_err:
        build_config({"sources": [bad]})
    assert code == 400 and body["error"] in str(yaml_err.value)  # the YAML's one line
    assert service.request("POST", "/api/streams", raw=b"{not json")[0] == 400
    assert service.request("POST", "/api/streams", raw=b"x" * (70 * 1024))[0] == 413
    assert service.request("POST", "/api/streams", {"id": "gone", "uri": "/no/such.mp4"})[0] == 400
    assert service.request("DELETE", "/api/streams/nope")[0] == 404
    assert service.request("GET", "/api/nothing")[0] == 404
    assert service.request("GET", "/no/such/page")[0] == 404
    assert service.request("PUT", "/api/streams")[0] == 405
    code, body = service.request("POST", "/api/streams", {"id": "clip", "uri": str(TREE), "max_frames": 20})
    assert code == 201
    service.wait(lambda: service.stream("clip")["state"] == "ended", 60, "the clip to end")
    assert service.proc.poll() is None  # a file that ends leaves the service running
    assert service.request("GET", "/readyz")[0] == 200  # an ended stream does not make it unready
    code, body = service.request("DELETE", "/api/streams/clip")
    assert code == 200 and body["frames_out"] == 20 and body["frames_in"] == 20
    assert {s["id"] for s in service.request("GET", "/api/streams")[1]} == {"cam"}
    code, text = service.request("GET", "/metrics")
    assert code == 200 and 'inferpath_frames_total{direction="out",source="cam"}' in text
    code, page = service.request("GET", "/")  # the live view, on the same port
    assert code == 200 and 'href="/api/docs"' in page and 'href="/metrics"' in page  # linked from it


def test_a_live_line_edit_changes_the_counts(service):
    line = {"name": "door", "points": [[384, 0], [384, 576]]}
    code, body = service.request("PATCH", "/api/config", {"tracking": {"lines": [line]}})
    assert (code, body) == (200, {"changed": ["tracking.lines"]})

    def crossings() -> float:
        text = service.request("GET", "/metrics")[1]
        return sum(float(v) for v in re.findall(r'inferpath_line_crossings_total\{[^}]*line="door"[^}]*\} (\S+)', text))

    service.wait(lambda: crossings() > 0, 60, "a crossing of the line added live")
    code, body = service.request("PATCH", "/api/config", {"model": {"iou_threshold": 0.2}})
    assert code == 409 and body["restart_keys"] == ["model.iou_threshold"]
    moved = {"name": "door", "points": [[300, 0], [300, 576]]}
    assert service.request("PATCH", "/api/config", {"tracking": {"lines": [moved]}})[0] == 200
    assert service.request("GET", "/api/config")[1]["tracking"]["lines"][0]["points"] == [[300, 0], [300, 576]]


def test_readiness_follows_the_camera(service, camera):
    service.wait(lambda: service.request("GET", "/readyz")[0] == 200, 30, "ready")
    camera.stop()
    code, body = service.wait(lambda: (r := service.request("GET", "/readyz"))[0] == 503 and r, 30,
                              "not ready without the camera")
    assert body["not_up"] == [{"id": "cam", "state": "reconnecting"}]
    assert service.request("GET", "/healthz")[0] == 200
    camera.start()
    service.wait(lambda: service.request("GET", "/readyz")[0] == 200, 60, "ready once the camera is back")


def test_sighup_reloads_live_keys_only(service):
    _write_config(service.config, **{"model.conf_threshold": 0.55})
    service.proc.send_signal(signal.SIGHUP)
    service.wait(lambda: service.request("GET", "/api/config")[1]["model"]["conf_threshold"] == 0.55, 15,
                 "the reloaded threshold")
    _write_config(service.config, **{"model.conf_threshold": 0.6, "backend.max_batch": 2})
    service.proc.send_signal(signal.SIGHUP)
    service.wait(lambda: any("need a restart: backend.max_batch" in line for line in service.log), 15,
                 "the refusal")
    assert service.request("GET", "/api/config")[1]["model"]["conf_threshold"] == 0.55  # nothing applied


def test_sigterm_leaves_whole_outputs(service):
    service.wait(lambda: service.stream("cam")["frames_out"] > 30, 60, "frames")
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(60) == 0
    out = service.out
    lines = [json.loads(line) for line in open(out / "cam.jsonl")]  # every line whole
    cap = cv2.VideoCapture(str(out / "cam.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    summary = json.loads((out / "summary.json").read_text())
    cam = next(s for s in summary["sources"] if s["id"] == "cam")
    assert len(lines) == cam["frames_out"] > 30
    assert frames >= cam["frames_out"]  # plays; a live video repeats a frame to fill a gap (real time)
    assert summary["stopped_by"] == "SIGTERM"
    assert [s["id"] for s in summary["sources"]] == ["clip", "cam"]  # the removed clip is in it too


def test_a_non_local_bind_needs_the_token_for_api_writes(tmp_path):
    svc = Service(_write_config(tmp_path / "s.yaml"), tmp_path / "out", host="0.0.0.0")
    try:
        token = svc.wait(lambda: next((m.group(1) for line in svc.log
                                       if (m := re.search(r"token=([\w-]+)", line))), None), 10, "the printed token")
        entry = {"id": "clip", "uri": str(TREE), "max_frames": 5}
        assert svc.request("POST", "/api/streams", entry)[0] == 401
        assert svc.request("POST", "/api/streams", entry, {"Authorization": "Bearer wrong"})[0] == 401
        assert svc.request("GET", "/api/streams")[0] == 401
        assert svc.request("GET", "/healthz")[0] == 200  # the probes need no token
        code, body = svc.request("POST", "/api/streams", entry, {"Authorization": f"Bearer {token}"})
        assert code == 201, body
        assert svc.request("GET", f"/api/streams?token={token}")[0] == 200
        assert svc.request("GET", "/api/docs")[0] == 401
        code, page = svc.request("GET", f"/api/docs?token={token}")
        assert code == 200 and f'href="openapi.json?token={token}"' in page  # the link keeps the token
        code, doc = svc.request("GET", f"/api/openapi.json?token={token}")
        assert code == 200 and doc["security"] == [{"bearer": []}, {"token": []}]  # it says the token is needed
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(60) == 0
    assert os.path.exists(tmp_path / "out" / "summary.json")
