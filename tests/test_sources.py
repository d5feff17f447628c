"""Sources, hardened: finite HTTP files, credentials, ids, cameras that never answer, retries."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import build_config
from pipeline.errors import SourceError
from pipeline.runtime import Pipeline
from pipeline.sources import default_id, expand_globs, redact_text, redact_uri, unique_ids
from pipeline.sources.base import webcam_index
from tests.conftest import MEGAMIND, TREE, VTEST, run_cli
from tests.rtsp import free_port, needs_rtsp


def make_clip(path: Path, frames: int = 30, size: tuple[int, int] = (160, 120), fourcc: str = "MJPG",
              fps: float = 10.0, noise: bool = False) -> Path:
    """A short real video (moving bar, or noise to make a big file), written with OpenCV."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if noise else np.full((h, w, 3), 40, np.uint8)
        if not noise:
            x = (i * 7) % w
            img[:, x : x + 10] = (0, 200, 255)
        writer.write(img)
    writer.release()
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A python http.server (no Range support) on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


# ---- credentials --------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, redacted", [
    ("rtsp://admin:hunter2@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
    ("rtsp://admin:p@ssw0rd@host/live", "rtsp://***@host/live"),  # an unencoded @ in the password
    ("rtsp://127.0.0.1:5/live?user=admin&password=hunter2", "rtsp://127.0.0.1:5/live?user=admin&password=***"),
    ("https://h/v.mp4?X-Amz-Signature=abc&api_key=k1&access_token=t&pwd=p&n=3",
     "https://h/v.mp4?X-Amz-Signature=***&api_key=***&access_token=***&pwd=***&n=3"),
    ("http://h/v.mp4?email=a@b.c", "http://h/v.mp4?email=a@b.c"),  # an @ after the host is no userinfo
    ("rtsp://cam/live", "rtsp://cam/live"),
    ("sample_videos/vtest.avi", "sample_videos/vtest.avi"),
])
def test_redact_uri(uri, redacted):
    assert redact_uri(uri) == redacted


def test_redact_text_finds_urls_and_secret_params():
    text = "[tcp @ 0x1] Connection to tcp://u:p@ss@127.0.0.1:9?password=zz&timeout=0 failed; token=abc"
    out = redact_text(text)
    assert "p@ss" not in out and "zz" not in out and "abc" not in out and "timeout=0" in out


@pytest.mark.parametrize("uri, sid", [
    ("rtsp://admin:p@ssw0rd@host/live", "host_live"),
    ("rtsp://127.0.0.1:554/live?user=admin&password=hunter2", "127.0.0.1_554_live"),
    ("http://127.0.0.1:8000/videos/bikes.mp4", "127.0.0.1_8000_videos_bikes"),  # no bikes.mp4.mp4
    ("file:///tmp/some%20dir/clip.mp4", "clip"),
    ("webcam:2", "webcam2"),
])
def test_default_id_uses_host_and_path_only(uri, sid):
    assert default_id(uri) == sid


