"""Real receivers for the event sinks' tests: Debian's mosquitto on a free 127.0.0.1 port (started,
killed, restarted, paused by PID), a paho subscriber, and an HTTP receiver thread."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None,
                                     reason="mosquitto not installed (run scripts/install_system_deps.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OPENSSL = shutil.which("openssl")


def make_certs(workdir: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl): (ca, cert, key)."""
    ca, ca_key, key, csr, cert = (workdir / n for n in ("ca.pem", "ca.key", "srv.key", "srv.csr", "srv.pem"))
    ext = workdir / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
                 "-subj", "/CN=inferpath-test-ca"],
                ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                 "-days", "1", "-extfile", ext]):
        subprocess.run([OPENSSL, *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


class Broker:
    """mosquitto on 127.0.0.1:``port`` (anonymous, no persistence): start, kill, start again.
    With ``tls``, a second listener on ``tls_port`` (certificates from :func:`make_certs`; the CA
    is ``ca``)."""

    def __init__(self, workdir: Path, tls: bool = False) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        # user: run as who we are (as root, mosquitto would switch to its own user, which cannot read tmp_path)
        text = (f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        if tls:
            self.ca, cert, key = make_certs(workdir)
            self.tls_port = free_port()
            text += f"listener {self.tls_port} 127.0.0.1\ncafile {self.ca}\ncertfile {cert}\nkeyfile {key}\n"
        self.conf.write_text(text)
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Broker:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log.read_text()[-500:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
        self.kill()


class Subscriber:
    """Collects every message under ``inferpath/#`` (QoS 1); resubscribes after a reconnect."""

    def __init__(self, port: int, topic: str = "inferpath/#") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict, float]] = []  # (topic, payload, monotonic time received)
        self.connected = threading.Event()
        self._lock = threading.Lock()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.reconnect_delay_set(1, 1)

        def on_connect(c, userdata, flags, rc, props):
            c.subscribe(topic, qos=1)

        def on_subscribe(c, userdata, mid, rcs, props):
            self.connected.set()

        def on_disconnect(c, userdata, flags, rc, props):
            self.connected.clear()

        def on_message(c, userdata, m):
            with self._lock:
                self.messages.append((m.topic, json.loads(m.payload), time.monotonic()))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.on_disconnect = on_disconnect
        client.connect_async("127.0.0.1", port)
        client.loop_start()
        self.client = client
        assert self.connected.wait(10), "subscriber did not connect"

    def payloads(self) -> list[dict]:
        with self._lock:
            return [p for _, p, _ in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.payloads()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.payloads()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """An HTTP receiver on 127.0.0.1 (a thread): answers each POST with the next of ``statuses``
    (then 200), and keeps every request's body and headers."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[int, str, dict, dict]] = []  # (status, path, headers, body)
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    status = outer.statuses.pop(0) if outer.statuses else 200
                    outer.requests.append((status, self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-receiver", daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict]:
        return [body for status, _, _, body in self.requests if 200 <= status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        assert not self.thread.is_alive()
