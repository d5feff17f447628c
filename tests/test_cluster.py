"""The Ray cluster engine (cluster.engine: ray), on a real Ray started by this module: the same
detections as a local run, every frame of every file exactly once after a worker is killed, a
live RTSP stream back after its worker is lost, and clear errors for a bad address or too few
resources. Short clips (max_frames) keep the module to a couple of minutes on two cores."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import prometheus_client
import pytest

from pipeline.cluster.placement import assign
from pipeline.cluster.resume import StreamState
from pipeline.config import SourceConfig, build_config
from pipeline.errors import ClusterError, ConfigError
from pipeline.sources import FileSource
from tests.conftest import MEGAMIND, REPO, TREE, VTEST, run_cli
from tests.rtsp import RtspServer, free_port, needs_rtsp

ray = pytest.importorskip("ray")
FOUR = [(str(VTEST), "vtest"), (str(MEGAMIND), "megamind"), (str(TREE), "tree"), (str(VTEST), "vtest_b")]


def _cfg(tmp_path, sources, engine="ray", workers=2, video=False, **pipeline):
    return build_config({
        "sources": [{"uri": u, "id": i, **extra} for u, i, *rest in sources for extra in [rest[0] if rest else {}]],
        "output": {"dir": str(tmp_path), "video": video},
        "cluster": {"engine": engine, "workers": workers, "cpus_per_worker": 1, "connect_timeout_s": 60},
        "metrics": {"log_interval_s": 0},
        "pipeline": {"progress": False, **pipeline},
    })


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 4 logical CPUs, so a replacement worker finds room."""
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
             logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _run_in_thread(run):
    out: dict = {}

    def target():
        try:
            out["summary"] = run.run()
        except BaseException as exc:  # raised in the test below
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---- pieces without Ray ----------------------------------------------------------------------
def test_assign_balances_cost_heaviest_first():
    groups = assign({"a": 10, "b": 6, "c": 5, "d": 1}, 2)
    assert groups == [["a", "d"], ["b", "c"]]
    assert assign({"a": 1}, 3) == [["a"], [], []]


def test_file_resumes_at_first_frame_not_received():
    st = StreamState("v", SourceConfig(uri="v.avi", id="v"), 1.0)
    assert [st.accept(s) for s in (0, 1, 2)] == [0, 1, 2]
    st.resume(time.monotonic(), 0)
    part = st.part_config()
    assert (part.id, part.start_frame) == ("v.part1", 3)
    assert st.accept(2) is None and st.duplicates == 1  # already received: skipped
    assert st.accept(3) == 3


def test_live_resumes_after_the_gap():
    st = StreamState("cam", SourceConfig(uri="rtsp://127.0.0.1:1/x", id="cam"), 1.0)
    for s in range(10):
        st.accept(s)
    st.note_input(0.0, 2)
    st.note_input(1.0, 12)  # the camera sends 10 frames/s
    st.last_stats = {"frames_in": 12, "drops": {}}
    in_flight = st.lost_in_flight()
    assert in_flight == 2
    st.resume(lost_at=1.0, in_flight=in_flight)
    assert st.close_gap(now=2.0, read=3) == 5  # 1 s at 10 fps, less the 2 in flight and the 3 read since
    assert st.accept(0) == 17  # seqs go on after the gap, never reused


def test_start_frame_reads_the_same_frames_as_from_zero():
    full = FileSource(str(VTEST), "v")
    full.open()
    frames = [full.read() for _ in range(8)]
    full.close()
    late = FileSource(str(VTEST), "v", start_frame=5)
    late.open()
    grab = late.read()
    late.close()
    assert grab.pts == pytest.approx(frames[5].pts)
    assert np.array_equal(grab.image, frames[5].image)


def test_cluster_config_keys(tmp_path):
    cfg = build_config({"cluster": {"engine": "ray", "workers": 2, "gpus_per_worker": 1}})
    assert (cfg.cluster.engine, cfg.cluster.workers, cfg.cluster.gpus_per_worker) == ("ray", 2, 1.0)
    assert build_config({}).cluster.engine == "local"
    with pytest.raises(ConfigError, match="cluster.workers"):
        build_config({"cluster": {"workers": 0}})
    with pytest.raises(ConfigError, match="cluster.engine"):
        build_config({"cluster": {"engine": "spark"}})


