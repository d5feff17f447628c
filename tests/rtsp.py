"""A real RTSP server for tests: Debian's GStreamer RTSP server looping a sample video.

It runs under Debian's ``/usr/bin/python3`` (PyGObject does not import in a virtualenv), on a
free 127.0.0.1 port, and is stopped by PID.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import time
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).resolve().parent.parent / "scripts" / "rtsp_server.py"


@functools.cache
def rtsp_available() -> str | None:
    """None when the server can run here, else the reason it cannot (probed once per session)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                              "from gi.repository import GstRtspServer"],
        capture_output=True, text=True,
    )
    if probe.returncode:
        return "GStreamer RTSP server not installed (run scripts/install_system_deps.sh)"
    return None


needs_rtsp = pytest.mark.skipif(rtsp_available() is not None, reason=str(rtsp_available()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """``with RtspServer(video) as srv: srv.url``; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self, video: Path, port: int | None = None, user: str | None = None, password: str | None = None,
                 fps: float | None = None, mount: str = "/stream", delay_ms: float = 0.0) -> None:
        self.video = video
        self.delay_ms = delay_ms  # every frame held this long before it is sent (the server's --delay-ms)
        self.port = port or free_port()
        self.user, self.password, self.fps, self.mount = user, password, fps, mount
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        cred = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 30) -> RtspServer:
        cmd = [SYSTEM_PYTHON, str(SERVER), "--video", str(self.video), "--port", str(self.port),
               "--host", "127.0.0.1", "--mount", self.mount]
        if self.user:
            cmd += ["--user", self.user, "--password", self.password or ""]
        if self.fps:
            cmd += ["--fps", str(self.fps)]
        if self.delay_ms:
            cmd += ["--delay-ms", str(self.delay_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                return self
            if not line and self.proc.poll() is not None:
                break
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"RTSP server did not start: {err.strip()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
