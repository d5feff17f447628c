"""The per-frame stage times in the JSON lines and the summary's per-stage percentiles come from
the same stamps, so they must agree: the summary p50 is the median of the JSONL values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import build_config
from tests.conftest import VTEST, run_cli

FRAMES = 50
PER_FRAME_STAGES = ("capture", "preprocess", "inference", "postprocess")
TOL_MS = 0.002  # JSONL rounds each value to 0.001 ms


def _jsonl_stages(path) -> tuple[list[dict], dict[str, np.ndarray]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return records, {s: np.array([r["stages_ms"][s] for r in records]) for s in PER_FRAME_STAGES}


def test_summary_p50_is_the_median_of_the_jsonl_stage_times(tmp_path, no_thread_leak):
    from pipeline.runtime import Pipeline

    cfg = build_config({
        "sources": [{"uri": str(VTEST), "id": "vtest", "max_frames": FRAMES}],
        "output": {"dir": str(tmp_path), "jsonl": True, "video": False},
        "pipeline": {"progress": False},
        "metrics": {"log_interval_s": 0},
    })
    summary = Pipeline(cfg).run(progress=False)
    records, per_frame = _jsonl_stages(tmp_path / "vtest.jsonl")
    assert len(records) == summary.sources[0].frames_out == FRAMES
    assert [r["seq"] for r in records] == list(range(FRAMES))
    rows = summary.stages_ms
    for stage in PER_FRAME_STAGES:
        values = per_frame[stage]
        assert np.all(values >= 0)
        assert rows[stage][0] == pytest.approx(float(np.median(values)), abs=TOL_MS), stage
        assert rows[stage][2] == pytest.approx(float(np.percentile(values, 99)), abs=TOL_MS), stage
    # and the per-frame e2e (latency_ms) is the summary's e2e
    e2e = np.array([r["latency_ms"] for r in records])
    assert rows["e2e"][0] == pytest.approx(float(np.median(e2e)), abs=0.01)
    # stages of one frame never exceed its age at the sink
    busy = sum(per_frame[s] for s in PER_FRAME_STAGES)
    assert np.all(busy <= e2e + 0.01)


def test_summary_json_agrees_with_jsonl_via_the_cli(tmp_path):
    proc = run_cli("-q", "run", "--source", str(VTEST), "--no-video", "--duration", "1.5", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    records, per_frame = _jsonl_stages(tmp_path / "vtest.jsonl")
    assert len(records) == summary["sources"][0]["frames_out"] > 5
    for stage in PER_FRAME_STAGES:
        assert summary["stages_ms"][stage]["p50"] == pytest.approx(float(np.median(per_frame[stage])), abs=TOL_MS)
