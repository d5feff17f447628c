"""End to end on the real bundled model and the real sample videos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from pipeline.config import build_config
from pipeline.postprocess import postprocess
from pipeline.preprocess import preprocess
from pipeline.runtime import Pipeline
from tests.conftest import MEGAMIND, REPO, TREE, VTEST, run_cli


def decoded_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def vtest_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vtest_run")
    proc = run_cli("run", "configs/sample.yaml", "--output", str(out), timeout=600)
    return proc, out


def test_batch_run_processes_every_frame_once_in_order(vtest_run):
    proc, out = vtest_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = decoded_frames(VTEST)
    assert expected == 795
    records = [json.loads(line) for line in (out / "vtest.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(expected))
    assert all(r["source"] == "vtest" for r in records)
    pts = [r["pts"] for r in records]
    assert pts == sorted(pts) and abs(pts[-1] - (expected - 1) / 10.0) < 0.05
    summary = json.loads((out / "summary.json").read_text())
    src = summary["sources"][0]
    assert src["frames_in"] == src["frames_out"] == expected and src["drops"] == {}
    assert f"{expected} frames" in proc.stdout  # the printed summary says how many


def test_batch_run_finds_people_and_cars(vtest_run):
    _, out = vtest_run
    records = [json.loads(line) for line in (out / "vtest.jsonl").read_text().splitlines()]
    people = [sum(d["class_name"] == "person" for d in r["detections"]) for r in records]
    assert np.median(people) >= 4  # a busy pedestrian scene
    assert sum(any(d["class_name"] == "car" for d in r["detections"]) for r in records) > 400
    for r in records[::50]:
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 768 and 0 <= y1 <= y2 <= 576 and 0.35 < d["score"] <= 1.0
        assert r["latency_ms"] > 0 and set(r["stages_ms"]) >= {"capture", "preprocess", "inference", "postprocess"}


def test_output_video_matches_input(vtest_run):
    _, out = vtest_run
    cap = cv2.VideoCapture(str(out / "vtest.mp4"))
    assert cap.isOpened()
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)
    assert abs(cap.get(cv2.CAP_PROP_FPS) - 10.0) < 0.01
    cap.release()
    assert decoded_frames(out / "vtest.mp4") == 795


def test_pipeline_equals_direct_onnxruntime(tmp_path, model_path, spec, no_thread_leak):
    """The threaded pipeline's detections on frames equal a direct ORT call + the same postprocess."""
    cfg = build_config({"sources": [str(MEGAMIND)], "output": {"dir": str(tmp_path), "video": False},
                        "backend": {"max_batch": 4}, "pipeline": {"progress": False}})
    summary = Pipeline(cfg).run()
    assert summary.sources[0].frames_out == 270
    records = [json.loads(line) for line in (tmp_path / "Megamind.jsonl").read_text().splitlines()]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cap = cv2.VideoCapture(str(MEGAMIND))
    checked = 0
    for index in range(270):
        ok, image = cap.read()
        assert ok
        if index % 45:
            continue
        tensor, lb = preprocess(image, spec)
        out = session.run(None, {"images": tensor[None]})
        det = postprocess(out, [lb], "yolov8", 0.35, 0.5, 300)[0]
        got = records[index]["detections"]
        assert [d["class_id"] for d in got] == det.class_id.tolist()
        np.testing.assert_allclose([d["box"] for d in got] or np.zeros((0, 4)), det.xyxy, atol=0.02)
        np.testing.assert_allclose([d["score"] for d in got], det.confidence, atol=1e-3)
        checked += 1
    assert checked == 6
    assert max(summary.batch_sizes) > 1  # it really batched


def test_several_files_in_one_run_each_get_outputs(tmp_path, no_thread_leak):
    cfg = build_config({"sources": [str(REPO / "sample_videos" / "[Mt]*.avi")],
                        "output": {"dir": str(tmp_path), "video": False}, "pipeline": {"progress": False}})
    pipe = Pipeline(cfg)
    assert [s.id for s in pipe.sources] == ["Megamind", "tree"]
    summary = pipe.run()
    counts = {s.id: s.frames_out for s in summary.sources}
    assert counts == {"Megamind": 270, "tree": 68}
    assert len((tmp_path / "tree.jsonl").read_text().splitlines()) == 68


