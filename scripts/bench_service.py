#!/usr/bin/env python
"""Measurements behind ``inferpath serve`` (docs/bench/service.md). Run under the heavy lock:

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py http [--asgi-path DIR]
    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py leak [--cycles 100]
    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py join [--window 15]
    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py ray-join [--joins 5]

``http``: the HTTP layer. The standard library's ThreadingHTTPServer (what pipeline/web.py and
the service use) against Starlette on uvicorn, serving the same JSON route (a 3-stream
``GET /api/streams`` body) and a ``POST`` of a sources[] entry: latency p50/p99 of one client
opening a connection per request (as curl does), requests/s with 8 such clients, and what the
import costs (RSS, threads). Starlette/uvicorn are not dependencies: ``--asgi-path`` points at a
``pip install --target DIR starlette uvicorn``.

``leak``: a service (Pipeline(cfg, serve=True)) with one camera running; a second camera (RTSP on
127.0.0.1) is added, delivers, and is removed, ``--cycles`` times. Threads, open file
descriptors and RSS after a warm-up of 10 cycles and at the end.

``join``: the pipeline's capacity is measured on a file (frames/s, every frame processed); three
RTSP cameras then offer ``--loads`` times that in all (2x: each 2/3 of it; then 0.5x), and a
fourth camera like them joins. Reported: how long
the fourth takes to deliver its first frame, and the first three's delivered rate and e2e p99 in
the window before it joined, in the window right after (the join), and in the steady state after.

``ray-join``: a real ``inferpath serve`` process (``python -m pipeline serve``) with ``sources: []``,
over HTTP only, on the local engine and then with ``cluster.engine: ray`` and 2 workers (a Ray
started by the service). A camera (RTSP on 127.0.0.1, 10 fps) is added and runs throughout; then
a second camera is added (``POST /api/streams``), delivers its first frame, and is removed
(``DELETE``), ``--joins`` times. Reported per engine: the service's start (to ``/healthz``), the
answer times of ``POST`` and ``DELETE``, the time from the ``POST`` to the first delivered frame
(``frames_out`` > 0 in ``GET /api/streams/ID``, polled every 20 ms), where each stream ran, and
the first camera's delivered rate while the others came and went.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from pipeline import Pipeline  # noqa: E402
from pipeline.config import build_config  # noqa: E402
from pipeline.metrics import percentiles  # noqa: E402
from tests.rtsp import RtspServer  # noqa: E402

VTEST = REPO / "sample_videos" / "vtest.avi"
STREAMS = [{"id": f"cam{i}", "uri": f"rtsp://127.0.0.1:8554/stream{i}", "state": "up", "fps": 12.5,
            "frames_in": 1000 + i, "frames_out": 990 + i, "drops": {"late@inference": 10}} for i in range(3)]


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- http ----------------------------------------------------------------------------------------
def _stdlib_server():
    """The service's own server: the live view's (pipeline/web.py) with an API object answering
    the route as pipeline/service.py does (JSON in, JSON out)."""
    from pipeline.metrics import Metrics
    from pipeline.web import LiveView

    class Api:
        @staticmethod
        def routes(path):
            return path.startswith("/api/")

        @staticmethod
        def handle(method, target, headers, body):
            if method == "POST":
                data = json.loads(body.read(int(headers.get("Content-Length") or 0)))
                return 201, "application/json", json.dumps(dict(STREAMS[0], id=data["id"])).encode()
            return 200, "application/json", json.dumps(STREAMS).encode()

    view = LiveView("127.0.0.1", 0)
    view.api = Api()
    view.start(Metrics())
    return view.port, view.stop


def _asgi_server():
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def streams(request: Request):
        if request.method == "POST":
            body = await request.json()
            return JSONResponse(dict(STREAMS[0], id=body["id"]), status_code=201)
        return JSONResponse(STREAMS)

    app = Starlette(routes=[Route("/api/streams", streams, methods=["GET", "POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop():
        server.should_exit = True

    return port, stop


def _client(port: int, n: int, method: str, out: list[float]) -> None:
    import http.client

    body = json.dumps({"id": "door", "uri": "rtsp://127.0.0.1:8554/stream"}) if method == "POST" else None
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, "/api/streams", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        out.append((time.perf_counter() - t0) * 1000)


def bench_http(args) -> str:
    rows = []
    for name, start in (("stdlib ThreadingHTTPServer (pipeline/web.py)", _stdlib_server), ("Starlette on uvicorn", _asgi_server)):
        rss0, threads0 = rss_mb(), threading.active_count()
        t_imp = time.perf_counter()
        if name.startswith("Starlette"):
            if args.asgi_path:
                sys.path.insert(0, args.asgi_path)
            try:
                import starlette  # noqa: F401
                import uvicorn  # noqa: F401
            except ImportError as exc:
                rows.append([name, f"not installed ({exc})", "", "", "", "", ""])
                continue
        import_ms = (time.perf_counter() - t_imp) * 1000
        port, stop = start()
        _client(port, 50, "GET", [])  # warm-up
        row = [name]
        for method in ("GET", "POST"):
            lat: list[float] = []
            _client(port, args.requests, method, lat)
            p50, _, p99 = percentiles(__import__("numpy").array(lat))
            row += [f"{p50:.2f}", f"{p99:.2f}"]
        lat = []
        threads = [threading.Thread(target=_client, args=(port, args.requests // 8, "GET", lat)) for _ in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        row.append(f"{len(lat) / (time.perf_counter() - t0):.0f}")
        row.append(f"{rss_mb() - rss0:+.1f} MB, {threading.active_count() - threads0:+d} threads, import {import_ms:.0f} ms")
        stop()
        rows.append(row)
    head = ["server", "GET p50 ms", "GET p99 ms", "POST p50 ms", "POST p99 ms", "GET req/s (8 clients)",
            "cost in the process"]
    return table(head, rows) + f"\n\n{args.requests} requests each, a new connection per request, 127.0.0.1."


# ---- leak ----------------------------------------------------------------------------------------
def _service(tmp: Path, sources: list[dict], budget: float | None = 300.0) -> tuple[Pipeline, threading.Thread]:
    cfg = build_config({"sources": sources, "output": {"dir": str(tmp), "video": False, "jsonl": True},
                        "pipeline": {"progress": False, "latency_budget_ms": budget},
                        "metrics": {"log_interval_s": 0}})
    pipe = Pipeline(cfg, serve=True)
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    pipe.engine.running.wait(60)
    return pipe, thread


def _wait(cond, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise TimeoutError(f"not within {timeout} s")


def bench_leak(args) -> str:
    import tempfile

    with RtspServer(VTEST, fps=10, mount="/a") as bg, RtspServer(VTEST, fps=10, mount="/b") as cam, \
            tempfile.TemporaryDirectory() as tmp:
        pipe, thread = _service(Path(tmp), [{"id": "bg", "uri": bg.url}])
        rows = []

        def cycle():
            pipe.add_source({"id": "cam", "uri": cam.url})
            _wait(lambda: pipe.stream("cam")["frames_out"] > 0, 30)
            pipe.remove_source("cam")

        def sample(label: str, n: int):
            rows.append([label, n, threading.active_count(), fds(), f"{rss_mb():.1f}"])

        sample("before the first add", 0)
        t0 = time.monotonic()
        for i in range(1, args.cycles + 11):
            cycle()
            if i == 10:
                sample("after 10 (warm-up)", i)
        per = (time.monotonic() - t0) / (args.cycles + 10)
        sample(f"after {args.cycles} more", args.cycles + 10)
        bg_out = pipe.stream("bg")["frames_out"]
        pipe.stop("bench over")
        thread.join(60)
    warm, end = rows[1], rows[2]
    growth = 100 * (float(end[4]) - float(warm[4])) / float(warm[4])
    return (table(["when", "add/remove cycles", "threads", "open fds", "RSS MB"], rows)
            + f"\n\nRSS growth after the warm-up: {growth:+.2f} % over {args.cycles} cycles; threads "
              f"{end[2] - warm[2]:+d}, fds {end[3] - warm[3]:+d}. One cycle (add an RTSP camera, wait for its "
              f"first delivered frame, remove it) took {per:.2f} s; the background camera delivered {bg_out} "
              "frames meanwhile.")


# ---- join ----------------------------------------------------------------------------------------
def _window(pipe: Pipeline, ids: list[str], since: float, until: float) -> tuple[float, float]:
    """(delivered frames/s per stream, mean over ids; e2e p99 ms over their frames) in [since, until]."""
    m = pipe.state.metrics
    rates, values = [], []
    for sid in ids:
        v = m.stage_values("e2e", sid, since=since)
        rates.append(len(v) / (until - since))
        values.append(v)
    import numpy as np

    p99 = percentiles(np.concatenate(values), (99,))[0] * 1000
    return statistics.mean(rates), p99


def _capacity() -> float:
    """Frames/s the pipeline delivers from one file with every frame processed (10 s, after 3 s warm)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pipe, thread = _service(Path(tmp), [{"id": "f", "uri": str(VTEST), "loop": True}], budget=None)
        time.sleep(3)
        n0, t0 = pipe.stream("f")["frames_out"], time.monotonic()
        time.sleep(10)
        capacity = (pipe.stream("f")["frames_out"] - n0) / (time.monotonic() - t0)
        pipe.stop("capacity measured")
        thread.join(60)
    return capacity


