"""The drop policy (pipeline.policy): per-stream queue policy and sizes, budgets, the late check."""

from __future__ import annotations

import time

import pytest

from pipeline.policy import LatencyBudget, SideBySide
from tests.conftest import tiny_frame as frame


@pytest.mark.parametrize("age_ms, estimate_ms, late", [(10, 20, False), (90, 20, True), (150, 0, True), (50, 40, False)])
def test_latency_budget_decision(age_ms, estimate_ms, late):
    budget = LatencyBudget({"cam": 100.0}, probe_s=10)
    budget.observe("inference", estimate_ms)
    now = time.monotonic_ns()
    f = frame("cam", 0, captured_ns=now - int(age_ms * 1e6))
    budget._last_pass[("cam", "preprocess")] = now  # a frame passed just now: no probe due
    assert budget.late(f, "preprocess", now) is late


def test_latency_budget_probes_past_a_stale_estimate():
    budget = LatencyBudget({"cam": 100.0}, probe_s=0.2)
    budget.observe("inference", 500)  # a stale, hopeless estimate
    now = time.monotonic_ns()
    assert budget.late(frame("cam", 0, now), "preprocess", now) is False  # first frame probes
    assert budget.late(frame("cam", 1, now), "preprocess", now + 1000) is True
    later = now + int(0.3e9)
    assert budget.late(frame("cam", 2, later), "preprocess", later) is False  # probe again after probe_s
    assert budget.late(frame("cam", 3, later - int(0.2e9)), "sink", later) is True  # the sink checks real age


@pytest.mark.parametrize("live, source_keys, pipeline_keys, expected", [
    # (queue policy, queue size, inference queue size, budget)
    (False, {}, {}, ("block", 8, 8, None)),  # a file: backpressure, every frame
    (False, {}, {"latency_budget_ms": 300}, ("block", 8, 8, None)),  # the pipeline budget is for live sources
    (False, {"latency_budget_ms": 250}, {}, ("block", 8, 8, 250)),  # a file's own budget holds
    (True, {}, {"latency_budget_ms": 300}, ("drop_oldest", 1, 4, 300)),  # live: newest wins; max_batch wait
    (True, {"latency_budget_ms": 120}, {"latency_budget_ms": 300}, ("drop_oldest", 1, 4, 120)),
    (True, {"queue_policy": "block"}, {"queue_size": 3}, ("block", 3, 3, None)),  # an explicit policy wins
    (False, {"queue_policy": "drop_oldest"}, {}, ("drop_oldest", 1, 4, None)),
])
def test_stream_policy_for_source(live, source_keys, pipeline_keys, expected):
    from pipeline.config import build_config
    from pipeline.policy import StreamPolicy

    cfg = build_config({"sources": [{"uri": "x.mp4", **source_keys}], "pipeline": pipeline_keys,
                        "backend": {"max_batch": 4}})
    p = StreamPolicy.for_source("x", live, cfg.sources[0], cfg.pipeline, cfg.backend.max_batch)
    assert (p.queue_policy, p.queue_size, p.inference_queue_size, p.budget_ms) == expected
    assert p.drops_allowed == (expected[0] == "drop_oldest") and p.live is live
    assert p.weight == 1.0 and p.preprocess_at_take is False  # on_cpu not given: a stream's own thread
    on_cpu = StreamPolicy.for_source("x", live, cfg.sources[0], cfg.pipeline, cfg.backend.max_batch, on_cpu=True)
    assert on_cpu.preprocess_at_take is (expected[0] == "drop_oldest")  # a stream that blocks keeps its thread


def test_weight_reaches_the_stream_policy():
    from pipeline.config import build_config
    from pipeline.policy import StreamPolicy

    cfg = build_config({"sources": [{"uri": "rtsp://cam/1", "weight": 0.25}]})
    assert StreamPolicy.for_source("c", True, cfg.sources[0], cfg.pipeline, 1).weight == 0.25


def test_budget_stages_are_the_processing_stages_in_path_order():
    from pipeline.policy import BUDGET_STAGES

    assert BUDGET_STAGES == ("preprocess", "inference", "postprocess", "sink")


def test_tightest_budget_and_effective_max_batch():
    from pipeline.policy import effective_max_batch

    assert LatencyBudget({"a": None, "b": 300.0, "c": 120.0}).tightest_ms == 120.0
    assert LatencyBudget({"a": None}).tightest_ms is None
    assert [effective_max_batch(r, b) for r, b in ((4, 8), (8, 1), (0, 4))] == [4, 1, 1]