def test_secrets_never_reach_logs_outputs_or_metrics(http_dir, tmp_path):
    """Every place a source name appears: log lines, summary.json, file names, JSONL, Prometheus."""
    root, base = http_dir
    make_clip(root / "clip.avi", frames=12)
    url = f"{base}/clip.avi?user=admin&password=hunter2&token=t0ken"
    out = tmp_path / "out"
    proc = run_cli("-v", "run", url, "-o", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for secret in ("hunter2", "t0ken"):
        assert secret not in proc.stdout + proc.stderr
        for f in out.iterdir():
            assert secret not in f.name
            assert secret not in f.read_bytes().decode("latin-1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"][0]["uri"].endswith("password=***&token=***")
    sid = summary["sources"][0]["id"]
    assert sid == "127.0.0.1_" + base.rsplit(":", 1)[1] + "_clip"
    assert {json.loads(line)["source"] for line in (out / f"{sid}.jsonl").read_text().splitlines()} == {sid}

    from prometheus_client import generate_latest

    from pipeline.exporters import PrometheusExporter

    cfg = build_config({"sources": [url], "output": {"dir": str(tmp_path / "o2"), "video": False},
                        "pipeline": {"progress": False}})
    pipe = Pipeline(cfg)
    exporter = PrometheusExporter(port=0)
    pipe.add_exporter(exporter)
    pipe.run()
    scrape = generate_latest(exporter.registry).decode()
    assert f'source="{sid}"' in scrape and "hunter2" not in scrape and "t0ken" not in scrape


def test_unencoded_at_in_password_is_redacted_everywhere(tmp_path):
    port = free_port()
    proc = run_cli("run", "--source", f"rtsp://admin:p@ssw0rd@127.0.0.1:{port}/live", "-o", str(tmp_path),
                   "--duration", "2", timeout=120)
    assert "ssw0rd" not in proc.stdout + proc.stderr
    assert all("ssw0rd" not in f.name and "ssw0rd" not in f.read_text() for f in tmp_path.iterdir())
    assert f"rtsp://***@127.0.0.1:{port}/live" in proc.stderr


# ---- HTTP files --------------------------------------------------------------------------------
def test_finite_http_file_is_read_once_like_a_local_file(http_dir, tmp_path, no_thread_leak):
    """Before: treated as live, replayed forever, 97 % dropped as queue_full."""
    root, base = http_dir
    make_clip(root / "clip.avi", frames=40)
    cfg = build_config({"sources": [f"{base}/clip.avi"], "output": {"dir": str(tmp_path), "video": False},
                        "pipeline": {"duration_s": 90, "progress": False}})
    pipe = Pipeline(cfg)
    assert not pipe.sources[0].is_live
    summary = pipe.run()
    src = summary.sources[0]
    assert summary.stopped_by is None  # it ended by itself, at the end of the file
    assert src.frames_in == src.frames_out == 40 and not src.drops and src.error is None
    seqs = [json.loads(line)["seq"] for line in (tmp_path / f"{src.id}.jsonl").read_text().splitlines()]
    assert seqs == list(range(40))


def test_http_live_override_keeps_reading_as_a_stream(http_dir, tmp_path):
    root, base = http_dir
    make_clip(root / "clip.avi", frames=10)
    cfg = build_config({"sources": [{"uri": f"{base}/clip.avi", "live": True}],
                        "output": {"dir": str(tmp_path), "video": False}, "pipeline": {"progress": False}})
    assert Pipeline(cfg).sources[0].is_live


def test_moov_at_end_mp4_over_a_server_without_ranges_fails_in_one_line(http_dir, tmp_path):
    """Before: 0 frames and hundreds of reconnects, no error."""
    root, base = http_dir
    clip = make_clip(root / "big.mp4", frames=40, size=(320, 240), fourcc="mp4v", noise=True)
    data = clip.read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")  # OpenCV writes the index at the end
    out = tmp_path / "out"
    proc = run_cli("run", "--source", f"{base}/big.mp4", "-o", str(out), "--duration", "60", timeout=120)
    assert proc.returncode == SourceError.exit_code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("inferpath: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{base}/big.mp4" in errors[0] and "Range" in errors[0] and "+faststart" in errors[0]
    assert not out.exists() or not [f for f in out.iterdir() if f.suffix in (".jsonl", ".mp4")]


@pytest.mark.parametrize("live", ["auto", "true", "false"])
def test_http_404_is_one_line_at_once(http_dir, tmp_path, live):
    """Before: treated as a camera, 10 retries over 65 s, then 'never connected'."""
    _, base = http_dir
    url = f"{base}/missing.mp4?token=s3cret"
    proc = run_cli("run", "--source", url, "-o", str(tmp_path), "--set", f"sources.0.live={live}",
                   "--set", "sources.0.reconnect.max_retries=10", timeout=60)
    assert proc.returncode == SourceError.exit_code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("inferpath: error:")]
    assert errors == [f"inferpath: error: {base}/missing.mp4?token=***: HTTP 404 Not Found"], proc.stderr
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stdout + proc.stderr


def test_http_status_probe_answers_within_a_second(http_dir):
    """The probe itself (no model, no process start): a 404 in well under a second; a server
    that is not there (connection refused) is left to the stream's retries."""
    import time

    from pipeline.sources import check_http_status

    _, base = http_dir
    t = time.monotonic()
    with pytest.raises(SourceError, match=r"/gone\.avi: HTTP 404 Not Found$"):
        check_http_status(f"{base}/gone.avi", 10)
    assert time.monotonic() - t < 1.0
    check_http_status(f"http://127.0.0.1:{free_port()}/x.mp4", 1)  # refused: no error here


def test_retries_are_not_reset_by_an_open_that_delivers_nothing(http_dir, tmp_path):
    """A server that opens but never delivers a frame: max_retries must still fire."""
    root, base = http_dir
    make_clip(root / "big.mp4", frames=40, size=(320, 240), fourcc="mp4v", noise=True)
    cfg = build_config({
        "sources": [{"uri": f"{base}/big.mp4", "live": True,
                     "reconnect": {"max_retries": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.1}}],
        "output": {"dir": str(tmp_path), "video": False},
        "pipeline": {"duration_s": 60, "progress": False},
    })
    summary = Pipeline(cfg).run()
    src = summary.sources[0]
    assert summary.stopped_by is None, "retries never ran out"
    assert src.error and "gave up after 3 retries" in src.error and src.source_failed


# ---- cameras that never answer -------------------------------------------------------------------
def test_camera_that_never_answers_fails(tmp_path):
    """Before: retried for the whole --duration and exited 0 with '0 frames'."""
    port = free_port()
    proc = run_cli("run", "--source", f"rtsp://127.0.0.1:{port}/none", "-o", str(tmp_path), "--duration", "3",
                   "--set", "metrics.log_interval_s=1", timeout=120)
    assert proc.returncode == SourceError.exit_code, proc.stderr
    assert "never connected" in proc.stdout and "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sources"][0]["never_connected"] is True
    assert "never connected" in summary["sources"][0]["error"]
    assert "[tcp @" not in proc.stderr and "WARN:" not in proc.stderr  # FFmpeg/OpenCV noise stays out
    assert "e2e p50 nan" not in proc.stderr and "no frame delivered" in proc.stderr  # the periodic line
    assert not [f for f in tmp_path.iterdir() if f.suffix in (".jsonl", ".mp4")]  # nothing was written


