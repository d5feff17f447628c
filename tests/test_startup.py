"""Start-up and tear-down of a run (issue 25): what a run imports, where the model spec comes
from, the outputs opened while the backend warms up, the command's exit. The time each step
takes is measured by ``scripts/bench_startup.py`` (docs/bench/startup.md), not here."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO, VTEST

# Run in a fresh interpreter: which modules a command line and a run have imported at their end.
IMPORTED = """
import json, sys
from pipeline import cli
{run}
heavy = ("onnx", "onnxruntime", "av", "cv2", "prometheus_client", "ray", "paho", "ml_dtypes", "rich.progress")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def _imported(run: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", IMPORTED.format(run=run)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_command_line_imports_no_heavy_library():
    """``import pipeline.cli`` (what ``inferpath --help`` and every command pay) loads none of the
    libraries a run may need: the backend, the video libraries, the exporters, Ray."""
    assert _imported("") == []


@pytest.mark.parametrize("video, expected", [(True, ["av", "cv2", "onnxruntime"]), (False, ["cv2", "onnxruntime"])])
def test_a_run_imports_only_what_it_uses(tmp_path, video, expected):
    """A run on a file with the bundled model imports ONNX Runtime and OpenCV; PyAV only when it
    writes the H.264 video; never ``onnx`` (the spec is read from the session's metadata; ``onnx``
    and its ml_dtypes cost about 0.45 s), the Prometheus client or Ray (both off), nor rich's
    progress bar (not a terminal)."""
    args = ["-q", "run", "--source", str(VTEST), "-o", str(tmp_path), "--set", "sources.0.max_frames=2",
            *([] if video else ["--no-video"])]
    assert _imported(f"assert cli.main({args!r}) == 0") == expected
    assert len((tmp_path / "vtest.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "vtest.mp4").exists() == video


def test_the_spec_from_the_session_is_the_spec_from_the_onnx(tmp_path):
    """The run's spec, read from the ONNX Runtime session's metadata, is the one ``onnx`` reads
    from the file (the bundled model); a backend that carries no metadata falls back to ``onnx``."""
    from pipeline.config import build_config
    from pipeline.model import fit_spec_to_input, load_onnx_metadata
    from pipeline.runtime import Pipeline, make_backend, resolve_model
    from tests.conftest import SlowBackend

    cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": 1}], "output": {"dir": str(tmp_path)}})
    path, onnx_spec = resolve_model(cfg)
    backend = make_backend(cfg, path)
    try:
        assert backend.metadata == load_onnx_metadata(path) and "inferpath.spec" in backend.metadata
    finally:
        backend.close()
    info = fit_spec_to_input(onnx_spec, (1, 3, 416, 416), "float32", str(path))
    for pipe in (Pipeline(cfg), Pipeline(cfg, backend=SlowBackend(make_backend(cfg, path), 0))):
        try:
            assert pipe.plan.spec == info and len(pipe.names) == 80 and pipe.names[0] == "person"
        finally:
            pipe.plan.close()


def test_a_spec_yaml_beside_the_model_still_wins(tmp_path):
    """A spec YAML beside the model overrides the ONNX's metadata, as before."""
    import shutil

    from pipeline.config import build_config
    from pipeline.model import bundled_model_path
    from pipeline.runtime import Pipeline

    model = tmp_path / "m.onnx"
    shutil.copy(bundled_model_path(), model)
    (tmp_path / "m.yaml").write_text("input_size: [416, 416]\nnames: [a, b, c]\ncolor: RGB\n")
    cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": 1}], "model": {"path": str(model)},
                        "output": {"dir": str(tmp_path)}})
    pipe = Pipeline(cfg)
    try:
        assert pipe.names == ("a", "b", "c")
    finally:
        pipe.plan.close()


def test_the_outputs_open_while_the_backend_warms_up(tmp_path, no_thread_leak):
    """The sinks (the H.264 writer among them) are made while the inference thread runs its
    warm-up call: here the warm-up call waits for a sink factory of the run to be called, and that
    factory waits for the warm-up call to have begun, so the run only gets past both when they
    happen at once (sinks made before the warm-up, as before, would each wait out their 10 s).
    No frame is read before both are done, and the video plays."""
    import cv2

    from pipeline.config import build_config
    from pipeline.runtime import Pipeline
    from pipeline.sinks import SinkBase

    cfg = build_config({"sources": [{"uri": str(VTEST), "id": "cam", "max_frames": 5}],
                        "output": {"dir": str(tmp_path)}, "pipeline": {"progress": False}})
    pipe = Pipeline(cfg)
    inner = pipe.backend
    warming, sinks_made = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    class Waiting:
        name, inputs, outputs = inner.name, inner.inputs, inner.outputs
        max_batch = inner.max_batch

        def infer(self, batch):
            if not warming.is_set():  # the warm-up call
                warming.set()
                seen["sinks made during the warm-up"] = sinks_made.wait(10)
                seen["frames read then"] = pipe.metrics.snapshot("cam").frames_in
            return inner.infer(batch)

        def close(self):
            inner.close()

    def factory(src, scfg):
        seen["warm-up begun when the sinks were made"] = warming.wait(10)
        sinks_made.set()
        return SinkBase()

    pipe.backend = Waiting()
    pipe.add_sink_factory(factory)
    summary = pipe.run()
    assert seen == {"warm-up begun when the sinks were made": True, "sinks made during the warm-up": True,
                    "frames read then": 0}
    assert summary.sources[0].frames_out == 5
    cap = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    try:
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
        assert cap.read()[0]
    finally:
        cap.release()


def test_exit_now_runs_the_exit_handlers_and_keeps_the_code():
    """The command ends without the interpreter's tear-down, but after the exit handlers (logging's
    flush, Ray's shutdown) and the non-daemon threads; what was printed is flushed; the code stays."""
    code = (
        "import atexit, sys, threading, time\n"
        "atexit.register(lambda: print('handler ran', flush=False))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done', flush=False))).start()\n"
        "print('table', end='')\n"
        "sys.stderr.write('error line')\n"
        "from pipeline.cli import exit_now\n"
        "exit_now(4)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert proc.stdout == "tablethread done\nhandler ran\n" and proc.stderr == "error line"


def test_log_lines_follow_standard_error_after_it_was_swapped_and_closed(monkeypatch):
    """The CLI's log handler writes to standard error as it is at each line: a caller that swapped
    it for a while (a test's capture, a notebook) and closed its stand-in leaves no handler on a
    closed file (every later line would be lost to "I/O operation on closed file")."""
    import io
    import logging

    from pipeline.logs import log_to_stderr

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        first, second = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        log_to_stderr("%(levelname)s %(message)s", logging.INFO)
        logging.getLogger("pipeline.x").info("while swapped")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("pipeline.x").warning("after it closed")
        assert second.getvalue() == "WARNING after it closed\n"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
