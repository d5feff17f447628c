"""Budgets from the camera's clock (``sources[].clock``): RTSP frames stamped with the sender's
time from RTCP sender reports, the network + decode delay as its own stage, counted by the budget.

The RTSP tests use the project's real server (GStreamer) with ``--delay-ms``: every encoded frame
is held that long before it is sent, while its RTP timestamp and the sender reports keep the
capture time, as a camera's do behind a slow network."""

from __future__ import annotations

import json
import threading

import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.metrics import NETWORK
from pipeline.runtime import Pipeline
from pipeline.sources import create_source
from pipeline.sources.sender_clock import carries_sender_time, to_monotonic
from tests.conftest import VTEST
from tests.rtsp import RtspServer, needs_rtsp


@pytest.mark.parametrize("uri, carries", [
    ("rtsp://cam/live", True), ("RTSPS://u:p@cam/live", True), ("rtmp://cam/live", False),
    ("http://cam/mjpeg", False), ("webcam:0", False), ("clip.mp4", False),
])
def test_which_streams_carry_sender_time(uri, carries):
    assert carries_sender_time(uri) is carries


@pytest.mark.parametrize("sender_wall_ns, expected_mono_ns", [
    (4_600_000, 600_000),  # the camera captured it 400 us of wall time ago
    (5_000_000, 1_000_000),  # just now
    (5_200_000, 1_000_000),  # a camera clock ahead of ours: clamped to now, never in the future
])
def test_sender_wall_time_maps_onto_the_monotonic_clock(sender_wall_ns, expected_mono_ns):
    assert to_monotonic(sender_wall_ns, now_mono_ns=1_000_000, now_wall_ns=5_000_000) == expected_mono_ns


def test_sender_clock_on_a_file_is_refused():
    cfg = build_config({"sources": [{"uri": str(VTEST), "clock": "sender"}]})
    with pytest.raises(ConfigError, match="clock: sender"):
        create_source(cfg.sources[0], threading.Event(), lambda e: None)
    with pytest.raises(ConfigError, match="clock"):
        build_config({"sources": [{"uri": str(VTEST), "clock": "camera"}]})


def _run(url: str, clock: str, tmp_path, budget_ms: float | None, duration_s: float = 9):
    cfg = build_config({
        "sources": [{"uri": url, "id": "cam", "clock": clock}],
        "output": {"dir": str(tmp_path), "video": False},
        "pipeline": {"latency_budget_ms": budget_ms, "duration_s": duration_s, "progress": False},
    })
    pipe = Pipeline(cfg)
    summary = pipe.run()
    src = summary.sources[0]
    assert src.error is None and src.frames_in >= 40  # a 10 fps camera for 9 s
    stamped = len(pipe.metrics.stage_values(NETWORK, "cam"))  # frames that carried the sender's time
    return src, stamped


@needs_rtsp
@pytest.mark.rtsp
@pytest.mark.parametrize("clock", ["sender", "auto", "reader"])
def test_frames_late_in_the_network_are_dropped_with_the_camera_clock(tmp_path, clock, no_thread_leak):
    with RtspServer(VTEST, delay_ms=400) as srv:
        src, stamped = _run(srv.url, clock, tmp_path, budget_ms=300)
    late = sum(n for reason, n in src.drops.items() if reason.startswith("late@"))
    records = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    assert len(records) == src.frames_out and src.frames_in == src.frames_out + sum(src.drops.values())
    if clock == "reader":  # the delay is invisible: frames look fresh and are delivered
        assert stamped == 0 and NETWORK not in src.stages_ms
        assert late == 0 and src.frames_out >= 40
        return
    # Every frame stamped with the camera's time reached our reader ~500 ms after capture (400 ms
    # held + the encoder), already past the 300 ms budget: the reader drops each of them there
    # (late@network), so none takes a place in a queue and none gets out. Only the frames before the
    # first RTCP sender report (the first second or two) carry the reader's time, and go on.
    assert stamped >= 30
    assert src.stages_ms[NETWORK][0] >= 400
    assert not any(NETWORK in r["stages_ms"] for r in records)  # no camera-stamped frame got out
    assert src.drops.get("late@network") == stamped
    assert src.frames_out <= src.frames_in - stamped


@needs_rtsp
@pytest.mark.rtsp
def test_camera_clock_without_delay_delivers_and_reports_the_network_stage(tmp_path, no_thread_leak):
    with RtspServer(VTEST) as srv:
        src, stamped = _run(srv.url, "auto", tmp_path, budget_ms=500)
    # (the connect's backlog arrives as a burst: a few of its frames are lost to the queues or late)
    assert stamped >= 30 and src.frames_out >= 0.6 * src.frames_in
    p50 = src.stages_ms[NETWORK][0]
    assert 0 < p50 < 300  # the encoder's frame and the loopback: no added delay
    records = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    with_network = [r for r in records if NETWORK in r["stages_ms"]]
    assert len(with_network) >= 0.6 * stamped
    # e2e counts from the camera's capture: it includes the network stage
    assert all(r["latency_ms"] >= r["stages_ms"][NETWORK] for r in with_network)