# ---- kinds -----------------------------------------------------------------------------------------
def test_webcam_with_a_non_number_is_refused():
    with pytest.raises(SourceError, match="webcam:abc: not a camera"):
        webcam_index("webcam:abc")
    proc = run_cli("run", "--source", "webcam:abc", timeout=60)
    assert proc.returncode == SourceError.exit_code and "not a camera" in proc.stderr
    assert "/dev/video0" not in proc.stderr


def test_file_url_is_a_file(tmp_path):
    clip = make_clip(tmp_path / "my clip.avi", frames=5)
    uri = "file://" + str(clip).replace(" ", "%20")
    cfg = build_config({"sources": [uri], "output": {"dir": str(tmp_path / "o"), "video": False},
                        "pipeline": {"progress": False}})
    summary = Pipeline(cfg).run()
    assert summary.sources[0].id == "my clip" and summary.sources[0].frames_out == 5


def test_glob_files_sharing_a_stem_get_unique_ids(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        make_clip(tmp_path / d / "clip.avi", frames=3)
    srcs = expand_globs(build_config({"sources": [str(tmp_path / "*" / "clip.avi")]}).sources)
    assert [s.id for s in srcs] == ["a_clip", "b_clip"]
    assert unique_ids(["x/v.mp4", "x/v.avi"]) == ["x_v", "x_v_2"]
    cfg = build_config({"sources": [str(tmp_path / "*" / "clip.avi")],
                        "output": {"dir": str(tmp_path / "o"), "video": False}, "pipeline": {"progress": False}})
    summary = Pipeline(cfg).run()
    assert sorted(s.id for s in summary.sources) == ["a_clip", "b_clip"]
    assert (tmp_path / "o" / "a_clip.jsonl").exists() and (tmp_path / "o" / "b_clip.jsonl").exists()


def test_sources_given_one_by_one_sharing_a_stem_get_unique_ids(tmp_path):
    """Before: 'two sources share the id clip', though a glob of the same files was accepted."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        make_clip(tmp_path / d / "clip.avi", frames=3)
    out = tmp_path / "o"
    proc = run_cli("run", "-s", str(tmp_path / "a" / "clip.avi"), "-s", str(tmp_path / "b" / "clip.avi"),
                   "-o", str(out), "--no-video", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "a_clip.jsonl").exists() and (out / "b_clip.jsonl").exists()


def test_a_source_added_with_set_alone(tmp_path):
    """Before: 'sources[0]: unknown key '0''. The source list starts empty: index 0 adds one;
    a gap names the list's length and the index that adds one."""
    proc = run_cli("run", "--set", f"sources.0.uri={TREE}", "--set", "sources.0.max_frames=2", "-o", str(tmp_path),
                   "--no-video", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "tree.jsonl").read_text().splitlines()) == 2
    proc = run_cli("run", "--set", f"sources.1.uri={TREE}", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "inferpath: error: --set: sources.1: no such list item (sources has 0; sources.0 adds one)"]


def test_a_glob_that_matches_nothing_and_a_directory_say_so(tmp_path):
    """Before: '1 source(s): * (file)', then 'video file not found'; a directory: 'not a file'."""
    proc = run_cli("run", "--source", str(tmp_path / "*.mp4"), timeout=60)
    assert proc.returncode == SourceError.exit_code
    assert proc.stderr.strip().splitlines() == [f"inferpath: error: {tmp_path}/*.mp4: the pattern matched no files"]
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.zeros((32, 32, 3), np.uint8))
    proc = run_cli("run", "--source", str(tmp_path), timeout=60)
    assert proc.returncode == SourceError.exit_code
    assert proc.stderr.strip().splitlines() == [
        f"inferpath: error: {tmp_path}: a directory, not a video; to run on the files in it give a glob: "
        f"--source '{tmp_path}/*.jpg'"]


