"""Input drift: frame statistics, reference profiles, and the monitor in a real pipeline run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import DriftConfig, build_config
from pipeline.drift import STAT_NAMES, DriftMonitor, Profile, frame_stats, profile_video, write_profile
from pipeline.errors import ConfigError
from tests.conftest import VTEST, run_cli

DARK = 0.3  # dusk: every pixel at 30 %
CLIP_FRAMES = 60


def write_clip(path: Path, frames: int, gain: float = 1.0) -> Path:
    """The first ``frames`` frames of vtest.avi, scaled by ``gain``, as MJPG AVI."""
    cap = cv2.VideoCapture(str(VTEST))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer = None
    try:
        for _ in range(frames):
            ok, img = cap.read()
            assert ok
            if writer is None:
                h, w = img.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                assert writer.isOpened()
            writer.write(cv2.convertScaleAbs(img, alpha=gain))
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return path


@pytest.fixture(scope="module")
def vtest_profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("drift") / "vtest.profile.json"
    write_profile(VTEST, path, frames=100)
    return path


@pytest.fixture(scope="module")
def dark_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("dark") / "dusk.avi", CLIP_FRAMES, DARK)


# ---- statistics ---------------------------------------------------------------------------------
def test_frame_stats_of_known_images():
    flat = np.full((480, 640, 3), 100, np.uint8)
    np.testing.assert_allclose(frame_stats(flat), [100, 0, 0], atol=1e-6)
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    textured = cv2.GaussianBlur(textured, (0, 0), 2)
    b, c, s = frame_stats(textured)
    dark = frame_stats(cv2.convertScaleAbs(textured, alpha=DARK))
    blurred = frame_stats(cv2.GaussianBlur(textured, (0, 0), 8))
    assert dark[0] == pytest.approx(b * DARK, rel=0.05) and dark[1] == pytest.approx(c * DARK, rel=0.05)
    assert blurred[2] < s / 4  # blur kills sharpness ...
    assert blurred[0] == pytest.approx(b, abs=1.5)  # ... not brightness


def test_frame_stats_is_cheap():
    img = _first_frame()
    frame_stats(img)
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        frame_stats(img)
    per_frame_ms = (time.perf_counter() - t0) / n * 1000
    assert per_frame_ms < 3.0, f"{per_frame_ms:.2f} ms a frame (target well under 1 ms; 3 allows a busy machine)"


def _first_frame() -> np.ndarray:
    cap = cv2.VideoCapture(str(VTEST))
    ok, img = cap.read()
    cap.release()
    assert ok
    return img


# ---- profiles -----------------------------------------------------------------------------------
def test_profile_round_trip(tmp_path):
    out = tmp_path / "p.json"
    written = write_profile(VTEST, out, frames=20)
    data = json.loads(out.read_text())
    assert data["video"] == "vtest.avi" and data["frames"] == 20
    assert set(data["stats"]) == set(STAT_NAMES)
    loaded = Profile.load(out)
    np.testing.assert_allclose(loaded.mean, written.mean, rtol=1e-4)
    np.testing.assert_allclose(loaded.std, written.std, rtol=1e-3, atol=1e-3)
    assert 90 < loaded.mean[0] < 150  # vtest is a daylight scene


@pytest.mark.parametrize("content", [
    None,  # missing
    "not json {",
    json.dumps({"kind": "something else", "stats": {}}),
    json.dumps({"kind": "inferpath.drift-profile", "stats": {"brightness": {"mean": 1, "std": 1}}}),
    json.dumps({"kind": "inferpath.drift-profile", "stats": {n: {"mean": 1, "std": -1} for n in STAT_NAMES}}),
])
def test_bad_reference_is_a_config_error_naming_the_file(tmp_path, content):
    path = tmp_path / "ref.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)):
        DriftMonitor.from_config(DriftConfig(reference=str(path)), _NoPipe())


class _NoPipe:
    def add_frame_hook(self, hook) -> None:  # pragma: no cover - never reached for a bad file
        raise AssertionError("hooked despite a bad reference")


# ---- the monitor ------------------------------------------------------------------------------------
def test_score_is_window_mean_shift_in_reference_stds_and_warns_once(caplog):
    prof = Profile(np.array([120.0, 50.0, 2000.0]), np.array([10.0, 5.0, 300.0]), "ref.avi", 100)
    mon = DriftMonitor(prof, threshold=3.0, window=4)
    normal, dark = np.array([120.0, 50.0, 2000.0]), np.array([40.0, 50.0, 2000.0])
    with caplog.at_level(logging.INFO, logger="pipeline.drift"):
        scores = [mon.observe("cam", normal) for _ in range(4)]
        assert scores[:3] == [None] * 3 and scores[3] == pytest.approx(0.0)
        scores = [mon.observe("cam", dark) for _ in range(4)]
        # window means 100, 80, 60, 40 -> |mean - 120| / 10
        assert scores == pytest.approx([2.0, 4.0, 6.0, 8.0])
        for _ in range(4):
            final = mon.observe("cam", normal)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "recovered" in r.getMessage()]
    assert len(warnings) == 1 and len(infos) == 1
    msg = warnings[0].getMessage()
    assert "cam" in msg and "brightness fell from 120 to 80" in msg and "score 4.0" in msg
    assert final == pytest.approx(0.0) and not mon.drifting("cam") and mon.warnings("cam") == 1


def test_hysteresis_no_flapping_around_the_threshold(caplog):
    prof = Profile(np.array([100.0, 50.0, 2000.0]), np.array([10.0, 5.0, 300.0]), "ref.avi", 100)
    mon = DriftMonitor(prof, threshold=3.0, window=1)
    # brightness shifts giving scores 0, 3.5, 2.5, 3.5, 2.5, 3.5 (one warning), 1.0 (recovered), 2.5, 3.5 (again)
    with caplog.at_level(logging.INFO, logger="pipeline.drift"):
        for shift in (0, 35, 25, 35, 25, 35, 10, 25, 35):
            mon.observe("cam", np.array([100.0 + shift, 50.0, 2000.0]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert len(warnings) == 2 and len(recovered) == 1
    assert "brightness rose from 100 to 135" in warnings[0]


def test_std_floor_keeps_a_static_scene_from_reading_noise_as_drift():
    prof = Profile(np.array([120.0, 50.0, 2000.0]), np.array([0.01, 0.01, 0.01]), "static.avi", 100)
    mon = DriftMonitor(prof, threshold=3.0, window=1)
    assert mon.observe("cam", np.array([122.0, 51.0, 2050.0])) < 1.0


def _run(source: Path, reference: Path, frames: int | None = None):
    """Run the pipeline (outputs off) with a drift monitor; returns (summary, monitor)."""
    from pipeline.runtime import Pipeline

    cfg = build_config({
        "sources": [{"uri": str(source), "id": "cam", "max_frames": frames}],
        "output": {"jsonl": False, "video": False},
        "pipeline": {"progress": False},
        "metrics": {"log_interval_s": 0, "drift": {"reference": str(reference), "threshold": 3.0, "window": 30}},
    })
    pipe = Pipeline(cfg)
    monitor = DriftMonitor.from_config(cfg.metrics.drift, pipe)
    pipe.add_exporter(monitor)
    return pipe.run(progress=False), monitor, pipe


def _max_score(caplog, sid: str) -> float:
    """The run's highest drift score for ``sid``, from the monitor's closing line."""
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"drift {sid}: max score ")]
    return float(line.split("max score ", 1)[1].split()[0])


def test_same_video_does_not_drift(vtest_profile, caplog, no_thread_leak):
    with caplog.at_level(logging.DEBUG, logger="pipeline.drift"):
        summary, monitor, pipe = _run(VTEST, vtest_profile, frames=CLIP_FRAMES)
    assert summary.sources[0].frames_out == CLIP_FRAMES
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 0 < _max_score(caplog, "cam") < 3.0 * 0.7
    gauges = pipe.metrics.sources["cam"].gauges
    assert 0 <= gauges["drift_score"] < 2.1 and 90 < gauges["brightness"] < 150


def test_dusk_video_warns_exactly_once(vtest_profile, dark_clip, caplog, no_thread_leak):
    with caplog.at_level(logging.DEBUG, logger="pipeline.drift"):
        summary, monitor, pipe = _run(dark_clip, vtest_profile)
    assert summary.sources[0].frames_out == CLIP_FRAMES
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "cam" in warnings[0] and "brightness fell from" in warnings[0]
    gauges = pipe.metrics.sources["cam"].gauges
    assert gauges["drift_score"] > 3.0 and _max_score(caplog, "cam") > 3.0
    assert gauges["brightness"] < 0.5 * Profile.load(vtest_profile).mean[0]
    assert pipe.metrics.sources["cam"].events["drift_warnings"] == 1


def test_cli_wires_the_monitor_and_profile(tmp_path, dark_clip):
    ref = tmp_path / "ref.json"
    proc = run_cli("profile", str(VTEST), "--frames", "40", "--output", str(ref))
    assert proc.returncode == 0, proc.stderr
    assert ref.exists() and "brightness" in proc.stdout
    proc = run_cli("run", "--source", str(dark_clip), "--no-video", "-o", str(tmp_path / "out"),
                   "--set", f"metrics.drift.reference={ref}", "--set", "output.jsonl=false")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("input drift:") == 1, proc.stderr
    proc = run_cli("run", "--source", str(dark_clip), "--no-video", "--set", f"metrics.drift.reference={tmp_path}/nope.json")
    assert proc.returncode == ConfigError.exit_code
    assert "nope.json" in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_profile_needs_a_video(tmp_path):
    not_video = tmp_path / "x.avi"
    not_video.write_bytes(b"\0" * 100)
    with pytest.raises(Exception, match="x.avi"):
        profile_video(not_video)
