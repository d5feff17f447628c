"""Outputs and the summary, hardened: every frame counted on any stop, a table that never cuts a
number, no outputs that were never written, live video at the stream's real rate, budget warnings."""

from __future__ import annotations

import json
import logging
import time

import cv2
import numpy as np
import pytest

from pipeline.config import build_config
from pipeline.runtime import Pipeline, RunSummary, SourceSummary
from tests.conftest import MEGAMIND, VTEST, slow_backend
from tests.rtsp import RtspServer, needs_rtsp
from tests.test_live import _run_in_thread


def _wait_frames_out(pipe: Pipeline, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(st.frames_out for st in pipe.metrics.sources.values()) < n:
        assert time.monotonic() < deadline, "no frames came out"
        time.sleep(0.05)


def _slow_file_pipeline(tmp_path, **pipeline_keys) -> Pipeline:
    cfg = build_config({"sources": [str(VTEST)],
                        "output": {"dir": str(tmp_path)}, "pipeline": {"progress": False, **pipeline_keys}})
    return Pipeline(cfg, backend=slow_backend(cfg, 150))


def test_second_stop_counts_in_flight_frames_as_shutdown(tmp_path, no_thread_leak):
    """Before: in 182 = out 174 + drops 0 (eight frames gone without a trace)."""
    pipe = _slow_file_pipeline(tmp_path)
    runner, result = _run_in_thread(pipe)
    _wait_frames_out(pipe, 3)
    pipe.stop("SIGINT")
    pipe.stop("SIGINT")
    runner.join(60)
    assert not runner.is_alive()
    src = result["summary"].sources[0]
    assert src.frames_in == src.frames_out + sum(src.drops.values())
    assert src.drops.get("shutdown", 0) > 0
    lines = (tmp_path / "vtest.jsonl").read_text().splitlines()
    assert len(lines) == src.frames_out


def test_graceful_stop_has_an_upper_bound(tmp_path, caplog, no_thread_leak):
    """Before: a very slow model took minutes to drain after one Ctrl-C."""
    pipe = _slow_file_pipeline(tmp_path, drain_timeout_s=0.3, queue_size=16)
    runner, result = _run_in_thread(pipe)
    _wait_frames_out(pipe, 2)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        pipe.stop("SIGTERM")
        runner.join(60)
    assert not runner.is_alive()
    src = result["summary"].sources[0]
    assert "not finished 0.3 s after the stop" in caplog.text
    assert src.frames_in == src.frames_out + sum(src.drops.values()) and src.drops.get("shutdown", 0) > 0


def _summary(**kw) -> RunSummary:
    src = dict(id="a-very-long-camera-name-on-the-loading-dock", uri="rtsp://cam/x", live=True, frames_in=123456,
               frames_out=123400, drops={"late@inference": 56}, events={}, detections={}, fps=12.5,
               stages_ms={"e2e": [1234.5, 99999.0, 355312.1]}, outputs=["/o/cam.jsonl"])
    src.update(kw)
    return RunSummary([SourceSummary(**src)], 10.0, "m.onnx", "onnxruntime", {}, [])


def test_summary_table_never_cuts_numbers_or_ids():
    """Before: p99 355312.1 printed as 55312.1; ids cut at 18 characters."""
    s = _summary()
    s.stages_ms = {"inference": [12.0, 15.0, 123456.78], "e2e": [1.0, 2.0, 355312.1]}
    text = s.table()
    row = next(line for line in text.splitlines() if line.startswith("a-very-long"))
    assert row.split() == ["a-very-long-camera-name-on-the-loading-dock", "123456", "123400", "56", "12.5",
                           "1234.5", "355312.1"]
    assert "123456.78" in text and "355312.10" in text
    header = next(line for line in text.splitlines() if line.startswith("source"))
    assert len(header) == len(row)  # columns line up


def test_summary_table_without_frames_has_no_stage_table():
    text = _summary(frames_out=0, frames_in=0, drops={}, stages_ms={"e2e": [float("nan")] * 3}, outputs=[]).table()
    assert "stage" not in text and "p50 ms" not in text and "outputs" not in text


def test_failed_run_leaves_no_unwritten_outputs(tmp_path):
    """Before: an empty JSONL and a 258-byte unplayable mp4 after a failed run."""
    from pipeline.model import bundled_model_path
    from pipeline.runtime import make_backend
    from tests.test_model_outputs import _FailsAfter

    cfg = build_config({"sources": [str(VTEST)], "output": {"dir": str(tmp_path)}, "backend": {"max_batch": 1},
                        "pipeline": {"progress": False}})
    summary = Pipeline(cfg, backend=_FailsAfter(make_backend(cfg, bundled_model_path()), calls=1)).run()  # warm-up
    src = summary.sources[0]
    assert src.error and src.frames_out == 0 and src.outputs == []
    assert not list(tmp_path.glob("vtest.*"))
    assert "outputs" not in summary.table()


def test_odd_frame_size_is_explained(tmp_path, caplog):
    clip = tmp_path / "odd.png"  # OpenCV's writers round sizes down to even, so the odd input is an image
    cv2.imwrite(str(clip), np.full((251, 333, 3), 90, np.uint8))
    cfg = build_config({"sources": [str(clip)], "output": {"dir": str(tmp_path / "o")},
                        "pipeline": {"progress": False}})
    with caplog.at_level(logging.INFO, logger="pipeline"):
        Pipeline(cfg).run()
    cap = cv2.VideoCapture(str(tmp_path / "o" / "odd.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (332, 250)
    n = 0
    while cap.grab():
        n += 1
    assert n == 1
    assert "written at 332x250: the h264 encoder needs even sizes" in caplog.text
    assert "last column and row of the 333x251 input is cut" in caplog.text


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_budget_for_a_file_source_is_said_to_be_ignored(tmp_path, caplog):
    cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": 3}],
                        "output": {"dir": str(tmp_path), "video": False},
                        "pipeline": {"latency_budget_ms": 100, "progress": False}})
    with caplog.at_level(logging.INFO, logger="pipeline"):
        summary = Pipeline(cfg).run()
    ignored = [w for w in _warnings(caplog) if "ignored for file sources (vtest)" in w]
    assert len(ignored) == 1 and summary.sources[0].frames_out == 3


def test_impossible_budget_is_warned_once(tmp_path, caplog):
    cfg = build_config({"sources": [{"uri": str(MEGAMIND), "realtime": True, "max_frames": 10}],
                        "output": {"dir": str(tmp_path), "video": False},
                        "pipeline": {"latency_budget_ms": 0.001, "progress": False}})
    with caplog.at_level(logging.INFO, logger="pipeline"):
        summary = Pipeline(cfg).run()
    below = [w for w in _warnings(caplog) if "latency budget 0.001 ms is below the time of one inference call" in w]
    assert len(below) == 1
    assert summary.sources[0].frames_out == 0


def test_live_source_without_budget_is_described_truthfully(tmp_path, caplog):
    cfg = build_config({"sources": [{"uri": str(VTEST), "realtime": True, "max_frames": 3}],
                        "output": {"dir": str(tmp_path), "video": False}, "pipeline": {"progress": False}})
    with caplog.at_level(logging.INFO, logger="pipeline"):
        Pipeline(cfg).run()
    assert "every frame is processed" not in caplog.text
    assert "older ones are dropped as queue_full" in caplog.text


@needs_rtsp
@pytest.mark.rtsp
def test_live_video_is_written_at_the_streams_real_rate(tmp_path, no_thread_leak):
    """Before: always 25 fps, so 480 s of a 10 fps camera became 191 s of video."""
    with RtspServer(VTEST, fps=10) as srv:
        cfg = build_config({"sources": [{"uri": srv.url, "id": "cam"}], "output": {"dir": str(tmp_path)},
                            "pipeline": {"duration_s": 8, "progress": False}})
        summary = Pipeline(cfg).run()
    src = summary.sources[0]
    records = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    span_s = records[-1]["pts"] - records[0]["pts"]
    cap = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    fps = cap.get(cv2.CAP_PROP_FPS)
    n = 0
    while cap.grab():
        n += 1
    assert 8 <= fps <= 12, fps  # the rate the camera delivers, not a 25 fps guess
    assert n / fps == pytest.approx(span_s, abs=1.0)  # the video lasts as long as the stream did
    assert src.frames_out == len(records)