def test_paced_file_skips_only_past_one_period():
    from pipeline.policy import paced_frame_missed

    assert not paced_frame_missed(now_ns=1_040, due_ns=1_000, period_ns=40)  # one period late: still shown
    assert paced_frame_missed(now_ns=1_041, due_ns=1_000, period_ns=40)
    assert not paced_frame_missed(now_ns=900, due_ns=1_000, period_ns=40)  # early: waits


def test_skipped_frames_count_in_and_as_late_at_capture():
    from pipeline.metrics import Metrics
    from pipeline.policy import count_skipped

    m = Metrics()
    count_skipped(m, "cam", 3)
    st = m.sources["cam"]
    assert st.frames_in == 3 and st.drops == {"late@capture": 3}


def _feed(side: SideBySide, windows: list[tuple[int, int, tuple[int, float], tuple[int, float]]]) -> list[bool]:
    """Drive ``side`` through half-second windows of (offered, lost, one-at-a-time (frames, busy s),
    side-by-side (frames, busy s)), each as counts within the window; its decision after each."""
    totals = [0, 0, [0, 0.0], [0, 0.0]]
    side.update(0.0, 0, 0, (0, 0.0), (0, 0.0))
    decisions = []
    for k, (offered, lost, one, two) in enumerate(windows, 1):
        totals[0] += offered
        totals[1] += lost
        for t, w in ((totals[2], one), (totals[3], two)):
            t[0] += w[0]
            t[1] += w[1]
        decisions.append(side.update(0.5 * k, totals[0], totals[1], tuple(totals[2]), tuple(totals[3])))
    return decisions


def test_side_by_side_goes_on_when_inference_loses_frames_and_back_when_one_call_keeps_up():
    side = SideBySide(workers=2)
    decisions = _feed(side, [
        (12, 0, (12, 0.3), (0, 0.0)),    # 24 fps offered, one call at a time delivers 40/s: keeps up
        (24, 2, (22, 0.6), (0, 0.0)),    # two losses: fewer than 3 over the horizon, stays
        (24, 9, (15, 0.5), (0, 0.0)),    # 48 fps offered, 9 lost: side by side
        (24, 4, (0, 0.0), (20, 0.9)),    # side by side: 2 x 22/s = 44 > 30/s: stays
        (20, 0, (0, 0.0), (20, 0.9)),    # 40/s offered >= 0.8 x 30/s: stays
        (10, 0, (0, 0.0), (10, 0.5)),    # 20/s offered < 0.8 x 30/s: back to one call
    ])
    assert decisions == [False, False, True, True, True, False]
    assert side.switches == 2 and side.offered_fps == 20.0


def test_side_by_side_gives_up_where_it_delivers_no_more_and_tries_again_later():
    """On a machine where calls side by side are no faster, it goes back after four measured
    windows of them (never on one: the first overlaps the switch), and stays back until the
    verdict is ``retry_s`` old (a noisy neighbour may have spoiled that measurement)."""
    side = SideBySide(workers=2, retry_s=2.0)
    losing = (24, 9, (15, 0.5), (0, 0.0))
    slow_side = (24, 9, (0, 0.0), (10, 0.8))  # 2 x 12.5/s = 25 < 0.9 x 30/s one at a time
    decisions = _feed(side, [losing] + [slow_side] * 5 + [losing] * 6)
    assert decisions[:5] == [True] * 5  # on; the first side window is not measured, then 4 are
    assert decisions[5] is False  # judged: no faster, back
    assert decisions[6:10] == [False] * 4  # losing again, but side by side is known to be no faster
    assert decisions[-1] is True  # the verdict is over 2 s old: tried again


def test_a_slight_overload_goes_side_by_side_within_the_horizon_and_1x_stalls_do_not():
    """Losing one frame in 24 each half second (4 %) would go on for ever; three such windows
    are enough. One frame lost now and then, as a stalled call at 1x loses, never is."""
    slight = _feed(SideBySide(workers=2), [(24, 1, (23, 0.6), (0, 0.0))] * 4)
    assert slight == [False, False, True, True]
    stalls = _feed(SideBySide(workers=2), ([(12, 1, (11, 0.3), (0, 0.0))] + [(12, 0, (12, 0.3), (0, 0.0))] * 8) * 3)
    assert not any(stalls)
