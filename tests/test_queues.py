"""Queues, policies, the batcher and failure propagation, with real threads and a fake backend.

A fake backend is fine here: these tests sequence threads; end-to-end tests use the real model.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.backends.base import TensorInfo
from pipeline.frame import Frame
from pipeline.metrics import Metrics
from pipeline.queues import EndOfStream, FrameQueue, QueueGroup
from pipeline.stages import InferenceStage, LatencyBudget, StageContext


def frame(sid: str, seq: int, captured_ns: int | None = None) -> Frame:
    f = Frame(sid, seq, seq / 10, captured_ns or time.monotonic_ns(), np.zeros((4, 4, 3), np.uint8))
    f.tensor = np.full((3, 2, 2), seq, np.float32)
    return f


def test_drop_oldest_keeps_newest_and_counts():
    dropped = []
    q = FrameQueue("inference", 2, "drop_oldest", on_drop=lambda item, why: dropped.append((item.seq, why)))
    for i in range(5):
        assert q.put(frame("a", i))
    assert [q.get(timeout=0).seq for _ in range(2)] == [3, 4]
    assert dropped == [(0, "queue_full@inference"), (1, "queue_full@inference"), (2, "queue_full@inference")]


def test_end_of_stream_is_never_dropped_nor_refused():
    q = FrameQueue("x", 1, "drop_oldest")
    q.put(frame("a", 0))
    q.put(EndOfStream("a"))
    q.put(frame("a", 1))  # evicts frame 0, not the sentinel
    items = [q.get(timeout=0), q.get(timeout=0)]
    assert isinstance(items[0], EndOfStream) and items[1].seq == 1


def test_block_waits_for_space_and_honours_stop():
    q = FrameQueue("x", 1, "block")
    q.put(frame("a", 0))
    stop = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(ok=q.put(frame("a", 1), stop)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # blocked: backpressure, nothing dropped
    assert q.get(timeout=1).seq == 0
    t.join(2)
    assert not t.is_alive() and result["ok"] and q.get(timeout=1).seq == 1
    q.put(frame("a", 2))
    t = threading.Thread(target=lambda: result.update(ok=q.put(frame("a", 3), stop)))
    t.start()
    stop.set()
    t.join(2)
    assert not t.is_alive() and result["ok"] is False


def test_group_round_robin_is_fair():
    group = QueueGroup()
    qs = {sid: group.add(sid, "inference", 10, "block", None) for sid in "abc"}
    for i in range(6):
        qs["a"].put(frame("a", i))
    qs["b"].put(frame("b", 0))
    qs["c"].put(frame("c", 0))
    batch = group.take(3, 0.0, threading.Event())
    assert sorted(f.source_id for f in batch) == ["a", "b", "c"]  # one per stream, not three from "a"


def test_batch_waits_at_most_the_timeout():
    group = QueueGroup()
    q = group.add("a", "inference", 10, "block", None)
    group.add("dead", "inference", 10, "block", None)  # a stream that never delivers
    q.put(frame("a", 0))
    t0 = time.monotonic()
    batch = group.take(8, 0.05, threading.Event())
    elapsed = time.monotonic() - t0
    assert len(batch) == 1 and 0.04 <= elapsed < 0.5


class FakeBackend:
    """Sequencing only: returns the input mean per item, optionally slow or failing."""

    name = "fake"
    inputs = [TensorInfo("images", ("batch", 3, 2, 2), np.dtype(np.float32))]
    outputs = [TensorInfo("out", ("batch", 1), np.dtype(np.float32))]
    max_batch = 8

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.delay, self.fail_at, self.calls, self.sizes = delay, fail_at, 0, []

    def infer(self, batch):
        self.calls += 1
        self.sizes.append(len(batch))
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("device lost")
        time.sleep(self.delay)
        return [batch.reshape(len(batch), -1).mean(1, keepdims=True)]

    def close(self):
        pass


def _ctx(budgets=None):
    return StageContext(Metrics(), LatencyBudget(budgets or {}), threading.Event(), threading.Event(), [],
                        threading.Lock())


def _drain(q: FrameQueue, until_eos: int, timeout: float = 10) -> list:
    items, eos = [], 0
    deadline = time.monotonic() + timeout
    while eos < until_eos and time.monotonic() < deadline:
        item = q.get(timeout=0.2)
        if item is None:
            continue
        items.append(item)
        eos += isinstance(item, EndOfStream)
    return items


def test_inference_routes_results_in_order_per_stream():
    ctx = _ctx()
    group = QueueGroup()
    qs = {sid: group.add(sid, "inference", 64, "block", None) for sid in ("a", "b")}
    out = FrameQueue("post", 128, "block")
    backend = FakeBackend()
    stage = InferenceStage(ctx, backend, group, out, ["a", "b"], max_batch=4, batch_timeout_ms=5)
    stage.start()
    for i in range(20):
        qs["a"].put(frame("a", i))
        if i < 10:
            qs["b"].put(frame("b", i))
    qs["a"].put(EndOfStream("a"))
    qs["b"].put(EndOfStream("b"))
    items = _drain(out, 2)
    stage.join(5)
    assert not stage.is_alive()
    frames = [i for i in items if isinstance(i, Frame)]
    for sid, n in (("a", 20), ("b", 10)):
        mine = [f for f in frames if f.source_id == sid]
        assert [f.seq for f in mine] == list(range(n))
        assert all(float(f.outputs[0][0, 0]) == f.seq for f in mine)  # each result went to its own frame
    assert max(backend.sizes) > 1


def test_failing_backend_reports_and_ends_every_stream():
    ctx = _ctx()
    group = QueueGroup()
    qs = {sid: group.add(sid, "inference", 64, "block", None) for sid in ("a", "b")}
    out = FrameQueue("post", 128, "block")
    stage = InferenceStage(ctx, FakeBackend(fail_at=3), group, out, ["a", "b"], max_batch=1, batch_timeout_ms=1)
    stage.start()
    for i in range(10):
        qs["a"].put(frame("a", i))
    items = _drain(out, 2)
    stage.join(5)
    assert not stage.is_alive()
    eos = [i for i in items if isinstance(i, EndOfStream)]
    assert sorted(e.source_id for e in eos) == ["a", "b"] and all("device lost" in e.error for e in eos)
    assert ctx.errors and "device lost" in ctx.errors[0][1]


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


def test_metrics_series_memory_is_bounded():
    from pipeline.metrics import Series

    s = Series(capacity=1000)
    for i in range(5000):
        s.add(i / 1e3, float(i))
    assert len(s) == 1000 and s.count == 5000 and s._values.nbytes == 4000
    np.testing.assert_allclose(s.values(), np.arange(4000, 5000) / 1e3, rtol=1e-6)  # the most recent, in order
    assert s.values(since=4990).size == 10