def test_run_help_states_the_max_batch_default():
    proc = run_cli("run", "--help", timeout=60)
    text = " ".join(proc.stdout.split())
    assert "default 4)" not in text and "1 on a CPU" in text


def test_vtest_is_still_a_plain_file():
    assert default_id(str(VTEST)) == "vtest"


# ---- the Source protocol and the source registry ---------------------------------------------

def _protocol_attributes() -> list[str]:
    from pipeline.sources.base import Source

    return [*Source.__annotations__, "measured_fps"]


def _sources_of_every_kind():
    """One of each source class, built through the registry (nothing opened)."""
    from pipeline.sources import create_source

    stop = threading.Event()
    uris = [str(VTEST), {"uri": str(MEGAMIND), "realtime": True}, "rtsp://127.0.0.1:1/none", "webcam:7"]
    return [create_source(build_config({"sources": [u]}).sources[0], stop, lambda event: None) for u in uris]


def test_every_source_kind_has_the_whole_protocol():
    """No caller probes a source: each kind has each attribute, before and after open."""
    from pipeline.sources import FileSource, StreamSource

    sources = _sources_of_every_kind()
    assert [type(s) for s in sources] == [FileSource, FileSource, StreamSource, StreamSource]
    for src in sources:
        missing = [a for a in _protocol_attributes() if not hasattr(src, a)]
        assert not missing, f"{type(src).__name__} ({src.uri}) lacks {missing}"
    file, paced, rtsp, webcam = sources
    assert (file.is_file, file.is_live) == (True, False)
    assert (paced.is_file, paced.is_live) == (True, True)  # a file played as a camera
    for stream in (rtsp, webcam):
        assert (stream.is_file, stream.is_live, stream.claimed_frames, stream.skipped, stream.start_frame) == \
            (False, True, 0, 0, 0)
        assert stream.measured_fps == 0.0 and not stream.ever_opened


@pytest.mark.parametrize("video, fps, size, claimed", [
    (VTEST, 10.0, (768, 576), 795),
    (MEGAMIND, 23.976, (720, 528), 270),
    (TREE, 15.0, (320, 240), 444),  # the header claims 444; 68 decode (a truncated file)
])
def test_file_source_reports_its_header(video, fps, size, claimed):
    from pipeline.sources import FileSource

    src = FileSource(str(video), video.stem)
    assert (src.ever_opened, src.claimed_frames, src.size) == (False, 0, (0, 0))
    src.open()
    try:
        assert src.ever_opened and src.size == size and src.claimed_frames == claimed
        assert src.fps == pytest.approx(fps, abs=1e-3)
        grab = src.read()
        assert grab is not None and grab.image.shape == (size[1], size[0], 3)
        assert (src.skipped, src.measured_fps, src.down_at_end, src.start_frame) == (0, 0.0, False, 0)
    finally:
        src.close()


def test_file_source_started_mid_way_reads_from_there():
    from pipeline.sources import FileSource

    whole, late = FileSource(str(VTEST), "v"), FileSource(str(VTEST), "v", start_frame=5)
    whole.open()
    late.open()
    try:
        frames = [whole.read().image for _ in range(6)]
        assert late.start_frame == 5
        assert np.array_equal(late.read().image, frames[5])
    finally:
        whole.close()
        late.close()


@needs_rtsp
def test_stream_source_measures_its_rate_and_says_whether_it_was_up():
    from pipeline.sources import StreamSource
    from tests.rtsp import RtspServer

    with RtspServer(VTEST) as srv:
        src = StreamSource(srv.url, "cam")
        src.open()
        try:
            assert src.ever_opened and src.size == (768, 576)
            for _ in range(12):
                assert src.read() is not None
            assert src.measured_fps > 0
        finally:
            src.close()
        assert src.down_at_end is False  # it was up when it closed


def test_create_source_picks_the_registered_factory(monkeypatch):
    from pipeline import sources

    assert sources.source_kinds() == ["file", "http", "rtsp", "webcam"]
    built = []

    def fake_rtsp(cfg, sid, stop, on_event):
        built.append((cfg.uri, sid))
        return sources.FileSource(str(VTEST), sid)

    monkeypatch.setitem(sources.SOURCES, "rtsp", fake_rtsp)
    cfg = build_config({"sources": [{"uri": "rtsp://cam.local/x", "id": "door"}]}).sources[0]
    src = sources.create_source(cfg, threading.Event(), lambda event: None)
    assert built == [("rtsp://cam.local/x", "door")] and src.id == "door"
    monkeypatch.delitem(sources.SOURCES, "rtsp")
    with pytest.raises(SourceError, match=r"rtsp://cam.local/x: no source for URIs of kind 'rtsp'; expected one of "
                                          r"file, http, webcam"):
        sources.create_source(cfg, threading.Event(), lambda event: None)