def _join_at(load: float, capacity: float, window: float) -> str:
    """Three cameras offering ``load`` x capacity in all, then a fourth joins (see the module doc)."""
    import tempfile

    per_cam = round(load * capacity / 3, 1)
    servers = [RtspServer(VTEST, fps=per_cam, mount=f"/c{i}").start() for i in range(4)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ids = ["c0", "c1", "c2"]
            pipe, thread = _service(Path(tmp), [{"id": sid, "uri": s.url} for sid, s in zip(ids, servers)])
            _wait(lambda: all(pipe.stream(s)["frames_out"] > 0 for s in ids), 30)
            time.sleep(5)  # warm
            t_before = time.monotonic()
            time.sleep(window)
            before = _window(pipe, ids, t_before, time.monotonic())
            t_add = time.monotonic()
            pipe.add_source({"id": "c3", "uri": servers[3].url})
            first = _wait(lambda: pipe.stream("c3")["frames_out"] > 0, 30)
            time.sleep(max(0.0, 3.0 - first))
            join = _window(pipe, ids, t_add, time.monotonic())
            time.sleep(2)
            t_after = time.monotonic()
            time.sleep(window)
            after = _window(pipe, ids, t_after, time.monotonic())
            after4 = _window(pipe, [*ids, "c3"], t_after, time.monotonic())
            drops = {s["id"]: sum(s["drops"].values()) for s in pipe.streams()}
            pipe.stop("bench over")
            thread.join(60)
    finally:
        for s in servers:
            s.stop()
    rows = [["before (3 cameras)", f"{before[0]:.2f}", f"{before[1]:.0f}", "1.00", "1.00"],
            ["the join (its first 3 s)", f"{join[0]:.2f}", f"{join[1]:.0f}", f"{join[0] / before[0]:.2f}",
             f"{join[1] / before[1]:.2f}"],
            [f"after ({window:g} s, 4 cameras)", f"{after[0]:.2f}", f"{after[1]:.0f}", f"{after[0] / before[0]:.2f}",
             f"{after[1] / before[1]:.2f}"]]
    return (f"#### 3 cameras at {load:g}x in all ({per_cam} fps each), then a fourth\n\n"
            f"The fourth camera delivered its first frame {first:.2f} s after add_source().\n\n"
            + table(["window", "delivered fps per camera (first 3)", "e2e p99 ms (first 3)", "rate ratio",
                     "p99 ratio"], rows)
            + f"\n\nAfter the join all four deliver {after4[0]:.2f} fps each (p99 {after4[1]:.0f} ms); "
              f"drops so far: {drops}.")


def bench_join(args) -> str:
    capacity = _capacity()
    parts = [f"Capacity on a file: {capacity:.1f} frames/s (every frame processed); latency budget 300 ms; "
             f"windows of {args.window:g} s."]
    parts += [_join_at(load, capacity, args.window) for load in args.loads]
    return "\n\n".join(parts)


# ---- ray-join ------------------------------------------------------------------------------------
def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _served_joins(engine: str, joins: int, tmp: Path, bg_url: str, cam_url: str) -> list:
    """One engine's row (see the module doc)."""
    from tests.rtsp import free_port

    cfg = {"sources": [], "output": {"jsonl": True, "video": False}, "metrics": {"log_interval_s": 0}}
    if engine == "ray":
        cfg["cluster"] = {"engine": "ray", "workers": 2, "cpus_per_worker": 1}
    (tmp / f"{engine}.yaml").write_text(json.dumps(cfg))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(tmp / f"{engine}.yaml"), "--port", str(port),
                             "-o", str(tmp / engine)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return _call(port, "GET", "/healthz")[0] == 200
            except OSError:
                return False

        start_s = _wait(up, 240)
        where = []
        code, bg = _call(port, "POST", "/api/streams", {"id": "bg", "uri": bg_url})
        assert code == 201, bg
        where.append(f"bg on {bg.get('worker', 'this process')}")
        _wait(lambda: _call(port, "GET", "/api/streams/bg")[1]["frames_out"] > 0, 60)
        time.sleep(3)
        bg0, tb0 = _call(port, "GET", "/api/streams/bg")[1]["frames_out"], time.monotonic()
        posts, firsts, deletes = [], [], []
        for _ in range(joins):
            t = time.monotonic()
            code, cam = _call(port, "POST", "/api/streams", {"id": "cam", "uri": cam_url})
            assert code == 201, cam
            posts.append((time.monotonic() - t) * 1000)
            firsts.append(_wait(lambda: _call(port, "GET", "/api/streams/cam")[1]["frames_out"] > 0, 60)
                          + posts[-1] / 1000)
            where.append(f"cam on {cam.get('worker', 'this process')}")
            t = time.monotonic()
            code, gone = _call(port, "DELETE", "/api/streams/cam")
            assert code == 200, gone
            deletes.append((time.monotonic() - t) * 1000)
        bg_fps = (_call(port, "GET", "/api/streams/bg")[1]["frames_out"] - bg0) / (time.monotonic() - tb0)
        proc.terminate()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    placed = ", ".join(sorted(set(where), key=where.index))
    return [engine if engine == "local" else "ray, 2 workers", f"{start_s:.1f}", f"{statistics.median(posts):.0f}",
            f"{statistics.median(firsts):.2f}", f"{max(firsts):.2f}", f"{statistics.median(deletes):.0f}",
            f"{bg_fps:.2f}", placed]


def bench_ray_join(args) -> str:
    import tempfile

    with RtspServer(VTEST, fps=10, mount="/bg") as bg, RtspServer(VTEST, fps=10, mount="/cam") as cam, \
            tempfile.TemporaryDirectory() as tmp:
        rows = [_served_joins(engine, args.joins, Path(tmp), bg.url, cam.url) for engine in ("local", "ray")]
    head = ["engine", "start to /healthz s", "POST ms (p50)", "first frame s (p50)", "first frame s (max)",
            "DELETE ms (p50)", "bg delivered fps meanwhile", "placement"]
    return table(head, rows) + (f"\n\n{args.joins} joins each of an RTSP camera (vtest.avi at 10 fps, 127.0.0.1) "
                                "while another runs; first frame: from sending the POST.")


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["http", "leak", "join", "ray-join"])
    p.add_argument("--joins", type=int, default=5, help="streams added and removed per engine (ray-join)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--asgi-path", help="a pip --target dir holding starlette and uvicorn")
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--loads", type=float, nargs="+", default=[2.0, 0.5],
                   help="what the three cameras offer in all, as a multiple of the capacity (join)")
    args = p.parse_args()
    modes = {"http": bench_http, "leak": bench_leak, "join": bench_join, "ray-join": bench_ray_join}
    print(modes[args.mode](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
