"""Results in the user's code: ``Pipeline.results()`` and ``on_result``, on the real model and videos."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from pipeline.config import build_config
from pipeline.errors import SinkError
from pipeline.frame import Detections
from pipeline.results import SLOW_CONSUMER, Result
from pipeline.runtime import Pipeline
from tests.conftest import VTEST


def _cfg(tmp_path, source: dict | None = None, **pipeline) -> object:
    src = {"uri": str(VTEST), "id": "cam", "max_frames": 24, **(source or {})}
    return build_config({"sources": [src], "output": {"dir": str(tmp_path), "video": False},
                         "pipeline": {"progress": False, **pipeline}})


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _runner_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("inferpath-") and t.is_alive()]


def test_results_batch_every_frame_in_order_even_for_a_slow_consumer(tmp_path, no_thread_leak):
    got: list[Result] = []
    with Pipeline(_cfg(tmp_path)) as p:
        stream = p.results(images=True)
        for r in stream:
            time.sleep(0.03)  # slower than the pipeline: a batch job waits, nothing is lost
            got.append(r)
    assert [r.seq for r in got] == list(range(24))
    assert stream.summary is not None and stream.summary.sources[0].drops == {}
    records = _jsonl(tmp_path / "cam.jsonl")
    assert [r.seq for r in got] == [rec["seq"] for rec in records]
    for r, rec in zip(got, records):
        assert r.source == "cam" and isinstance(r.detections, Detections)
        assert r.records() == rec["detections"]  # the same boxes as the JSON lines
        assert r.latency_ms > 0 and r.image.shape == (576, 768, 3) and r.image.dtype == np.uint8
    assert sum(len(r.detections) for r in got) > 24  # vtest: people in every frame
    annotated = got[0].annotated()
    assert annotated.shape == got[0].image.shape and not np.array_equal(annotated, got[0].image)


def test_results_without_images_and_the_pixels_stay_unchanged(tmp_path):
    with Pipeline(_cfg(tmp_path, {"max_frames": 3})) as p:
        got = list(p.results())
    assert len(got) == 3 and all(r.image is None for r in got)
    with pytest.raises(RuntimeError, match="runs once"):
        p.results()
    with pytest.raises(ValueError, match="images=True"):
        got[0].annotated()


@pytest.mark.parametrize("again", ["run", "results"])
def test_a_pipeline_runs_once_whichever_way_it_ran(tmp_path, again):
    """After a results() loop or a run(), another run() or results() says so, whatever ran first."""
    for first in ("results", "run"):
        p = Pipeline(_cfg(tmp_path, {"max_frames": 2}))
        with p:
            list(p.results()) if first == "results" else p.run()
        with pytest.raises(RuntimeError, match=r"^a Pipeline runs once: build a new one"):
            p.run() if again == "run" else p.results()


def test_break_stops_the_pipeline_cleanly(tmp_path, no_thread_leak):
    cfg = _cfg(tmp_path, {"max_frames": None})  # the whole video: ~800 frames
    with Pipeline(cfg) as p:
        for n, _ in enumerate(p.results(), 1):
            if n == 5:
                break
        assert not _runner_threads()  # leaving the loop stopped and joined everything
    records = _jsonl(tmp_path / "cam.jsonl")  # the JSON lines are whole and closed
    assert 5 <= len(records) < 200
    assert p.stopped_by == "results consumer stopped"


def test_break_without_a_with_block(tmp_path, no_thread_leak):
    p = Pipeline(_cfg(tmp_path, {"max_frames": None}))
    for r in p.results():
        if r.seq == 2:
            break
    assert not _runner_threads()
    assert p.stopped_by == "results consumer stopped"


def test_a_consumer_that_raises_stops_cleanly_and_the_error_reaches_the_caller(tmp_path, no_thread_leak):
    with pytest.raises(RuntimeError, match="consumer bug"):
        with Pipeline(_cfg(tmp_path, {"max_frames": None})) as p:
            for r in p.results():
                if r.seq == 3:
                    raise RuntimeError("consumer bug")
    assert not _runner_threads()
    assert len(_jsonl(tmp_path / "cam.jsonl")) >= 4


def test_a_pipeline_error_is_raised_by_the_iterator(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = build_config({"sources": [str(VTEST)], "output": {"dir": str(blocker / "out")},
                        "pipeline": {"progress": False}})
    with pytest.raises(SinkError, match="output.dir"):
        with Pipeline(cfg) as p:
            list(p.results())


def test_live_slow_consumer_never_stalls_the_pipeline(tmp_path, no_thread_leak):
    """A realtime 10 fps camera; the consumer takes 0.8 s a result. The sinks keep up; the
    consumer gets fresh results, and what it missed is counted as ``slow_consumer``."""
    cfg = _cfg(tmp_path, {"max_frames": None, "realtime": True, "loop": True},
               latency_budget_ms=1000, duration_s=5)
    got: list[Result] = []
    with Pipeline(cfg) as p:
        stream = p.results()
        for r in stream:
            got.append(r)
            assert r.age_ms() <= 1000  # never older than the budget when handed over
            time.sleep(0.8)  # a handful of results in 5 s, whatever the machine's load
    src = stream.summary.sources[0]
    assert src.events.get(SLOW_CONSUMER, 0) > 0 and SLOW_CONSUMER not in src.drops
    assert src.frames_in == src.frames_out + sum(src.drops.values())  # every frame reached the other sinks
    delivered = len(_jsonl(tmp_path / "cam.jsonl"))  # the other sinks got every delivered frame
    assert delivered == src.frames_out
    assert delivered >= 2 * len(got) and len(got) >= 3
    assert [r.seq for r in got] == sorted(r.seq for r in got)


def test_on_result_callback_gets_every_frame_of_a_batch_job(tmp_path, no_thread_leak):
    got: list[Result] = []
    p = Pipeline(_cfg(tmp_path))
    p.on_result(got.append)
    summary = p.run()
    assert [r.seq for r in got] == list(range(24)) == [rec["seq"] for rec in _jsonl(tmp_path / "cam.jsonl")]
    assert summary.sources[0].drops == {}


def test_on_result_callback_that_raises_stops_cleanly_and_run_raises_it(tmp_path, no_thread_leak):
    def callback(r: Result) -> None:
        if r.seq == 3:
            raise KeyError("bad key in user code")

    p = Pipeline(_cfg(tmp_path, {"max_frames": None}))
    p.on_result(callback)
    with pytest.raises(KeyError, match="bad key"):
        p.run()
    assert not _runner_threads()
    assert p.stopped_by == "on_result callback raised"
    assert 4 <= len(_jsonl(tmp_path / "cam.jsonl")) < 300
