"""The run summary, a public object: built from a real short run on the real model."""

from __future__ import annotations

import json

import pytest

from pipeline.config import build_config
from pipeline.metrics import STAGES
from pipeline.runtime import Pipeline, RunSummary, SourceSummary
from tests.conftest import TREE, VTEST, run_cli


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("summary")


@pytest.fixture(scope="module")
def summary(out_dir) -> RunSummary:
    out = out_dir
    cfg = build_config({"sources": [{"uri": str(VTEST), "max_frames": 12}, str(TREE)],
                        "output": {"dir": str(out), "video": False}, "pipeline": {"progress": False}})
    return Pipeline(cfg).run()


def test_counts_per_source(summary, out_dir):
    vtest, tree = summary.sources
    assert isinstance(vtest, SourceSummary) and (vtest.id, tree.id) == ("vtest", "tree")
    assert (vtest.frames_in, vtest.frames_out, vtest.max_frames, vtest.claimed_frames) == (12, 12, 12, 795)
    assert (tree.frames_in, tree.frames_out, tree.claimed_frames) == (68, 68, 444)  # a truncated file
    assert summary.frames == 80 and summary.fps > 0 and not summary.errors
    for s in summary.sources:
        assert s.frames_in == s.frames_out + sum(s.drops.values()) and not s.live and s.error is None
        assert s.outputs == [str(out_dir / f"{s.id}.jsonl")]
    assert sum(size * calls for size, calls in summary.batch_sizes.items()) == 80  # each frame in one call


def test_stage_rows_are_public_and_ordered(summary):
    assert list(summary.stages_ms) == [*STAGES, "e2e"]  # every stage saw frames, in path order
    for name, row in summary.stages_ms.items():
        p50, p95, p99 = row
        assert 0 <= p50 <= p95 <= p99, name
    for s in summary.sources:
        assert list(s.stages_ms) == [*STAGES, "e2e"] and s.e2e_ms is s.stages_ms["e2e"]


def test_table_shows_sources_stages_and_outputs(summary):
    table = summary.table()
    assert table.splitlines()[0].startswith("model nanodet_coco.onnx on onnxruntime; 80 frames in ")
    rows = {line.split()[0]: line.split()[1:4] for line in table.splitlines() if line.startswith(("vtest ", "tree "))}
    assert rows == {"vtest": ["12", "12", "0"], "tree": ["68", "68", "0"]}
    for stage in (*STAGES, "e2e"):
        assert any(line.startswith(f"{stage} ") for line in table.splitlines()), stage
    assert f"outputs vtest: {summary.sources[0].outputs[0]}" in table


def test_summary_json_is_written_from_the_public_fields(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{{uri: '{VTEST}', max_frames: 6}}]\n")
    proc = run_cli("run", str(cfg), "-o", str(tmp_path), "--no-video")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "summary.json").read_text())
    assert set(data["stages_ms"]) == {*STAGES, "e2e"}
    assert data["sources"][0]["frames_out"] == 6 and data["frames"] == 6
