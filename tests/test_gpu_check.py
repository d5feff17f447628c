"""scripts/gpu_check.sh and gpu_check.py without a GPU: the script stops at once, with the reason,
where nothing on a GPU can be tested; the checks it runs on a GPU judge what they are given (runs,
live summaries) and fail where they should. The GPU half runs on a GPU machine only."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")


def _gpu_check(tmp_path, path_dirs=()):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # PATH without nvidia-smi (this machine has none), plus any fakes
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), os.path.dirname(sys.executable), "/usr/bin", "/bin"])
    env.update(INSTALL="0", PYTHON=sys.executable, OUT=str(tmp_path), VENV=str(tmp_path / "no-venv"))
    return subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_gpu_check_without_a_gpu_stops_at_once_with_the_reason(tmp_path):
    proc = _gpu_check(tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FATAL: no NVIDIA GPU (nvidia-smi not found)" in proc.stderr
    assert "FAILED: no NVIDIA GPU" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["passed"] is False
    assert not (tmp_path / "pytest-gpu.log").exists() and not (tmp_path / "doctor.log").exists()  # nothing ran


@no_tensorrt
def test_gpu_check_without_tensorrt_stops_with_the_real_import_error(tmp_path):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA L4, 550.54.15, 8.9'\n")
    (fake / "nvidia-smi").chmod(0o755)
    proc = _gpu_check(tmp_path, [fake])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FATAL: TensorRT cannot be imported" in proc.stderr
    assert "No module named 'tensorrt'" in proc.stderr  # the real import error
    assert "--extra-index-url https://pypi.nvidia.com" in proc.stderr  # where its libraries come from
    summary = (tmp_path / "summary.md").read_text()
    assert "FAILED" in summary and "tensorrt-import" in summary
    assert not (tmp_path / "pytest-gpu.log").exists()  # it stopped before the suite


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_gpu_check_is_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(REPO / "scripts/gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _gc():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return gpu_check


def _write_run(path, frames, boxes, score=0.9, skip=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for seq in range(frames):
            if seq in skip:
                continue
            dets = [{"class_id": 0, "class_name": "person", "score": score, "box": b} for b in boxes]
            f.write(json.dumps({"source": "v", "seq": seq, "detections": dets}) + "\n")


@pytest.mark.parametrize(
    "cand,ok",
    [
        ({}, True),  # the same detections
        ({"boxes": [[10, 10, 50, 90], [200, 200, 240, 290], [400, 40, 440, 130]]}, False),  # one box lost
        ({"skip": (3,)}, False),  # a frame missing
    ],
)
def test_compare_runs_needs_every_frame_in_order_and_the_detections_within_the_gate(tmp_path, cand, ok):
    gc = _gc()
    boxes = [[10, 10, 50, 90], [200, 200, 240, 290], [400, 40, 440, 130], [600, 300, 650, 400]]
    ref, got = tmp_path / "work" / "run-ref" / "v.jsonl", tmp_path / "work" / "run-cand" / "v.jsonl"
    _write_run(ref, 40, boxes)
    _write_run(got, 40, cand.get("boxes", boxes), skip=cand.get("skip", ()))
    rc = gc.compare_runs(ref, got, 40)
    assert (rc == 0) is ok
    result = json.loads((tmp_path / "compare-run-cand.json").read_text())
    assert bool(result["problems"]) is not ok


def _live_summary(path, drops, p99, budget=250, error=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    src = {"id": "cam0", "frames_in": 900, "frames_out": 900 - drops, "drops": {"late@queue": drops},
           "e2e_ms": {"p50": 40.0, "p95": 80.0, "p99": p99}, "error": error}
    path.write_text(json.dumps({"fps": 120.0, "backend": "tensorrt", "sources": [src]}))


@pytest.mark.parametrize(
    "drops,p99,error,needle",
    [
        (300, 120.0, None, None),
        (0, 120.0, None, "not overloaded"),
        (300, 400.0, None, "over the 250 ms budget"),
        (300, 120.0, "connection refused", "error connection refused"),
    ],
)
def test_live_check_needs_overload_the_budget_held_and_no_error(tmp_path, drops, p99, error, needle):
    gc = _gc()
    _live_summary(tmp_path / "work" / "run-live" / "summary.json", drops, p99, error=error)
    rc = gc.live(tmp_path / "work" / "run-live" / "summary.json", 250)
    problems = json.loads((tmp_path / "live.json").read_text())["problems"]
    assert (rc == 0) is (needle is None)
    assert (needle is None and problems == []) or any(needle in p for p in problems)


def test_summary_is_one_markdown_and_one_json(tmp_path):
    gc = _gc()
    (tmp_path / "steps.tsv").write_text("doctor\tok\t1\ngates\tFAILED (rc 1)\t40\n")
    (tmp_path / "environment.json").write_text(json.dumps({"gpu": "NVIDIA L4", "driver": "550", "tensorrt": "11.4"}))
    (tmp_path / "gates.json").write_text(json.dumps([
        {"engine": "fp16 onnx", "passed": True, "map50": 0.99, "found": 1.0, "kept": 0.99, "failures": []},
        {"engine": "int8 entropy", "passed": False, "error": "ModelError: cannot parse"}]))
    _live_summary(tmp_path / "work" / "run-live" / "summary.json", 300, 120.0)
    gc.live(tmp_path / "work" / "run-live" / "summary.json", 250)
    assert gc.summary(tmp_path) == 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["passed"] is False and data["failed_steps"] == ["gates"] and len(data["gates"]) == 2
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# GPU check: FAILED") and "NVIDIA L4; TensorRT 11.4" in md
    assert "| int8 entropy | FAIL |" in md and "ModelError: cannot parse" in md and "Live RTSP at overload: held" in md
