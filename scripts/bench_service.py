#!/usr/bin/env python
"""Measurements behind ``inferpath serve`` (docs/bench/service.md). Run under the heavy lock:

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py http [--asgi-path DIR]
    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py leak [--cycles 100]
    flock /tmp/heavy.lock .venv/bin/python scripts/bench_service.py join [--window 15] [--capacity FPS] [--new-weight 1 0.25] [--camera-running]
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
fourth camera like them joins, with ``sources[].weight`` = ``--new-weight`` (each value a run of
its own; the first three keep weight 1). Reported: how long the fourth takes to deliver its first
frame, the first three's delivered rate and e2e p99 in the window before it joined, in the window
right after (the join), and in the steady state after, and where the CPU went in the windows
before and after (the cameras' RTSP servers, which encode H.264 on the same cores, and the
pipeline's threads by kind). ``--capacity`` pins the rate the loads are multiples of (the
measurement on a file reads low on a busy machine, which would change the load between runs).
``--camera-running``: the fourth camera streams from the start (to a process that reads its
packets), as a real camera runs whether or not the service reads it; its RTSP server's H.264
encoder, which runs on the same 2 cores here, is then in the window before the join too, and the
join adds only what the service spends on the new stream.

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


CPU_GROUPS = ("cameras", "readers", "preprocess", "inference", "rest")


def _cpu_ticks(pids: list[int]) -> dict[str, int]:
    """CPU ticks so far: the processes ``pids`` (the cameras: the RTSP servers, GStreamer
    decoding the file and encoding H.264, and a watcher if any), and this process's threads by kind (the stage threads by name; threads Python did not
    start, such as FFmpeg's decoder threads and ONNX Runtime's pool, are in ``rest``)."""
    def ticks(stat_path: str) -> int:
        try:
            stat = open(stat_path).read()
        except OSError:
            return 0
        fields = stat[stat.rfind(")") + 2:].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    out = dict.fromkeys(CPU_GROUPS, 0)
    out["cameras"] = sum(ticks(f"/proc/{pid}/stat") for pid in pids)
    names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
        name = names.get(int(tid), "")
        kind = next((k for k in ("reader", "preprocess", "inference") if name.startswith(f"inferpath-{k}")), None)
        out[{"reader": "readers"}.get(kind, kind) or "rest"] += ticks(f"/proc/self/task/{tid}/stat")
    return out


def _cores(t0: dict[str, int], t1: dict[str, int], seconds: float) -> str:
    """CPU between two ``_cpu_ticks`` readings, in cores (of ``os.cpu_count()``) per group."""
    hz = os.sysconf("SC_CLK_TCK")
    used = {k: (t1[k] - t0[k]) / hz / seconds for k in CPU_GROUPS}
    return ", ".join(f"{k} {v:.2f}" for k, v in used.items()) + f" (pipeline {sum(used.values()) - used['cameras']:.2f})"


def _watcher(url: str):
    """A process that reads an RTSP stream's packets without decoding them: it keeps a test
    camera streaming (its server encodes only while a client is connected, and every client of a
    mount shares that one encoder), as a real camera runs whether or not the service reads it."""
    import subprocess

    code = ("import av, sys; c = av.open(sys.argv[1], options={'rtsp_transport': 'tcp'}); "
            "[None for _ in c.demux(c.streams.video[0])]")
    return subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _join_at(load: float, capacity: float, window: float, new_weight: float = 1.0,
             camera_running: bool = False) -> str:
    """Three cameras offering ``load`` x capacity in all, then a fourth joins (see the module doc).
    ``camera_running``: the fourth camera streams (to a :func:`_watcher`) from the start, so its
    encoder's CPU is in every window and the join adds only what the service spends on it."""
    import tempfile

    per_cam = round(load * capacity / 3, 1)
    servers = [RtspServer(VTEST, fps=per_cam, mount=f"/c{i}").start() for i in range(4)]
    watcher = _watcher(servers[3].url) if camera_running else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ids = ["c0", "c1", "c2"]
            pids = [srv.proc.pid for srv in servers if srv.proc is not None] + ([watcher.pid] if watcher else [])
            pipe, thread = _service(Path(tmp), [{"id": sid, "uri": s.url} for sid, s in zip(ids, servers)])
            _wait(lambda: all(pipe.stream(s)["frames_out"] > 0 for s in ids), 30)
            time.sleep(5)  # warm
            t_before, cpu0 = time.monotonic(), _cpu_ticks(pids)
            time.sleep(window)
            cpu_before = _cores(cpu0, _cpu_ticks(pids), time.monotonic() - t_before)
            before = _window(pipe, ids, t_before, time.monotonic())
            t_add = time.monotonic()
            entry = {"id": "c3", "uri": servers[3].url}
            if new_weight != 1.0:
                entry["weight"] = new_weight
            pipe.add_source(entry)
            first = _wait(lambda: pipe.stream("c3")["frames_out"] > 0, 30)
            time.sleep(max(0.0, 3.0 - first))
            join = _window(pipe, ids, t_add, time.monotonic())
            time.sleep(2)
            t_after, cpu0 = time.monotonic(), _cpu_ticks(pids)
            time.sleep(window)
            cpu_after = _cores(cpu0, _cpu_ticks(pids), time.monotonic() - t_after)
            after = _window(pipe, ids, t_after, time.monotonic())
            fourth = _window(pipe, ["c3"], t_after, time.monotonic())
            after4 = _window(pipe, [*ids, "c3"], t_after, time.monotonic())
            drops = {s["id"]: sum(s["drops"].values()) for s in pipe.streams()}
            reasons: dict[str, int] = {}
            for st in pipe.streams():
                for reason, n in st["drops"].items():
                    reasons[reason] = reasons.get(reason, 0) + n
            pipe.stop("bench over")
            thread.join(60)
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait(10)
        for s in servers:
            s.stop()
    rows = [["before (3 cameras)", f"{before[0]:.2f}", f"{before[1]:.0f}", "1.00", "1.00"],
            ["the join (its first 3 s)", f"{join[0]:.2f}", f"{join[1]:.0f}", f"{join[0] / before[0]:.2f}",
             f"{join[1] / before[1]:.2f}"],
            [f"after ({window:g} s, 4 cameras)", f"{after[0]:.2f}", f"{after[1]:.0f}", f"{after[0] / before[0]:.2f}",
             f"{after[1] / before[1]:.2f}"]]
    running = ", streaming from the start (its encoder's CPU in every window)" if camera_running else ""
    return (f"#### 3 cameras at {load:g}x in all ({per_cam} fps each), then a fourth with weight {new_weight:g}"
            f"{running}\n\n"
            f"The fourth camera delivered its first frame {first:.2f} s after add_source().\n\n"
            + table(["window", "delivered fps per camera (first 3)", "e2e p99 ms (first 3)", "rate ratio",
                     "p99 ratio"], rows)
            + f"\n\nAfter the join the four deliver {after4[0]:.2f} fps each on average (p99 {after4[1]:.0f} ms), "
              f"the fourth {fourth[0]:.2f} fps (p99 {fourth[1]:.0f} ms); drops so far: {drops} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))}).\n\n"
              f"CPU, in cores of {os.cpu_count()}: before the join {cpu_before}; after {cpu_after}.")


def bench_join(args) -> str:
    capacity = args.capacity or _capacity()
    how = "given (--capacity)" if args.capacity else "measured on a file: every frame processed"
    parts = [f"Capacity: {capacity:.1f} frames/s ({how}); latency budget 300 ms; windows of {args.window:g} s."]
    parts += [_join_at(load, capacity, args.window, weight, args.camera_running)
              for load in args.loads for weight in args.new_weight]
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
    p.add_argument("--capacity", type=float, default=0.0,
                   help="frames/s the loads are multiples of (join; default: measured on a file first, which "
                        "a busy machine reads low: pin it to compare runs)")
    p.add_argument("--camera-running", action="store_true",
                   help="the fourth camera streams from the start, as a real one would (join): its RTSP "
                        "server's encoder is then in the 'before' window too, not charged to the join")
    p.add_argument("--new-weight", type=float, nargs="+", default=[1.0],
                   help="sources[].weight of the camera that joins, one run each (join; the others keep 1)")
    args = p.parse_args()
    modes = {"http": bench_http, "leak": bench_leak, "join": bench_join, "ray-join": bench_ray_join}
    print(modes[args.mode](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