def test_missing_ray_says_what_to_install(monkeypatch):
    from pipeline.cluster import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'inferpath\[cluster\]'"):
        import_ray()


def test_one_machine_never_imports_ray():
    code = ("import sys; from pipeline.cli import build_parser; build_parser(); import pipeline.runtime; "
            "from pipeline.config import load_config; load_config(None, ['cluster.workers=2']); "
            "print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_bad_address_is_one_clear_line(tmp_path):
    port = free_port()
    proc = run_cli("run", str(VTEST), "-o", str(tmp_path), "--set", "cluster.engine=ray",
                   "--set", f"cluster.address=ray://127.0.0.1:{port}", timeout=120)
    assert proc.returncode == ClusterError.exit_code
    err = [line for line in proc.stderr.splitlines() if line.startswith("inferpath: error")]
    assert err == [f"inferpath: error: cluster.address ray://127.0.0.1:{port}: cannot reach 127.0.0.1:{port} "
                   "(Connection refused); start the head with 'ray start --head' there, or fix the address"]
    assert "Traceback" not in proc.stderr


RAY_NATIVE_LOG = re.compile(r"\] \w+\.(cc|h):\d+:")  # "[2026-... W 29333 29333] gcs_client.cc:210: ..."


def test_an_address_that_is_not_ray_is_one_line_at_once(tmp_path):
    """A port on 127.0.0.1 that takes the connection and never answers (not a Ray GCS). Before:
    Ray's retries for minutes, and its gcs_client.cc/rpc_client.h lines on the terminal."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        proc = run_cli("run", str(VTEST), "-o", str(tmp_path), "--set", "cluster.engine=ray",
                       "--set", f"cluster.address=127.0.0.1:{port}", timeout=120)
        took = time.monotonic() - t0
    assert proc.returncode == ClusterError.exit_code, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"inferpath: error: cluster.address 127.0.0.1:{port}: 127.0.0.1:{port} answers, but not as Ray (no gRPC "
        "answer); give the head's GCS port (6379 by default) or ray://HEAD:10001"]
    assert took < 30, took


def test_cli_run_on_two_workers(tmp_path):
    """The command a user types: starts a local Ray, runs two files on two workers, writes the
    JSON lines, the summary table and summary.json with a section per worker."""
    proc = run_cli("run", str(VTEST), "-s", str(TREE), "-o", str(tmp_path), "--no-video",
                   "--set", "sources.0.max_frames=6", "--set", "sources.1.max_frames=6",
                   "--set", "cluster.engine=ray", "--set", "cluster.workers=2", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "summary.json").read_text())
    assert [w["worker"] for w in data["workers"]] == ["w0", "w1"]
    assert sorted(s for w in data["workers"] for s in w["streams"]) == ["tree", "vtest"]
    assert [s["frames_out"] for s in data["sources"]] == [6, 6]
    assert "worker w0 (node" in proc.stdout
    assert "placement: vtest -> w" in proc.stderr and "placement: tree -> w" in proc.stderr
    for sid in ("vtest", "tree"):
        assert [r["seq"] for r in _records(tmp_path / f"{sid}.jsonl")] == list(range(6))
    assert not RAY_NATIVE_LOG.search(proc.stderr + proc.stdout), proc.stderr[-2000:]  # Ray's own lines: only with -v


def test_lost_node_loses_no_frame_of_a_file(tmp_path):
    """Three one-CPU nodes in this machine (ray.cluster_utils.Cluster): the node under worker w0
    is removed mid-run; its stream resumes on another node at the first frame not received."""
    from ray.cluster_utils import Cluster

    from pipeline.cluster import ClusterRun

    assert not ray.is_initialized()  # this test runs before the module's own Ray (file order)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    try:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        n = 30
        run = ClusterRun(_cfg(tmp_path, [(str(VTEST), "a", {"max_frames": n}), (str(TREE), "b", {"max_frames": n})]))
        t, out = _run_in_thread(run)
        _wait_for(lambda: run.slots and run.slots[0].info and sum(run.slots[0].frames.values()) >= 4, 120,
                  "worker w0 to deliver frames")
        node_id = run.slots[0].info["node_id"]
        cluster.remove_node(next(node for node in nodes if node.node_id == node_id))
        t.join(240)
        assert not t.is_alive() and "error" not in out, out.get("error")
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary = out["summary"]
    assert summary.workers[0]["restarts"] == 1 and summary.workers[1]["restarts"] == 0
    for sid in ("a", "b"):
        assert [r["seq"] for r in _records(tmp_path / f"{sid}.jsonl")] == list(range(n)), sid


# ---- on a real Ray ---------------------------------------------------------------------------
def test_too_few_resources_is_clear(ray_cluster, tmp_path):
    from pipeline.cluster import ClusterRun

    cfg = _cfg(tmp_path, FOUR[:2])
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, cpus_per_worker=3))
    with pytest.raises(ClusterError, match=r"2 worker\(s\) x \(3 CPU, 0 GPU\) need 6 CPU and 0 GPU, but it has 4 CPU"):
        ClusterRun(cfg).run()


def test_four_files_on_two_workers_match_the_local_run(ray_cluster, tmp_path):
    from pipeline.cluster import ClusterRun
    from pipeline.runtime import Pipeline

    sources = [(u, i, {"max_frames": 10}) for u, i in FOUR]
    Pipeline(_cfg(tmp_path / "local", sources, engine="local")).run()
    cfg = _cfg(tmp_path / "ray", sources)
    cfg = dataclasses.replace(cfg, metrics=dataclasses.replace(
        cfg.metrics, prometheus=dataclasses.replace(cfg.metrics.prometheus, enabled=True, port=free_port())))
    run = ClusterRun(cfg)
    summary = run.run()
    scrape = prometheus_client.generate_latest(run._exporter.registry).decode()
    for w in summary.workers:  # every worker's frames, with a worker label, and the cluster's total per source
        for sid in w["streams"]:
            assert f'inferpath_worker_frames_total{{node="{w["node"]}",source="{sid}",worker="{w["worker"]}"}} 10.0' \
                in scrape
            assert f'inferpath_frames_total{{direction="out",source="{sid}"}} 10.0' in scrape
    assert len(summary.workers) == 2 and all(w["frames"] for w in summary.workers)
    assert summary.stages_ms["delivery"][0] >= 0  # worker sink to driver, measured
    assert sorted(s for w in summary.workers for s in w["streams"]) == sorted(i for _, i in FOUR)
    for _, sid in FOUR:
        local, remote = _records(tmp_path / "local" / f"{sid}.jsonl"), _records(tmp_path / "ray" / f"{sid}.jsonl")
        assert [r["seq"] for r in remote] == [r["seq"] for r in local] == list(range(10))
        for a, b in zip(local, remote):
            assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]], (sid, a["seq"])
            for da, db in zip(a["detections"], b["detections"]):
                assert np.allclose(da["box"], db["box"], atol=0.5) and abs(da["score"] - db["score"]) < 2e-3
    by_id = {s.id: s for s in summary.sources}
    assert all(by_id[sid].frames_in == by_id[sid].frames_out == 10 and not by_id[sid].error for _, sid in FOUR)


def test_killed_worker_loses_no_frame_of_a_file(ray_cluster, tmp_path):
    from pipeline.cluster import ClusterRun

    n = 40
    sources = [(u, i, {"max_frames": n}) for u, i in FOUR]
    run = ClusterRun(_cfg(tmp_path, sources))
    t, out = _run_in_thread(run)
    _wait_for(lambda: run.slots and run.slots[0].info and run.slots[0].start_ref is None
              and sum(run.slots[0].frames.values()) >= 6, 120, "worker w0 to deliver frames")
    victim = run.slots[0].info["pid"]
    os.kill(victim, signal.SIGKILL)
    t.join(240)
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    summary = out["summary"]
    w0 = summary.workers[0]
    assert w0["restarts"] == 1 and w0["pids"][0] == victim and w0["pid"] != victim
    for _, sid in FOUR:
        seqs = [r["seq"] for r in _records(tmp_path / f"{sid}.jsonl")]
        assert seqs == list(range(n)), sid  # every frame exactly once, in order
    for s in summary.sources:
        assert s.frames_in == s.frames_out == n and not s.error, s
    resumed = [parts[1]["start_frame"] for parts in w0["parts"].values()]
    assert resumed and all(0 < start < n for start in resumed), w0["parts"]  # killed mid-run, resumed there
    print("resumed at", resumed, "back", w0)


def test_dead_camera_never_takes_its_worker_down(ray_cluster, tmp_path):
    from pipeline.cluster import ClusterRun

    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"
    sources = [(str(VTEST), "street", {"max_frames": 8}),
               (dead, "dead", {"open_timeout_ms": 1000, "reconnect": {"max_retries": 0}})]
    summary = ClusterRun(_cfg(tmp_path, sources, workers=1)).run()
    by_id = {s.id: s for s in summary.sources}
    assert by_id["street"].frames_out == 8 and not by_id["street"].error
    assert by_id["dead"].error and by_id["dead"].frames_out == 0
    assert summary.workers[0]["restarts"] == 0 and summary.workers[0]["frames"] == 8


@pytest.mark.rtsp
@needs_rtsp
def test_rtsp_stream_survives_the_loss_of_its_worker(ray_cluster, tmp_path):
    from pipeline.cluster import ClusterRun

    with RtspServer(VTEST, fps=10) as srv:
        run = ClusterRun(_cfg(tmp_path, [(srv.url, "cam")], workers=1, duration_s=40))
        t, out = _run_in_thread(run)
        st = run.streams["cam"]
        _wait_for(lambda: st.received >= 5, 90, "the first frames")
        os.kill(run.slots[0].info["pid"], signal.SIGKILL)
        killed_at, before = time.monotonic(), st.received
        _wait_for(lambda: st.received > before + 2, 30, "frames after the loss")
        back_s = time.monotonic() - killed_at
        run.stop("test done")
        t.join(60)
    assert not t.is_alive() and "error" not in out, out.get("error")
    assert back_s < 10, f"live stream back after {back_s:.1f} s"
    summary = out["summary"]
    cam = summary.sources[0]
    assert summary.workers[0]["restarts"] == 1
    assert cam.drops.get("worker_lost", 0) > 0
    assert cam.frames_in == cam.frames_out + sum(cam.drops.values())
    seqs = [r["seq"] for r in _records(tmp_path / "cam.jsonl")]
    assert seqs == sorted(set(seqs))  # never reused, in order
    print("back after", back_s, cam.drops, cam.frames_in, cam.frames_out)


def test_python_api_on_ray_writes_what_the_local_run_writes(ray_cluster, tmp_path):
    """``Pipeline(cfg)`` with ``cluster.engine: ray`` runs the Ray engine (2 workers). Over two files
    with a counting line it writes, per file, what the local run writes: an annotated video that
    plays, the same line counts, and JSON lines with the same detections, track ids and events
    (before: the driver's own JSONL sink wrote no event at all)."""
    import cv2

    from pipeline.cluster import ClusterRun
    from pipeline.runtime import Pipeline

    n = 120
    line = {"name": "walkway", "points": [[400, 150], [400, 330]], "classes": ["person"]}

    def cfg(engine: str):
        return build_config({
            "sources": [{"uri": str(VTEST), "id": "vtest", "max_frames": n},
                        {"uri": str(MEGAMIND), "id": "megamind", "max_frames": n}],
            "model": {"classes": [0]},
            # one thread per call, as a Ray worker of one CPU runs it: the same numbers on both engines
            "backend": {"onnxruntime": {"intra_op_threads": 1}},
            "output": {"dir": str(tmp_path / engine), "video": True},
            "tracking": {"enabled": True, "lines": [line]},
            "cluster": {"engine": engine, "workers": 2, "cpus_per_worker": 1, "connect_timeout_s": 60},
            "metrics": {"log_interval_s": 0}, "pipeline": {"progress": False},
        })

    local = Pipeline(cfg("local")).run()
    pipe = Pipeline(cfg("ray"))
    assert isinstance(pipe.engine, ClusterRun)
    remote = pipe.run()
    assert len(remote.workers) == 2 and all(w["frames"] for w in remote.workers)
    events = 0
    for sid in ("vtest", "megamind"):
        a, b = local.sources, remote.sources
        la, rb = next(s for s in a if s.id == sid), next(s for s in b if s.id == sid)
        assert la.frames_out == rb.frames_out == n and not rb.error
        assert rb.tracking["lines"] == la.tracking["lines"], sid
        video = tmp_path / "ray" / f"{sid}.mp4"
        assert str(video) in rb.outputs and str(tmp_path / "ray" / f"{sid}.jsonl") in rb.outputs
        cap = cv2.VideoCapture(str(video))
        decoded = 0
        while cap.read()[0]:
            decoded += 1
        cap.release()
        assert decoded == n, (sid, decoded)
        lrec, rrec = _records(tmp_path / "local" / f"{sid}.jsonl"), _records(tmp_path / "ray" / f"{sid}.jsonl")
        assert [r["seq"] for r in rrec] == [r["seq"] for r in lrec] == list(range(n))
        for x, y in zip(lrec, rrec):
            assert [(d["class_id"], d["track_id"]) for d in x["detections"]] == \
                [(d["class_id"], d["track_id"]) for d in y["detections"]], (sid, x["seq"])
            assert x.get("events", []) == y.get("events", []), (sid, x["seq"])
        events += sum(len(r.get("events", [])) for r in rrec)
    assert events >= 2  # people do cross the walkway in vtest: the comparison above compared some


def test_the_fp32_canary_runs_on_the_workers(ray_cluster, tmp_path):
    """``model.canary`` with an INT8 model on Ray: each worker plans its share locally, so its
    canary samples its streams there; the agreement reaches the driver's summary and Prometheus."""
    from pipeline import precision as prec
    from pipeline.model import bundled_model_path
    from pipeline.runtime import Pipeline

    int8 = tmp_path / "nanodet.int8.onnx"
    prec.quantize_int8(bundled_model_path(), prec.read_frames(VTEST, 8)[0], int8)
    port = free_port()
    cfg = build_config({
        "sources": [{"uri": str(VTEST), "id": "vtest", "max_frames": 120}],
        "model": {"path": str(int8), "canary": {"every_s": 0.05, "max_cpu_share": 1.0}},
        "output": {"dir": str(tmp_path / "out"), "video": False},
        "cluster": {"engine": "ray", "workers": 1, "cpus_per_worker": 1, "connect_timeout_s": 60},
        "metrics": {"log_interval_s": 0, "prometheus": {"enabled": True, "port": port}},
        "pipeline": {"progress": False},
    })
    pipe = Pipeline(cfg)
    summary = pipe.run()
    canary = summary.sources[0].canary
    assert canary is not None and canary["frames"] >= 2 and canary["boxes"] > 0, canary
    assert 0.9 <= canary["agreement"] <= 1.0  # the INT8 model agrees with FP32, as its gate would say
    reg = pipe.plan.observers.prometheus.registry
    assert reg.get_sample_value("inferpath_canary_frames_total", {"source": "vtest"}) >= 1
    assert 0.9 <= reg.get_sample_value("inferpath_canary_agreement", {"source": "vtest"}) <= 1.0



def test_the_live_view_of_a_run_on_ray_shows_the_workers_frames(ray_cluster, tmp_path):
    """``inferpath run --serve`` on Ray: the driver's page lists every stream, and a watched
    stream's MJPEG carries its worker's annotated frames (encoded there, only while watched: the
    stream nobody watches has none encoded)."""
    from pipeline.runtime import Pipeline
    from pipeline.web import LiveView
    from tests.test_web import _get, watch

    live = {"realtime": True, "loop": True}
    cfg = _cfg(tmp_path, [(str(VTEST), "vtest", live), (str(MEGAMIND), "megamind", live)], latency_budget_ms=1000)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(
        cfg.output, web=dataclasses.replace(cfg.output.web, enabled=True, port=0, max_fps=5)))
    pipe = Pipeline(cfg)
    view = next(ob for ob in pipe.observers if isinstance(ob, LiveView))
    t, out = _run_in_thread(pipe)
    try:
        _wait_for(lambda: pipe.engine.running.is_set() and all(
            pipe.metrics.snapshot(s).frames_out > 5 for s in ("vtest", "megamind")), 120, "both streams' frames")
        code, body = _get(f"http://127.0.0.1:{view.port}/stats.json")
        assert code == 200 and [s["id"] for s in json.loads(body)["streams"]] == ["vtest", "megamind"]
        picture = watch(view.port, "/stream/0.mjpg", 4)
        assert picture.shape == (576, 768, 3)  # vtest.avi's frames
        assert view.views[0].encoded >= 4 and view.views[1].encoded == 0  # nobody watched megamind
    finally:
        pipe.stop("test over")
        t.join(60)
    assert not t.is_alive() and "error" not in out, out.get("error")
