"""The live view: a real pipeline on the real model and videos, read over real HTTP, and a real
headless Chromium for the page itself."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.metrics import Metrics
from pipeline.runtime import Pipeline
from pipeline.web import LiveView, render_page
from tests.conftest import VTEST, run_cli
from tests.rtsp import RtspServer, needs_rtsp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/install_system_deps.sh installs Debian's chromium)")


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class MjpegReader:
    """A minimal MJPEG client: parts as (headers, jpeg bytes); a small receive buffer, like a
    viewer that reads only when it is ready."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        self.fh = self.sock.makefile("rb")
        status = self.fh.readline()
        assert b" 200 " in status, status
        while self.fh.readline() not in (b"\r\n", b""):
            pass

    def part(self) -> tuple[dict[str, str], bytes]:
        line = self.fh.readline()
        while line.strip() == b"" or line.startswith(b"--"):
            line = self.fh.readline()
            assert line, "stream ended"
        headers = {}
        while line not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
            line = self.fh.readline()
        return headers, self.fh.read(int(headers["content-length"]))

    def close(self) -> None:
        self.fh.close()
        self.sock.close()


def watch(port: int, path: str, parts: int):
    """Read ``parts`` parts of an MJPEG stream as a viewer would: their frame seqs must rise (newer
    frames, each once). Returns the last part's picture, decoded."""
    reader = MjpegReader(port, path)
    try:
        got = [reader.part() for _ in range(parts)]
    finally:
        reader.close()
    seqs = [int(headers["x-seq"]) for headers, _ in got]
    assert seqs == sorted(set(seqs)), seqs
    return cv2.imdecode(np.frombuffer(got[-1][1], np.uint8), cv2.IMREAD_COLOR)


def _live_run(tmp_path, uri: str, **web):
    cfg = build_config({"sources": [{"uri": uri, "id": "cam", **({"realtime": True, "loop": True}
                                                                  if not uri.startswith("rtsp") else {})}],
                        "output": {"dir": str(tmp_path), "video": False, "web": {"enabled": True, "port": 0, **web}},
                        "pipeline": {"latency_budget_ms": 1000, "progress": False}})
    pipe = Pipeline(cfg)
    view = next(ob for ob in pipe.observers if isinstance(ob, LiveView))  # output.web: built by the plan
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(summary=pipe.run()), name="test-runner")
    t.start()
    _wait_for(lambda: view.metrics is not None and pipe.metrics.snapshot("cam").frames_out >= 3, 60, "frames")
    return pipe, view, t, result


def _stop(pipe, t) -> None:
    pipe.stop("test done")
    t.join(60)
    assert not t.is_alive()


