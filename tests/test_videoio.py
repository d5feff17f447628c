"""Opening and sampling videos (pipeline.videoio) on the real clips in sample_videos/."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.errors import SourceError
from pipeline.videoio import count_frames, open_video, opened_video, probe_video, sample_frames, video_info
from tests.conftest import MEGAMIND, TREE, VTEST


@pytest.mark.parametrize("path,info,decoded", [
    (VTEST, (10.0, 768, 576, 795), 795),
    (MEGAMIND, (23.976, 720, 528, 270), 270),
    (TREE, (15.0, 320, 240, 444), 68),  # truncated: the header claims the whole clip
])
def test_header_and_decodable_count(path, info, decoded):
    got = probe_video(path)
    assert (round(got.fps, 3), got.width, got.height, got.claimed_frames) == info
    assert count_frames(path) == decoded


def test_sampled_frames_are_the_frames_at_those_indices():
    wanted = [0, 3, 10, 11]
    with opened_video(VTEST) as cap:
        got = list(sample_frames(cap, [11, 3, 0, 10, 3]))  # any order, duplicates: each once, in order
    assert [i for i, _ in got] == wanted
    reference = []
    cap = cv2.VideoCapture(str(VTEST))
    for _ in range(12):
        ok, frame = cap.read()
        assert ok
        reference.append(frame)
    cap.release()
    for i, frame in got:
        assert frame.shape == (576, 768, 3) and np.array_equal(frame, reference[i])


def test_sampling_stops_where_a_truncated_file_stops_decoding():
    with opened_video(TREE) as cap:
        got = [i for i, _ in sample_frames(cap, [5, 67, 68, 300])]
    assert got == [5, 67]


def test_every_frame_when_no_indices():
    with opened_video(TREE) as cap:
        assert [i for i, _ in sample_frames(cap)] == list(range(68))


def test_no_indices_wanted_decodes_nothing():
    with opened_video(VTEST) as cap:
        assert list(sample_frames(cap, [])) == []
        assert video_info(cap).claimed_frames == 795


@pytest.mark.parametrize("make,needle", [
    (lambda d: d / "missing.avi", "video file not found"),
    (lambda d: d, "a directory, not a video; to run on the files in it give a glob: --source '"),
    (lambda d: (d / "garbage.avi", (d / "garbage.avi").write_bytes(b"not a video at all" * 100))[0],
     "cannot open as a video"),
])
def test_unopenable_file_is_one_line_naming_it(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(SourceError) as info:
        open_video(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and needle in msg and "\n" not in msg
    assert probe_video(path) is None
