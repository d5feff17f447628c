"""pipeline.tables: the summary's tables, as plain text that greps the same piped or on a terminal."""

from __future__ import annotations

import pytest

from pipeline.runtime import SourceSummary
from pipeline.tables import render_table, sources_table, stage_table

NAN = float("nan")


def _source(**kw) -> SourceSummary:
    src = dict(id="vtest", uri="vtest.avi", live=False, frames_in=795, frames_out=795, drops={}, events={},
               detections={}, fps=31.84, stages_ms={"e2e": [52.31, 60.0, 88.06]})
    src.update(kw)
    return SourceSummary(**src)


def test_sources_table_rows_line_up_and_nothing_is_cut():
    text = sources_table([
        _source(),
        _source(id="a-very-long-camera-name-on-the-loading-dock", live=True, frames_in=123456, frames_out=123400,
                drops={"late@inference": 50, "evicted@preprocess": 6}, fps=12.5, stages_ms={"e2e": [1234.5, 99999.0, 355312.1]}),
        _source(id="cam2", frames_in=0, frames_out=0, fps=0.0, stages_ms={"e2e": [NAN] * 3}, error="rtsp://cam2/x: no route"),
    ])
    assert text.splitlines() == [
        "source                                          in    out dropped  fps e2e p50   p99 ms",
        "---------------------------------------------------------------------------------------",
        "vtest                                          795    795       0 31.8    52.3     88.1",
        "a-very-long-camera-name-on-the-loading-dock 123456 123400      56 12.5  1234.5 355312.1",
        "cam2                                             0      0       0  0.0       -        -  ERROR: rtsp://cam2/x: no route",
    ]


def test_stage_table_in_path_order_with_a_shared_column_width():
    text = stage_table({"e2e": [1.0, 2.0, 355312.1], "inference": [12.0, 15.0, 123456.78], "capture": [0.5, 0.6, 0.7]})
    assert text.splitlines() == [
        "stage           p50 ms    p95 ms    p99 ms",
        "capture           0.50      0.60      0.70",
        "inference        12.00     15.00 123456.78",
        "e2e               1.00      2.00 355312.10",
    ]
    assert stage_table({"preprocess": [1.0, 2.0, 3.0]}).splitlines() == [
        "stage          p50 ms   p95 ms   p99 ms",
        "preprocess       1.00     2.00     3.00",
    ]
    assert stage_table({}) == ""  # no frame passed: no table


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "1"}, {"COLUMNS": "20"}])
def test_plain_text_whatever_the_environment_says(monkeypatch, env):
    """No colour codes or box characters, and no wrapping at the terminal's width."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    text = sources_table([_source(id="[bold]cam-" + "x" * 60 + "[/bold]", error="[red]boom")])
    assert "\x1b" not in text and all(ord(ch) < 128 for ch in text)
    row = text.splitlines()[2]
    assert row.split() == ["[bold]cam-" + "x" * 60 + "[/bold]", "795", "795", "0", "31.8", "52.3", "88.1",
                           "ERROR:", "[red]boom"]


def test_render_table_alignment_gap_widths_and_no_heads():
    rows = [("pseudo-mAP@0.5", "0.912", ">= 0.5"), ("gate", "PASS", "")]
    assert render_table(None, rows, align="lrl", gap=2).splitlines() == [
        "pseudo-mAP@0.5  0.912  >= 0.5",
        "gate             PASS",  # a line never ends in spaces
    ]
    assert render_table(("stage", "p50 ms"), [("e2e", "1.00")], min_widths=(12, 8), rule=True).splitlines() == [
        "stage          p50 ms",
        "---------------------",
        "e2e              1.00",
    ]
    assert render_table(None, [("a", "1"), ("bb", "22")], min_widths=(4, 3)).splitlines() == ["a      1", "bb    22"]
    assert render_table(("a", "b"), []) == "a b"
    with pytest.raises(ValueError, match="align 'lx'"):
        render_table(("a", "b"), [("1", "2")], align="lx")
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        render_table(("a", "b"), [("1",)])
