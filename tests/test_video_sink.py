"""Outputs off the critical path: the annotated video (encoder thread, H.264 by default, played by a
real headless Chromium), batched JSON lines, and the live batcher that takes what is waiting."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.frame import Detections
from pipeline.queues import QueueGroup
from pipeline.runtime import Pipeline
from pipeline.sinks.jsonl import JsonlSink
from pipeline.stages import InferenceStage
from tests.conftest import VTEST, slow_backend, stage_ctx
from tests.conftest import tiny_frame as frame

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/install_system_deps.sh installs Debian's chromium)")


def _decoded(path) -> tuple[int, float, tuple[float, float]]:
    cap = cv2.VideoCapture(str(path))
    fps, size = cap.get(cv2.CAP_PROP_FPS), (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n, fps, size


def _run(tmp_path, frames: int, **output) -> Pipeline:
    cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": frames}],
                        "output": {"dir": str(tmp_path), **output}, "pipeline": {"progress": False}})
    pipe = Pipeline(cfg)
    pipe.run()
    return pipe


def _codec_of(path) -> str:
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.name


@pytest.mark.parametrize("codec, expected", [("h264", "h264"), ("mp4v", "mpeg4")])
def test_each_codec_writes_every_frame(tmp_path, codec, expected, no_thread_leak):
    pipe = _run(tmp_path, 40, video_codec=codec)
    n, fps, size = _decoded(tmp_path / "vtest.mp4")
    assert (n, fps, size) == (40, 10.0, (768.0, 576.0))
    assert _codec_of(tmp_path / "vtest.mp4") == expected
    assert pipe.metrics.sources["vtest"].frames_out == 40


def test_default_video_is_h264_and_smaller_than_mp4v(tmp_path):
    _run(tmp_path / "a", 60)
    _run(tmp_path / "b", 60, video_codec="mp4v")
    h264, mp4v = tmp_path / "a" / "vtest.mp4", tmp_path / "b" / "vtest.mp4"
    assert _codec_of(h264) == "h264"
    assert h264.stat().st_size < 0.6 * mp4v.stat().st_size


def test_annotated_boxes_are_in_the_video(tmp_path):
    _run(tmp_path, 5)
    records = [json.loads(line) for line in (tmp_path / "vtest.jsonl").read_text().splitlines()]
    cap_in, cap_out = cv2.VideoCapture(str(VTEST)), cv2.VideoCapture(str(tmp_path / "vtest.mp4"))
    for _ in range(5):
        raw, drawn = cap_in.read()[1], cap_out.read()[1]
    x1, y1, x2, y2 = (int(v) for v in records[4]["detections"][0]["box"])
    edge = np.abs(drawn[y1:y2, x1:x1 + 2].astype(int) - raw[y1:y2, x1:x1 + 2].astype(int)).mean()
    inside = np.abs(drawn[y1 + 8:y2 - 8, x1 + 8:x2 - 8].astype(int) - raw[y1 + 8:y2 - 8, x1 + 8:x2 - 8].astype(int))
    assert edge > 3 * inside.mean() + 10  # the box outline is there; the picture inside is the input's


def test_an_encoder_failure_is_reported_and_never_stops_the_run(tmp_path, monkeypatch, caplog, no_thread_leak):
    from pipeline.sinks import video

    def broken(self, image):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video._PyAvWriter, "write", broken)
    pipe = _run(tmp_path, 20)
    st = pipe.metrics.sources["vtest"]
    assert st.frames_out == 20
    assert len((tmp_path / "vtest.jsonl").read_text().splitlines()) == 20  # the other sink is whole
    # said by the next write (counted as sink_errors_video) or, if none came after, by close()
    assert "encoding failed: [Errno 28] No space left on device" in caplog.text
    assert not (tmp_path / "vtest.mp4").exists()  # no frame was written: no unplayable file is left


@pytest.mark.parametrize("codec", ["h.265", "toolong", ""])
def test_unknown_codec_is_a_config_error(codec):
    with pytest.raises(ConfigError, match="output.video_codec: expected one of h264, vp9 or a four-character"):
        build_config({"output": {"video_codec": codec}})


@needs_chromium
def test_chromium_plays_the_annotated_video(tmp_path):
    """Debian's Chromium loads the default output in a <video> element: readyState >= 2 (it has
    decoded the current frame) and the duration of the frames written (40 at 10 fps: 4 s)."""
    _run(tmp_path, 40)
    page = tmp_path / "play.html"
    page.write_text("""<!doctype html><body><pre id="r">pending</pre><video id="v" muted preload="auto"
src="vtest.mp4"></video><script>
const v = document.getElementById("v"), r = document.getElementById("r");
const say = (what) => { r.textContent = JSON.stringify({what, readyState: v.readyState, duration: v.duration,
  error: v.error ? v.error.code : null, width: v.videoWidth}); };
