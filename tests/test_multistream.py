"""Many streams, one model: cross-stream batching with per-stream fault isolation."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.config import build_config
from pipeline.runtime import Pipeline
from tests.conftest import MEGAMIND, TREE, VTEST
from tests.rtsp import RtspServer, needs_rtsp
from tests.test_live import _run_in_thread, _wait_for


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_results_equal_unbatched(tmp_path, no_thread_leak):
    results = {}
    for max_batch in (1, 4):
        out = tmp_path / f"b{max_batch}"
        cfg = build_config({
            "sources": [{"uri": str(MEGAMIND), "id": "film"}, {"uri": str(TREE), "id": "tree"}],
            "backend": {"max_batch": max_batch, "batch_timeout_ms": 50},
            "output": {"dir": str(out), "video": False}, "pipeline": {"progress": False},
        })
        summary = Pipeline(cfg).run()
        results[max_batch] = (summary, {sid: _records(out / f"{sid}.jsonl") for sid in ("film", "tree")})
    (s1, r1), (s4, r4) = results[1], results[4]
    assert set(s1.batch_sizes) == {1} and max(s4.batch_sizes) == 4
    for sid, n in (("film", 270), ("tree", 68)):
        assert [r["seq"] for r in r1[sid]] == [r["seq"] for r in r4[sid]] == list(range(n))
        for a, b in zip(r1[sid], r4[sid]):
            assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
            for da, db in zip(a["detections"], b["detections"]):
                assert max(abs(x - y) for x, y in zip(da["box"], db["box"])) < 0.05
                assert abs(da["score"] - db["score"]) < 1e-3


def test_fixed_batch_model_falls_back_to_one_call_per_frame(tmp_path, caplog, no_thread_leak):
    """A model whose batch dim is fixed at 1 runs one frame per call, said once in the log."""
    import onnx

    from pipeline.model import bundled_model_path

    model = onnx.load(str(bundled_model_path()))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    cfg = build_config({
        "sources": [{"uri": str(TREE), "id": "a"}, {"uri": str(TREE), "id": "b"}],
        "model": {"path": str(fixed)}, "backend": {"max_batch": 8},
        "output": {"dir": str(tmp_path), "video": False}, "pipeline": {"progress": False},
    })
    with caplog.at_level("INFO"):
        summary = Pipeline(cfg).run()
    assert set(summary.batch_sizes) == {1} and summary.frames == 136
    assert sum("one call per frame" in r.getMessage() for r in caplog.records) == 1


@needs_rtsp
@pytest.mark.rtsp
def test_four_streams_one_killed(tmp_path, no_thread_leak):
    """Two realtime files and two RTSP cameras; one camera dies mid-run and comes back."""
    budget = 600
    steady = RtspServer(VTEST).start()
    flaky = RtspServer(VTEST).start()
    try:
        cfg = build_config({
            "sources": [
                {"uri": str(VTEST), "id": "file_a", "realtime": True, "loop": True},
                {"uri": str(MEGAMIND), "id": "file_b", "realtime": True, "loop": True, "speed": 0.5},
                {"uri": steady.url, "id": "cam_ok"},
                {"uri": flaky.url, "id": "cam_flaky", "read_timeout_ms": 2000, "open_timeout_ms": 3000,
                 "reconnect": {"max_retries": -1, "initial_backoff_s": 0.2, "max_backoff_s": 1.0}},
            ],
            "backend": {"max_batch": 4, "batch_timeout_ms": 20},
            "output": {"dir": str(tmp_path), "video": False},
            "pipeline": {"latency_budget_ms": budget, "progress": False},
        })
        pipe = Pipeline(cfg)
        runner, result = _run_in_thread(pipe)
        out = lambda sid: pipe.metrics.sources[sid].frames_out if sid in pipe.metrics.sources else 0  # noqa: E731
        _wait_for(lambda: all(out(s) >= 5 for s in ("file_a", "file_b", "cam_ok", "cam_flaky")), 90, "all streams")
        flaky.stop()
        _wait_for(lambda: pipe.metrics.sources["cam_flaky"].gauges.get("up") == 0.0, 30, "the flaky camera down")
        during = {s: out(s) for s in ("file_a", "file_b", "cam_ok")}
        time.sleep(4.0)  # the outage: the others must keep delivering
        grown = {s: out(s) - during[s] for s in during}
        flaky.start()
        back = out("cam_flaky")
        _wait_for(lambda: out("cam_flaky") >= back + 5, 60, "the flaky camera to rejoin")
        pipe.stop("test")
        runner.join(60)
        assert not runner.is_alive()
    finally:
        steady.stop()
        flaky.stop()
    assert all(n >= 8 for n in grown.values()), grown  # ~4 s of 10/12/10 fps streams
    summary = result["summary"]
    by_id = {s.id: s for s in summary.sources}
    assert by_id["cam_flaky"].events["reconnects"] >= 1 and by_id["cam_flaky"].events["disconnects"] >= 1
    for sid, src in by_id.items():
        assert src.frames_in == src.frames_out + sum(src.drops.values()), sid
        records = _records(tmp_path / f"{sid}.jsonl")
        assert len(records) == src.frames_out
        seqs = [r["seq"] for r in records]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), sid
        assert max(r["latency_ms"] for r in records) <= budget, sid
    assert max(summary.batch_sizes) > 1
