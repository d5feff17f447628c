"""Event clips (pipeline/events/clips.py): real runs of the counting config on vtest.avi."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

from pipeline.config import build_config
from pipeline.runtime import Pipeline
from tests.conftest import REPO, VTEST

PRE_S, POST_S = 2.0, 1.0


def vtest_frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VTEST))
    frames = []
    while len(frames) < n:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def source_index(picture: np.ndarray, frames: list[np.ndarray]) -> int:
    """Which frame of vtest.avi ``picture`` (a decoded clip frame, boxes drawn on it) shows: the
    closest by mean absolute difference over the pixels of the whole frame."""
    diffs = [float(np.mean(cv2.absdiff(picture, f))) for f in frames]
    return int(np.argmin(diffs))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """The counting config, 200 frames, clips of line events (pre 2 s, post 1 s) in at most 3 MB."""
    tmp = tmp_path_factory.mktemp("clips")
    raw = yaml.safe_load((REPO / "configs" / "counting.yaml").read_text())
    raw["sources"] = [{"uri": str(VTEST), "id": "vtest", "max_frames": 200}]
    raw["output"] = {"dir": str(tmp / "out"), "video": False,
                     "clips": {"pre_s": PRE_S, "post_s": POST_S, "on": ["line"], "max_total_mb": 3.0}}
    summary = Pipeline(build_config(raw)).run(progress=False)
    events = []
    for line in (tmp / "out" / "vtest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        events += [{**e, "seq": rec["seq"]} for e in rec.get("events", [])]
    return tmp / "out" / "clips", summary, events


def test_every_line_event_names_its_clip_and_zone_events_none(clip_run):
    root, summary, events = clip_run
    lines = [e for e in events if e["type"] == "line"]
    assert len(lines) >= 3
    assert all(Path(e["clip"]).parent == root / "vtest" for e in lines)
    opening = {}
    for e in lines:
        opening.setdefault(e["clip"], e)
    assert all(Path(clip).name.endswith(f"_line-walkway-{e['direction']}.mp4") for clip, e in opening.items())
    assert not [e for e in events if e["type"] == "zone" and "clip" in e]
    counts = summary.sources[0].events
    assert counts["clips_written"] == len({e["clip"] for e in lines})  # overlapping events share a clip


def test_clips_stay_in_their_budget_oldest_deleted_first(clip_run):
    root, summary, events = clip_run
    kept = sorted(root.rglob("*.mp4"))
    written = sorted({e["clip"] for e in events if e["type"] == "line"})
    assert sum(p.stat().st_size for p in kept) <= 3.0e6
    deleted = summary.sources[0].events.get("clips_deleted", 0)
    assert deleted >= 1 and len(kept) == len(written) - deleted
    assert [str(p) for p in kept] == written[deleted:]  # names sort by time: the oldest went first


def test_clips_decode_and_start_at_least_pre_s_before_their_event(clip_run):
    root, _, events = clip_run
    fps = 10.0  # vtest.avi
    frames = vtest_frames(200)
    first_event = {}
    for e in events:
        if e["type"] == "line":
            first_event.setdefault(e["clip"], e)
    checked = 0
    for clip, event in first_event.items():
        if not Path(clip).exists():
            continue  # deleted to keep the budget
        with av.open(clip) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (768, 576)
            pictures = [f.to_ndarray(format="bgr24") for f in c.decode(stream)]
        start = source_index(pictures[0], frames)
        assert start <= event["seq"] - PRE_S * fps, (clip, start, event["seq"])
        assert start >= event["seq"] - (PRE_S + 1.0) * fps - 1  # a key frame every second: at most 1 s more
        assert start + len(pictures) - 1 >= min(199, event["seq"] + POST_S * fps)  # and post_s after it
        checked += 1
    assert checked >= 2