def test_page_stats_and_mjpeg_of_a_live_run(tmp_path, no_thread_leak):
    pipe, view, t, _ = _live_run(tmp_path, str(VTEST))
    base = f"http://127.0.0.1:{view.port}"
    try:
        code, page = _get(base + "/")
        assert code == 200 and b"inferpath live view" in page and b'id="video-0"' in page
        assert b"/api/docs" not in page  # a run, not a service: no API to link to
        code, body = _get(base + "/stats.json")
        streams = json.loads(body)["streams"]
        stats = streams[0]
        assert code == 200 and stats["id"] == "cam" and stats["state"] == "up" and stats["fps"] > 0
        assert len(streams) == 1 and b'id="video-1"' not in page  # one tile per stream, its sink made once
        assert stats["e2e_p50_ms"] > 0 and stats["frames_out"] >= 3
        t0 = time.monotonic()
        reader = MjpegReader(view.port, "/stream/0.mjpg")
        parts = [reader.part() for _ in range(3)]
        first_s = time.monotonic() - t0
        reader.close()
        assert first_s < 10  # the bench measures the real figure; here: it comes at all, promptly
        seqs = [int(h["x-seq"]) for h, _ in parts]
        assert seqs == sorted(set(seqs))  # each part a newer frame, never a repeat
        image = cv2.imdecode(np.frombuffer(parts[-1][1], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (576, 768, 3)
        code, snap = _get(base + "/frame/0.jpg")
        assert code == 200 and snap[:2] == b"\xff\xd8"
        assert _get(base + "/stream/7.mjpg")[0] == 404 and _get(base + "/nothing")[0] == 404
        assert _get(base + "/metrics")[0] == 404  # Prometheus off: no /metrics
    finally:
        _stop(pipe, t)
    with pytest.raises(OSError):  # the server is gone with the run
        socket.create_connection(("127.0.0.1", view.port), timeout=2).close()


def test_a_viewer_who_falls_behind_gets_the_newest_frame(tmp_path, no_thread_leak):
    pipe, view, t, _ = _live_run(tmp_path, str(VTEST))
    try:
        reader = MjpegReader(view.port, "/stream/0.mjpg", rcvbuf=32 * 1024)
        reader.part()
        time.sleep(3)  # ~30 frames of a 10 fps camera go by
        newest = view.views[0].jpeg_seq
        seqs = [int(reader.part()[0]["x-seq"]) for _ in range(6)]
        reader.close()
        # Only what the kernel buffers (a few frames) is old; then the newest frame comes.
        stale = [s for s in seqs if s < newest]
        assert len(stale) <= 4 and max(seqs) >= newest, (seqs, newest)
        assert view.views[0].encoded < pipe.metrics.snapshot("cam").frames_out + 1
    finally:
        _stop(pipe, t)


def test_token_required_on_other_addresses(capsys):
    view = LiveView("0.0.0.0", 0)
    try:
        assert view.token and len(view.token) >= 20
        view.start(Metrics())
        err = capsys.readouterr().err
        assert err.count(view.token) == 1 and f":{view.port}/?token={view.token}" in err
        base = f"http://127.0.0.1:{view.port}"
        assert _get(base + "/")[0] == 403
        assert _get(base + "/stats.json?token=wrong")[0] == 403
        assert _get(base + "/?token=" + view.token)[0] == 200
        req = urllib.request.Request(base + "/stats.json", headers={"Authorization": f"Bearer {view.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    finally:
        view.stop()
    local = LiveView("127.0.0.1", 0)
    assert local.token is None
    local.stop()


def test_credentials_never_reach_the_page():
    view = LiveView("127.0.0.1", 0)
    try:
        src = SimpleNamespace(id="door", uri="rtsp://admin:hunter2@10.0.0.5/live", is_live=True)
        view.sink_for(src)
        page = render_page(view)
        assert "hunter2" not in page and "rtsp://***@10.0.0.5/live" in page
        assert "hunter2" not in json.dumps(view.stats())
    finally:
        view.stop()


def test_busy_port_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"output.web: cannot serve on 127.0.0.1:{port}"):
            LiveView("127.0.0.1", port)


@pytest.mark.parametrize(("args", "message"), [
    (["--serve", "70000"], "output.web.port: expected a TCP port 0-65535"),
    (["--set", "output.web.jpeg_quality=0"], "output.web.jpeg_quality: expected an integer 1-100"),
    (["--set", "output.web.max_fps=0"], "output.web.max_fps: expected a positive number"),
])
def test_bad_web_settings(args, message):
    proc = run_cli("run", "--source", str(VTEST), *args, timeout=60)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_serve_from_the_command_line(tmp_path):
    proc = run_cli("run", "--source", str(VTEST), "--serve", "0", "-o", str(tmp_path), "--no-video",
                   "--set", "sources.0.max_frames=10", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"live view at http://127\.0\.0\.1:\d+/", proc.stderr) and "token" not in proc.stderr


def test_viewers_that_never_read_do_not_delay_ctrl_c(tmp_path):
    """Two MJPEG viewers that connect and never read fill their sockets' buffers, so their
    threads block in a write. Before: Ctrl-C waited for the handlers' 10 s socket timeout (9.2 s
    against 2.4 s without viewers); now stop() closes their sockets and the run ends at once."""
    import signal
    import sys

    from tests.conftest import REPO
    from tests.rtsp import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--source", str(VTEST), "--realtime", "--set", "sources.0.loop=true",
         "--serve", str(port), "--no-video", "-o", str(tmp_path), "--set", "output.web.max_fps=30"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    viewers = []
    try:
        _wait_for(lambda: any("live view at" in line for line in lines), 60, "the live view")
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /stream/0.mjpg HTTP/1.0\r\nHost: x\r\n\r\n")
            viewers.append(sock)  # never read
        _wait_for(lambda: '"viewers": 2' in _get(f"http://127.0.0.1:{port}/stats.json")[1].decode(), 30, "2 viewers")
        time.sleep(3)  # frames pile up until both senders block
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        took = time.monotonic() - t0
    finally:
        for sock in viewers:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(5)
    assert proc.returncode == 130, "".join(lines)
    assert took < 5.0, f"Ctrl-C took {took:.1f} s with two viewers that never read"
    assert not any("Traceback" in line for line in lines), "".join(lines)


@pytest.mark.parametrize("host", ["::1", "::"])
def test_ipv6_hosts_serve(host):
    """Before: '::' failed with 'choose another output.web.port', blaming the port."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    view = LiveView(host, 0)
    try:
        view.start(Metrics())
        code, page = _get(f"http://[::1]:{view.port}/" + (f"?token={view.token}" if view.token else ""))
        assert code == 200 and b"inferpath live view" in page
        assert view.url.startswith(f"http://[{host}]:{view.port}/")
    finally:
        view.stop()


def test_a_host_that_is_not_here_blames_the_host():
    with pytest.raises(ConfigError, match=r"cannot serve on 192\.0\.2\.99:0 .*output\.web\.host must be an address"):
        LiveView("192.0.2.99", 0)  # TEST-NET-1: never an address of this machine


def test_unquoted_ipv6_host_on_the_command_line_says_quote_it():
    proc = run_cli("run", "--source", str(VTEST), "--set", "output.web.host=::", "--serve", "0", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "inferpath: error: <command line>: output.web.host: expected a string, got {':': None} (YAML reads an "
        "unquoted value with ':' as a mapping: quote it, e.g. \"::\")"]


def test_prometheus_text_shares_the_live_view_port():
    from pipeline.exporters import PrometheusExporter
    from tests.rtsp import free_port

    exporter = PrometheusExporter("127.0.0.1", free_port())
    view = LiveView("127.0.0.1", 0, prometheus_registry=exporter.registry)
    try:
        metrics = Metrics()
        exporter.start(metrics)
        view.start(metrics)
        metrics.frame_out("cam", ["person"])
        code, body = _get(f"http://127.0.0.1:{view.port}/metrics")
        assert code == 200 and 'inferpath_frames_total{direction="out",source="cam"} 1.0' in body.decode()
    finally:
        view.stop()
        exporter.stop()


def _screenshot(url: str, out: Path, profile: Path, budget_ms: int = 4000) -> None:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", "--window-size=1000,900", f"--timeout={budget_ms}",
                    f"--screenshot={out}", url], capture_output=True, timeout=60, check=True)


def _dump_dom(url: str, profile: Path, budget_ms: int = 3000) -> str:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           f"--timeout={budget_ms}", "--dump-dom", url], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _box_pixels(png: Path) -> int:
    """Pixels of the person boxes' red (BGR 56,56,255 as drawn, after JPEG and scaling). The raw
    vtest.avi has at most ~110 such pixels in any frame; boxes and labels bring thousands."""
    image = cv2.imread(str(png))
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g < 110) & (b < 110)).sum())


@needs_chromium
@needs_rtsp
@pytest.mark.rtsp
def test_chromium_shows_the_live_stream_with_boxes_and_fps(tmp_path, no_thread_leak):
    with RtspServer(VTEST, user="viewer", password="s3cret-pw") as srv:
        pipe, view, t, _ = _live_run(tmp_path, srv.url)
        try:
            url = f"http://127.0.0.1:{view.port}/"
            shot = tmp_path / "live_view.png"
            # The first launch of a fresh profile is slow; a screenshot taken before the first
            # frame painted is retried (twice at most), and what is checked is the last one.
            for _ in range(3):
                _screenshot(url, shot, tmp_path / "profile")
                if _box_pixels(shot) > 1000:
                    break
            dom = _dump_dom(url, tmp_path / "profile")
            page = _get(url)[1].decode() + _get(url + "stats.json")[1].decode()
        finally:
            _stop(pipe, t)
    shutil.copy(shot, Path("/tmp") / "inferpath-live-view.png")  # to look at by hand
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (900, 1000)
    assert _box_pixels(shot) > 1000, "no red person boxes in the screenshot"
    video = image[90:680, 15:800]  # where the <img> sits (layout in pipeline/web.py)
    assert video.std() > 30  # a real picture, not a black placeholder
    fps = float(re.search(r'id="fps-0">([0-9.]+)<', dom).group(1))
    assert fps > 0
    assert "s3cret-pw" not in dom and "s3cret-pw" not in page and "viewer:" not in page