def test_stop_mid_run_leaves_no_thread_and_valid_outputs(tmp_path, no_thread_leak):
    cfg = build_config({"sources": [str(VTEST)], "output": {"dir": str(tmp_path)}, "pipeline": {"progress": False}})
    pipe = Pipeline(cfg)
    result = {}
    runner = threading.Thread(target=lambda: result.update(summary=pipe.run()))
    runner.start()
    deadline = time.monotonic() + 60
    while pipe.metrics.sources.get("vtest") is None or pipe.metrics.sources["vtest"].frames_out < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pipe.stop("test")
    runner.join(30)
    assert not runner.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("inferpath-")]
    summary = result["summary"]
    n = summary.sources[0].frames_out
    assert 20 <= n < 795 and summary.stopped_by == "test"
    lines = (tmp_path / "vtest.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(n))
    assert decoded_frames(tmp_path / "vtest.mp4") == n


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_flushes_and_closes_outputs(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--source", str(VTEST), "-o", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = tmp_path / "vtest.jsonl"
    deadline = time.monotonic() + 60
    while not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 10):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr
    text = jsonl.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert decoded_frames(tmp_path / "vtest.mp4") == len(records)
    assert f"stopping ({sig.name})" in stderr
    assert proc.returncode == 128 + sig  # 130 for SIGINT, 143 for SIGTERM


def test_max_frames_samples_a_long_video(tmp_path):
    proc = run_cli("run", "--source", str(VTEST), "-o", str(tmp_path), "--no-video", "--set", "sources.0.max_frames=30")
    assert proc.returncode == 0, proc.stderr  # a deliberate sample is not a truncated file
    records = [json.loads(line) for line in (tmp_path / "vtest.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(30))


def test_two_inference_workers_give_the_same_results_in_order(tmp_path, no_thread_leak):
    """backend.onnxruntime.workers 2 (two calls in flight, as auto picks for files on 2+ cores)
    against 1: every frame of both files, in order, with the same detections."""
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cfg = build_config({"sources": [str(MEGAMIND), str(TREE)],
                            "output": {"dir": str(out), "video": False}, "pipeline": {"progress": False},
                            "backend": {"max_batch": 2, "onnxruntime": {"workers": workers}}})
        pipe = Pipeline(cfg)
        assert pipe.workers == workers
        summary = pipe.run()
        assert {s.id: s.frames_out for s in summary.sources} == {"Megamind": 270, "tree": 68}
        runs[workers] = {sid: [json.loads(line) for line in (out / f"{sid}.jsonl").read_text().splitlines()]
                         for sid in ("Megamind", "tree")}
    for sid, records in runs[2].items():
        assert [r["seq"] for r in records] == list(range(len(records)))
        for one, two in zip(runs[1][sid], records):
            assert [d["class_id"] for d in one["detections"]] == [d["class_id"] for d in two["detections"]]
            np.testing.assert_allclose([d["box"] for d in one["detections"]] or np.zeros((0, 4)),
                                       [d["box"] for d in two["detections"]] or np.zeros((0, 4)), atol=0.05)


def test_auto_workers_batch_and_sessions_follow_the_backend_and_sources():
    """On a CPU: two calls in flight and batch 1. A file shares the cores out in one session; a
    live source keeps a session on every core (one call at a time) and a second with the cores
    shared out (calls side by side). TensorRT: one call, batch 4."""
    from pipeline.runtime.plan import inference_workers

    cores = os.cpu_count() or 1
    files = build_config({"sources": [str(VTEST)], "pipeline": {"progress": False}})
    live = build_config({"sources": [{"uri": str(VTEST), "realtime": True}], "pipeline": {"progress": False}})
    assert inference_workers(files) == inference_workers(live) == min(2, cores)
    assert files.backend.max_batch == 1
    trt = build_config({"backend": {"name": "tensorrt"}})
    assert inference_workers(trt) == 1 and trt.backend.max_batch == 4
    forced = build_config({"sources": [str(VTEST)], "backend": {"max_batch": 3, "onnxruntime": {"workers": 3}}})
    assert inference_workers(forced) == 3 and forced.backend.max_batch == 3

    def threads(backend) -> int:
        return backend._session.get_session_options().intra_op_num_threads

    with Pipeline(files) as pipe:
        assert pipe.side_backend is None
        assert threads(pipe.backend) == (max(1, cores // 2) if cores > 1 else 0)
    with Pipeline(live) as pipe:
        assert threads(pipe.backend) == 0  # every core
        if cores > 1:
            assert threads(pipe.side_backend) == cores // 2
        else:
            assert pipe.side_backend is None
