"""The live view: one web page with each stream's annotated video and its health.

``inferpath run --serve PORT`` (or ``output.web`` in YAML) serves, on 127.0.0.1 by default:

* ``/``: the page. Per stream: the annotated video (MJPEG in an ``<img>``: every browser plays
  it with no script and no player, and a part is shown as soon as it arrives), fps, e2e latency
  p50/p99, drops by reason, up/down, reconnects, drift warnings and the FP32 canary's agreement (when
  ``model.canary`` is on), refreshed every second;
* ``/stream/N.mjpg`` (the video), ``/frame/N.jpg`` (one snapshot), ``/stats.json`` (the numbers);
* ``/metrics``: the Prometheus text, when the Prometheus exporter is on too (same registry).

The numbers come from :class:`~pipeline.metrics.Metrics`, the per-frame stamps that also feed the
summary table and Prometheus, so the page agrees with them.

Cost to the pipeline. The web sink only keeps a reference to the newest delivered frame of its
stream and returns. One encoder thread draws the boxes and encodes a JPEG at most ``max_fps``
times a second per stream, and only while someone watches; every viewer's thread then sends
those same bytes. A viewer who falls behind skips to the newest frame (there is no per-viewer
queue), so ten viewers cost ten socket writes of one JPEG, not ten encodes.

On Ray (``cluster.engine: ray``) the page is the driver's and the frames are the workers': each
stream has its place on the page (:meth:`LiveView.remote_sink_for`), and the driver asks, with
each poll, for the JPEGs of the streams someone watches; the worker that has the frames keeps
the newest one of each stream (:class:`FrameTap`) and encodes it only then, at most ``max_fps``.

Why the standard library's :class:`~http.server.ThreadingHTTPServer`: the page needs four GET
routes and long-lived multipart responses, a thread per viewer is cheap at the handful of viewers
a live view has, and it adds no dependency to a core install. A framework (aiohttp, FastAPI)
would add an event loop and a dependency for no gain here.

Access: bound to 127.0.0.1 unless ``host`` says otherwise; any other address requires a token
(``output.web.token``, or a random one made at start), and the URL with it is printed once to
stderr, never logged. Source URIs on the page and in ``stats.json`` are redacted.
"""

from __future__ import annotations

import errno
import hmac
import html
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from pipeline.annotate import draw
from pipeline.errors import ConfigError
from pipeline.frame import Detections, Frame
from pipeline.metrics import Metrics, percentiles
from pipeline.sinks import SinkBase
from pipeline.sources.base import redact_text, redact_uri

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
BOUNDARY = "inferpath-frame"
FPS_WINDOW_S = 5.0  # fps on the page: frames delivered over the last 5 s
LATENCY_WINDOW_S = 10.0  # p50/p99 on the page: the last 10 s
SEND_BUFFER = 64 * 1024  # send buffer of a viewer's socket (Linux doubles it: about two JPEGs of 768x576)


class _Delivered(NamedTuple):
    image: np.ndarray
    detections: Detections | None
    seq: int
    sink_ns: int  # when it reached the sink (monotonic ns)


class _Jpeg(NamedTuple):
    jpeg: bytes
    version: int
    seq: int  # its frame's seq
    sink_ns: int  # when that frame reached the sink (monotonic ns)