v.addEventListener("loadeddata", () => say("loadeddata"));
v.addEventListener("error", () => say("error"));
</script></body>""")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                           "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    text = proc.stdout.split('<pre id="r">', 1)[-1].split("</pre>", 1)[0]
    assert text != "pending", proc.stderr[-500:]
    result = json.loads(text)
    assert result["what"] == "loadeddata" and result["error"] is None, result
    assert result["readyState"] >= 2 and result["width"] == 768
    assert result["duration"] == pytest.approx(4.0, abs=0.05)


def test_jsonl_lines_are_batched_and_all_written_at_close(tmp_path):
    sink = JsonlSink(tmp_path / "a.jsonl", "a", ("person",))
    sink.FLUSH_S = 1e9  # only the line count or close() writes
    for i in range(sink.FLUSH_LINES + 3):
        f = frame("a", i)
        f.detections = Detections.empty()
        sink.write(f)
    written = (tmp_path / "a.jsonl").read_text()
    assert len(written.splitlines()) == sink.FLUSH_LINES and written.endswith("\n")  # one whole batch
    sink.close()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(sink.FLUSH_LINES + 3))


# ---- the live batcher ---------------------------------------------------------------------------


class _Backend:
    """Sequencing only: records the batch sizes it is given."""

    name = "fake"
    max_batch = 8
    inputs: list = []
    outputs: list = []

    def __init__(self) -> None:
        self.calls: list[int] = []

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        self.calls.append(len(batch))
        return [np.zeros((len(batch), 1), np.float32)]


def test_live_batcher_takes_every_waiting_frame_without_waiting_for_more():
    """Before: one frame per live stream per call, and batch_timeout_ms spent waiting for frames
    that a live queue of one could never hold."""
    group = QueueGroup()
    q = group.add("cam", "inference", 4, "drop_oldest", None)
    for i in range(3):
        q.put(frame("cam", i))
    stage = InferenceStage(stage_ctx({"cam": None}), _Backend(), group, None, ["cam"], max_batch=4,
                           batch_timeout_ms=10_000)
    assert stage.live and stage.timeout_s == 0.0
    t0 = time.monotonic()
    items = group.take(stage.batch_limit(), stage.timeout_s, threading.Event())
    assert [f.seq for f in items] == [0, 1, 2] and time.monotonic() - t0 < 5  # not the 10 s timeout


def test_file_batcher_still_waits_to_fill_a_batch():
    group = QueueGroup()
    group.add("f", "inference", 8, "block", None)
    stage = InferenceStage(stage_ctx({"f": None}), _Backend(), group, None, ["f"], max_batch=4, batch_timeout_ms=50)
    assert not stage.live and stage.timeout_s == 0.05


@pytest.mark.parametrize("budget, frame_ms, post_ms, expected", [
    (None, 25.0, 0.0, 4),  # no budget: max_batch
    (250.0, 25.0, 5.0, 4),  # (250 - 5) / 50 = 4.9 -> capped at max_batch
    (120.0, 25.0, 10.0, 2),  # (120 - 10) / 50 = 2.2
    (40.0, 25.0, 10.0, 1),  # never below 1
    (250.0, 0.0, 0.0, 4),  # nothing measured yet
])
def test_live_batch_is_capped_by_the_budget(budget, frame_ms, post_ms, expected):
    group = QueueGroup()
    group.add("cam", "inference", 4, "drop_oldest", None)
    ctx = stage_ctx({"cam": budget})
    ctx.budget.observe("postprocess", post_ms)
    stage = InferenceStage(ctx, _Backend(), group, None, ["cam"], max_batch=4, batch_timeout_ms=5)
    stage.frame_ms = frame_ms
    assert stage.batch_limit() == expected


def test_overloaded_live_stream_batches_and_keeps_its_budget(tmp_path, no_thread_leak):
    """A camera faster than the model (a 150 ms model on a 24 fps stream): frames pile up during a
    call, so calls take several; nothing emitted is older than the budget."""
    from tests.conftest import MEGAMIND

    cfg = build_config({"sources": [{"uri": str(MEGAMIND), "realtime": True, "max_frames": 120}],
                        "backend": {"max_batch": 4},
                        "output": {"dir": str(tmp_path), "video": False},
                        "pipeline": {"latency_budget_ms": 1500, "progress": False}})
    summary = Pipeline(cfg, backend=slow_backend(cfg, 150)).run()
    src = summary.sources[0]
    assert max(summary.batch_sizes) > 1, summary.batch_sizes
    records = [json.loads(line) for line in (tmp_path / "Megamind.jsonl").read_text().splitlines()]
    assert len(records) == src.frames_out > 0
    assert all(r["latency_ms"] <= 1500 for r in records)
    assert src.frames_in == src.frames_out + sum(src.drops.values())