class StreamView:
    """One stream's newest delivered frame and its newest JPEG, shared by the sink thread, the
    encoder thread and the viewers' threads."""

    def __init__(self, index: int, source_id: str, uri: str, live: bool, names: tuple[str, ...]) -> None:
        self.index = index
        self.source_id = source_id
        self.uri = redact_uri(uri)
        self.live = live
        self.names = names
        self.cond = threading.Condition()
        self.pending: _Delivered | None = None  # newest frame not yet encoded
        self.jpeg: bytes | None = None
        self.jpeg_seq = -1  # frame seq of self.jpeg
        self.jpeg_sink_ns = 0  # when that frame reached the sink (monotonic ns)
        self.version = 0  # bumped on each new JPEG
        self.last_encode = 0.0
        self.viewers = 0
        self.wanted_until = 0.0  # a snapshot request wants an encode until then
        self.ended = False
        self.encoded = 0
        self.remote = False  # its JPEGs come from the Ray worker that has its frames

    def publish(self, jpeg: bytes, seq: int, sink_ns: int) -> None:
        """A new JPEG for the viewers (encoded here, or on the Ray worker that has the frames)."""
        with self.cond:
            self.jpeg = jpeg
            self.jpeg_seq = seq
            self.jpeg_sink_ns = sink_ns
            self.version += 1
            self.encoded += 1
            self.cond.notify_all()

    def wanted(self, now: float) -> bool:
        """Whether someone watches (a viewer, or a snapshot request in the last 2 s)."""
        return bool(self.viewers) or self.wanted_until > now

    def wait_jpeg(self, after: int, timeout: float) -> _Jpeg | None:
        """A JPEG newer than version ``after``, with its frame's seq and sink time read with it
        (waiting up to ``timeout``); None if none came."""
        with self.cond:
            if self.version <= after or self.jpeg is None:
                self.cond.wait(timeout)
            if self.version <= after or self.jpeg is None:
                return None
            return _Jpeg(self.jpeg, self.version, self.jpeg_seq, self.jpeg_sink_ns)


class WebSink(SinkBase):
    """Per source: hand the newest delivered frame to the live view and return at once."""

    name = "web"

    def __init__(self, view: StreamView, wake: Callable[[], None]) -> None:
        self.view = view
        self.wake = wake
        self.written = 0

    def write(self, frame: Frame) -> None:
        # The frame's pixels are never changed after the sinks (sinks draw on copies), so a
        # reference is enough; the encoder copies when it draws.
        view = self.view
        delivered = _Delivered(frame.image, frame.detections, frame.seq, time.monotonic_ns())
        with view.cond:
            view.pending = delivered
        self.written += 1
        if view.viewers or view.wanted_until > time.monotonic():
            self.wake()

    def close(self) -> None:
        with self.view.cond:
            self.view.ended = True
            self.view.cond.notify_all()


class RemoteFramesSink(SinkBase):
    """Per source, on the Ray driver, where the frames' pixels are not: the stream has a place on
    the page (its numbers), and its JPEGs come from the worker that has the frames (:class:`FrameTap`
    there, :meth:`LiveView.put_jpeg` here), only while someone watches."""

    name = "web"

    def __init__(self, view: StreamView) -> None:
        self.view = view
        self.written = 0

    def write(self, frame: Frame) -> None:
        self.written += 1

    def close(self) -> None:
        with self.view.cond:
            self.view.ended = True
            self.view.cond.notify_all()


class FrameTap:
    """A Ray worker's part of the driver's live view: each stream's newest delivered frame, kept
    by the live view's own :class:`WebSink` in a :class:`StreamView` (no server, no encoder thread
    here), and encoded only when the driver asks for that stream (someone watches it there), at
    most ``max_fps`` times a second and only when a new frame has come. The driver asks with each
    ``poll`` (:mod:`pipeline.cluster.worker`)."""

    def __init__(self, names: tuple[str, ...], max_fps: float = 15.0, jpeg_quality: int = 75) -> None:
        self.names = names
        self.interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self.jpeg_quality = jpeg_quality
        self.views: dict[str, StreamView] = {}

    def sink_for(self, src: Any, scfg: Any = None) -> WebSink:
        view = self.views[src.id] = StreamView(0, src.id, src.uri, src.is_live, self.names)
        return WebSink(view, lambda: None)  # nothing to wake: the driver's poll asks

    def forget(self, source_id: str) -> None:
        self.views.pop(source_id, None)

    def _due(self, source_id: str, now: float) -> StreamView | None:
        view = self.views.get(source_id)
        if view is None or view.pending is None or now - view.last_encode < self.interval:
            return None
        return view

    def due(self, wanted: Iterable[str]) -> bool:
        """Whether a wanted stream has a new frame due now (a poll then answers at once instead
        of waiting for records)."""
        now = time.monotonic()
        return any(self._due(sid, now) for sid in wanted)

    def jpegs(self, wanted: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        """``{source: (seq, JPEG)}`` for the wanted streams that have a new frame due."""
        now = time.monotonic()
        out: dict[str, tuple[int, bytes]] = {}
        for sid in wanted:
            view = self._due(sid, now)
            if view is not None and encode_pending(view, self.jpeg_quality):
                out[sid] = (view.jpeg_seq, view.jpeg)
        return out


def encode_pending(view: StreamView, quality: int) -> bool:
    """Encode the stream's newest frame, if one waits, and publish it (the live view's encoder,
    and a Ray worker's :class:`FrameTap`). True when a new JPEG was published."""
    with view.cond:
        frame, view.pending = view.pending, None
    view.last_encode = time.monotonic()
    if frame is None:
        return False
    jpeg = encode_jpeg(frame, view.names, quality)
    if jpeg is not None:
        view.publish(jpeg, frame.seq, frame.sink_ns)
    return jpeg is not None


def encode_jpeg(frame: _Delivered, names: tuple[str, ...], quality: int) -> bytes | None:
    """A delivered frame with its boxes drawn (on a copy), as JPEG bytes (None if it has no pixels)."""
    image = frame.image
    if image is None:
        return None
    if frame.detections is not None and len(frame.detections):
        image = draw(image.copy(), frame.detections, names)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


class LiveView:
    """The web server of the live view. Bind at construction (a busy port fails before any frame
    is read); ``start(metrics)`` / ``stop()`` are called by ``Pipeline.run`` (it is an exporter);
    :meth:`sink_for` is the sink factory (``pipe.add_sink_factory``). See the module doc."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, max_fps: float = 15.0,
                 jpeg_quality: int = 75, prometheus_registry: Any = None) -> None:
        self.host = host
        self.token = token or (None if host in LOCAL_HOSTS else secrets.token_urlsafe(18))
        self.max_fps = max_fps
        self.jpeg_quality = jpeg_quality
        self.registry = prometheus_registry
        self.views: list[StreamView] = []
        self._next_index = 0
        # A service's routes (``/api/...``, ``/healthz``, ``/readyz``) on this same port: an object
        # with ``routes(path) -> bool`` and ``handle(method, path, headers, body) -> (code, ctype, bytes)``.
        self.api: Any = None
        self.names: tuple[str, ...] = ()  # class names for the labels (set by attach)
        self.metrics: Metrics | None = None
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.cpu_ns = 0  # CPU time of the encoder and the viewers' threads: what the live view costs
        self._cpu_lock = threading.Lock()
        server_class = _Server6 if ":" in host else _Server  # "::", "::1": an IPv6 address
        try:
            self.server = server_class((host, port), _Handler)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            fix = ("choose another output.web.port (--serve)" if exc.errno in (errno.EADDRINUSE, errno.EACCES)
                   else "output.web.host must be an address of this machine (127.0.0.1, 0.0.0.0, ::1, ::)")
            raise ConfigError(f"output.web: cannot serve on {where} ({exc.strerror or exc}); {fix}") from None
        self.server.view = self
        self.port = self.server.server_address[1]
        self.started = time.monotonic()

    @classmethod
    def attach(cls, pipe: Any, cfg: Any, prometheus_registry: Any = None) -> LiveView:
        """Serve ``pipe`` as ``cfg`` (an ``output.web`` config) says: sinks and start/stop."""
        view = cls(cfg.host, cfg.port, cfg.token, cfg.max_fps, cfg.jpeg_quality, prometheus_registry)
        view.names = tuple(pipe.names)
        pipe.add_sink_factory(view.sink_for)
        pipe.add_exporter(view)
        return view

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def sink_for(self, src: Any, scfg: Any = None) -> WebSink:
        view = StreamView(self._next_index, src.id, src.uri, src.is_live, self.names)
        self._next_index += 1  # a stream's URL keeps its number while others come and go
        self.views = [*self.views, view]  # replaced, never mutated: the viewers' threads iterate it
        return WebSink(view, self._wake.set)

    def remote_sink_for(self, src: Any, scfg: Any = None) -> RemoteFramesSink:
        """The sink factory on the Ray driver: the stream's place on the page; its JPEGs come
        from its worker (:meth:`wanted`, :meth:`put_jpeg`)."""
        view = StreamView(self._next_index, src.id, src.uri, src.is_live, self.names)
        view.remote = True
        self._next_index += 1
        self.views = [*self.views, view]
        return RemoteFramesSink(view)

    def wanted(self) -> set[str]:
        """The streams someone watches now (their frames are wanted from the Ray workers)."""
        now = time.monotonic()
        return {v.source_id for v in self.views if v.wanted(now)}  # (an ended stream shows its last frame)

    def put_jpeg(self, source_id: str, seq: int, jpeg: bytes) -> None:
        """A JPEG of ``source_id``'s newest frame, encoded on the Ray worker that has the frames."""
        view = next((v for v in reversed(self.views) if v.source_id == source_id), None)
        if view is not None:
            view.publish(jpeg, seq, time.monotonic_ns())

    def forget_source(self, source_id: str) -> None:
        """A stream removed from a service leaves the page (its viewers see its end)."""
        gone = [v for v in self.views if v.source_id == source_id]
        self.views = [v for v in self.views if v.source_id != source_id]
        for view in gone:
            with view.cond:
                view.ended = True
                view.pending = None
                view.cond.notify_all()

    def view_at(self, index: int) -> StreamView | None:
        """The stream whose URLs carry ``index`` (``/stream/N.mjpg``), if it is still there."""
        return next((v for v in self.views if v.index == index), None)

    # ---- exporter protocol ------------------------------------------------------------------
    def start(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.started = time.monotonic()
        for name, target in (("inferpath-web-server", self.server.serve_forever),
                             ("inferpath-web-encoder", self._encode_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.token:  # printed once, to the terminal, never to the log
            print(f"inferpath: live view at {self.url}", file=sys.stderr, flush=True)
        else:
            log.info("live view at %s", self.url)

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._wake.set()
        for view in self.views:
            with view.cond:
                view.cond.notify_all()
        if self._threads:
            self.server.shutdown()
        self.server.cut_viewers()  # a viewer who never reads would hold its thread in a write until the timeout
        self.server.server_close()  # joins the viewers' threads (they see ``stopping``)
        for t in self._threads:
            t.join(5)
        self._threads.clear()

    close = stop

    # ---- encoding ---------------------------------------------------------------------------
    def _add_cpu(self, ns: int) -> None:
        with self._cpu_lock:
            self.cpu_ns += ns

    def _encode_loop(self) -> None:
        interval = 1.0 / self.max_fps if self.max_fps > 0 else 0.0
        while not self.stopping.is_set():
            c0 = time.thread_time_ns()
            self._wake.wait(0.25)
            self._wake.clear()
            next_due = None
            for view in self.views:
                if view.pending is None or not view.wanted(time.monotonic()):
                    continue
                wait = view.last_encode + interval - time.monotonic()
                if wait > 0:  # rate cap: keep the newest, encode it when due
                    next_due = wait if next_due is None else min(next_due, wait)
                    continue
                encode_pending(view, self.jpeg_quality)
            self._add_cpu(time.thread_time_ns() - c0)
            if next_due is not None and not self.stopping.is_set():
                time.sleep(min(next_due, 0.25))
                self._wake.set()

    # ---- numbers ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """What the page shows, per stream (JSON-ready; no credentials)."""
        m = self.metrics
        now = time.monotonic()
        out = []
        for view in self.views:
            row: dict[str, Any] = {"index": view.index, "id": view.source_id, "uri": view.uri, "live": view.live,
                                   "viewers": view.viewers, "jpeg_seq": view.jpeg_seq}
            if m is not None:
                st = m.snapshot(view.source_id)
                window = min(FPS_WINDOW_S, max(now - self.started, 1e-3))
                fps = len(m.stage_values("e2e", view.source_id, since=now - window)) / window
                p50, _, p99 = (v * 1000 for v in percentiles(m.stage_values("e2e", view.source_id,
                                                                            since=now - LATENCY_WINDOW_S)))
                up = st.gauges.get("up")
                state = "ended" if view.ended else ("down" if up == 0.0 else "up")
                row.update(frames_in=st.frames_in, frames_out=st.frames_out, fps=round(fps, 2),
                           e2e_p50_ms=None if p50 != p50 else round(p50, 1),
                           e2e_p99_ms=None if p99 != p99 else round(p99, 1),
                           drops=dict(sorted(st.drops.items())), state=state,
                           reconnects=st.events.get("reconnects", 0),
                           drift_warnings=st.events.get("drift_warnings", 0),
                           drift_score=st.gauges.get("drift_score"),
                           canary_frames=st.events.get("canary_frames"),
                           canary_agreement=st.gauges.get("canary_agreement"),
                           canary_warnings=st.events.get("canary_warnings", 0))
            out.append(row)
        return {"uptime_s": round(now - self.started, 1), "streams": out}

    def allowed(self, query: dict[str, list[str]], headers: Any) -> bool:
        if not self.token:
            return True
        given = (query.get("token") or [""])[0]
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = given or auth[7:]
        return hmac.compare_digest(given.encode(), self.token.encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the viewers' threads: nothing outlives stop()
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 64  # listen backlog: ten viewers opening at once must not wait for a SYN retry (1 s)
    view: LiveView

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self.connections.discard(request)

    def cut_viewers(self) -> None:
        """Shut every open connection down, so a handler blocked writing to a viewer who stopped
        reading fails at once instead of after its socket timeout (Ctrl-C must not wait on viewers)."""
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler


class _Server6(_Server):
    address_family = socket.AF_INET6


_STREAM = re.compile(r"^/(stream|frame)/(\d+)\.(mjpg|jpg)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a viewer that stops reading is cut after this, never holds a thread forever
    # HTTP/1.0 (the default): every response closes its connection, so no idle keep-alive
    # connection holds a thread when the server stops.

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("web %s: %s", self.address_string(), redact_text(format % args))

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        view = self.server.view
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if view.api is not None and view.api.routes(url.path):
            self._api("GET")
            return
        if not view.allowed(query, self.headers):
            self._send(403, "text/plain; charset=utf-8", b"forbidden: this live view needs ?token=...\n")
            return
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", render_page(view).encode())
            elif url.path == "/stats.json":
                self._send(200, "application/json", json.dumps(view.stats()).encode())
            elif url.path == "/metrics" and view.registry is not None:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, CONTENT_TYPE_LATEST, generate_latest(view.registry))
            elif (match := _STREAM.match(url.path)) and (stream := view.view_at(int(match.group(2)))) is not None:
                if match.group(1) == "stream" and match.group(3) == "mjpg":
                    self._mjpeg(view, stream)
                elif match.group(1) == "frame" and match.group(3) == "jpg":
                    self._snapshot(view, stream)
                else:
                    self._send(404, "text/plain", b"not found\n")
            else:
                self._send(404, "text/plain", b"not found\n")
        except OSError:  # BrokenPipe, ConnectionReset, a timeout, or a socket cut by stop()
            pass  # the viewer went away

    def do_POST(self) -> None:  # noqa: N802 (the base class's name)
        self._api("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._api("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._api("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._api("PUT")

    def _api(self, method: str) -> None:
        """A service's request (see :mod:`pipeline.service`); without a service only GETs exist."""
        api = self.server.view.api
        try:
            if api is None:
                self._send(404 if method == "GET" else 405, "text/plain", b"not found\n")
                return
            code, ctype, body = api.handle(method, self.path, self.headers, self.rfile)
            self._send(code, ctype, body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _snapshot(self, view: LiveView, stream: StreamView) -> None:
        stream.wanted_until = time.monotonic() + 2.0
        view._wake.set()
        got = None
        if stream.pending is not None or (stream.remote and stream.jpeg is None):  # a newer frame is coming
            got = stream.wait_jpeg(stream.version, 2.0)
        elif stream.remote:  # encoded on a Ray worker when asked: a newer one comes with its next poll
            got = stream.wait_jpeg(stream.version, 0.5)
        jpeg = got.jpeg if got is not None else stream.jpeg
        if jpeg is None:
            self._send(503, "text/plain", b"no frame yet\n")
        else:
            self._send(200, "image/jpeg", jpeg)

    def _mjpeg(self, view: LiveView, stream: StreamView) -> None:
        """multipart/x-mixed-replace: each part is the newest JPEG; the boundary follows each part
        at once, so the browser shows a frame without waiting for the next one."""
        # A small send buffer: a viewer who stops reading holds a frame or two in the kernel, not
        # seconds of video; when it reads again it gets the newest frame.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):  # Linux: block while unsent bytes pile up
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 16 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(f"--{BOUNDARY}\r\n".encode())
        c0 = time.thread_time_ns()
        with stream.cond:
            stream.viewers += 1
        view._wake.set()  # encode the frame already waiting: the first image comes at once
        try:
            version = -1
            while not view.stopping.is_set():
                got = stream.wait_jpeg(version, 0.5)
                if got is None:
                    if stream.ended and stream.pending is None:
                        break
                    continue
                version = got.version
                head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(got.jpeg)}\r\n"
                        f"X-Seq: {got.seq}\r\nX-Sink-Ns: {got.sink_ns}\r\n\r\n")
                self.wfile.write(head.encode() + got.jpeg + f"\r\n--{BOUNDARY}\r\n".encode())
                self.wfile.flush()
        finally:
            with stream.cond:
                stream.viewers -= 1
            view._add_cpu(time.thread_time_ns() - c0)


def _fmt(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _canary_text(s: dict[str, Any]) -> str:
    """The FP32 canary's line: its window's agreement, the frames it checked, its warnings
    (the page's script writes the same text)."""
    agree = s.get("canary_agreement")
    text = ("agreement " + (f"{agree:.3f}" if agree is not None else "-") + f", {s.get('canary_frames', 0)} frames")
    return text + (f", {s['canary_warnings']} warning(s)" if s.get("canary_warnings") else "")


def render_page(view: LiveView) -> str:
    """The page, with the numbers of now already filled in (the script refreshes them)."""
    stats = view.stats()
    q = f"?token={view.token}" if view.token else ""
    cards = []
    for s in stats["streams"]:
        i = s["index"]
        drops = ", ".join(f"{k} {v}" for k, v in (s.get("drops") or {}).items()) or "none"
        drift = f"{s.get('drift_warnings', 0)}" + (
            f" (score {s['drift_score']:.1f})" if s.get("drift_score") is not None else "")
        canary = ""
        if s.get("canary_frames") is not None:
            canary = f"""
    <tr><th>FP32 canary</th><td colspan="5" id="canary-{i}">{html.escape(_canary_text(s))}</td></tr>"""
        cards.append(f"""
<section class="stream" id="stream-{i}">
  <h2>{html.escape(s['id'])} <span class="state {html.escape(str(s.get('state', '')))}" id="state-{i}">{
      html.escape(str(s.get('state', '-')))}</span></h2>
  <div class="uri">{html.escape(s['uri'])}</div>
  <img id="video-{i}" alt="{html.escape(s['id'])}" data-src="/stream/{i}.mjpg{q}">
  <table>
    <tr><th>fps</th><td class="fps" id="fps-{i}">{_fmt(s.get('fps'))}</td>
        <th>e2e p50</th><td id="p50-{i}">{_fmt(s.get('e2e_p50_ms'), ' ms')}</td>
        <th>p99</th><td id="p99-{i}">{_fmt(s.get('e2e_p99_ms'), ' ms')}</td></tr>
    <tr><th>frames</th><td id="frames-{i}">{_fmt(s.get('frames_out'))}</td>
        <th>drops</th><td colspan="3" id="drops-{i}">{html.escape(drops)}</td></tr>
    <tr><th>reconnects</th><td id="reconnects-{i}">{_fmt(s.get('reconnects'))}</td>
        <th>drift warnings</th><td colspan="3" id="drift-{i}">{html.escape(drift)}</td></tr>{canary}
  </table>
</section>""")
    links = []  # a service's API and its document; the Prometheus text when served here
    if view.api is not None:
        links.append(f'<a href="/api/docs{html.escape(q)}">API</a>')
    if view.registry is not None:
        links.append('<a href="/metrics">metrics</a>')
    nav = f'<nav>{" · ".join(links)}</nav>' if links else ""
    return (_PAGE.replace("{{CARDS}}", "".join(cards)).replace("{{QUERY}}", json.dumps(q))
            .replace("{{LINKS}}", nav))


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>inferpath live view</title>
<style>
body{font-family:system-ui,sans-serif;background:#111;color:#ddd;margin:12px}
h1{font-size:18px;margin:0 0 8px} h2{font-size:15px;margin:4px 0}
main{display:flex;flex-wrap:wrap;gap:12px}
.stream{background:#1c1c1c;padding:8px;border-radius:6px;max-width:100%}
.stream img{display:block;max-width:min(100%,960px);background:#000;min-width:320px;min-height:180px}
.uri{font-size:12px;color:#999;margin-bottom:4px}
table{font-size:13px;border-collapse:collapse;margin-top:6px} th{text-align:left;color:#aaa;font-weight:normal}
td,th{padding:1px 8px 1px 0} .state{font-size:12px;padding:1px 6px;border-radius:3px;background:#444}
.state.up{background:#1d6b2c} .state.down{background:#8b1d1d} .state.ended{background:#555}
nav{margin:-8px 0 12px;font-size:13px} nav a{color:#8ab4f8}
</style></head>
<body><h1>inferpath live view</h1>{{LINKS}}<main>{{CARDS}}</main>
<script>
const Q = {{QUERY}};
// Start the videos after load, so the page's load event never waits on an endless stream.
window.addEventListener("load", () => {
  for (const img of document.querySelectorAll("img[data-src]")) img.src = img.dataset.src;
});
function fmt(v, unit) { return v === null || v === undefined ? "-" : v + (unit || ""); }
async function refresh() {
  try {
    const r = await fetch("/stats.json" + Q, {cache: "no-store"});
    const data = await r.json();
    for (const s of data.streams) {
      const i = s.index, set = (id, text) => { const e = document.getElementById(id + "-" + i); if (e) e.textContent = text; };
      set("fps", fmt(s.fps)); set("p50", fmt(s.e2e_p50_ms, " ms")); set("p99", fmt(s.e2e_p99_ms, " ms"));
      set("frames", fmt(s.frames_out)); set("reconnects", fmt(s.reconnects));
      const drops = Object.entries(s.drops || {}).map(([k, v]) => k + " " + v).join(", ");
      set("drops", drops || "none");
      if (s.canary_frames != null) set("canary", "agreement " + (s.canary_agreement != null ? s.canary_agreement.toFixed(3) : "-")
        + ", " + s.canary_frames + " frames" + (s.canary_warnings ? ", " + s.canary_warnings + " warning(s)" : ""));
      set("drift", s.drift_warnings + (s.drift_score != null ? " (score " + s.drift_score.toFixed(1) + ")" : ""));
      const st = document.getElementById("state-" + i);
      if (st) { st.textContent = s.state; st.className = "state " + s.state; }
    }
  } catch (e) { /* the run has ended or the network blinked: try again */ }
}
setInterval(refresh, 1000);
</script></body></html>
"""

__all__ = ["LiveView", "WebSink", "StreamView", "render_page"]
