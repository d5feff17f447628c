"""Queues: the two full-queue policies, the sentinel, the round-robin group, with real threads."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.queues import EndOfStream, FrameQueue, QueueGroup
from tests.conftest import tiny_frame as frame


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


def _takes(group: QueueGroup, queues: dict, n: int, batch: int = 1) -> list[str]:
    """``n`` takes of ``batch`` from queues kept full (each refilled after every take): the streams taken."""
    stop, seq, out = threading.Event(), 0, []
    for _ in range(n):
        for sid, q in queues.items():
            while len(q) < q.maxsize:
                q.put(frame(sid, seq))
                seq += 1
        out += [f.source_id for f in group.take(batch, 0.0, stop)]
    return out


def _group(weights: dict[str, float], size: int = 4) -> tuple[QueueGroup, dict]:
    group = QueueGroup()
    return group, {sid: group.add(sid, "inference", size, "drop_oldest", None, weight=w) for sid, w in weights.items()}


def test_equal_weights_are_plain_round_robin():
    """Any equal weights take exactly what weight 1 takes: today's round-robin, batch by batch."""
    for batch in (1, 2, 3):
        ones, twos = _group(dict.fromkeys("abc", 1.0)), _group(dict.fromkeys("abc", 2.5))
        assert _takes(*ones, 30, batch) == _takes(*twos, 30, batch)
    assert _takes(*_group(dict.fromkeys("abc", 1.0)), 6) == list("abcabc")


@pytest.mark.parametrize("weights, batch", [({"a": 3, "b": 1}, 1), ({"a": 3, "b": 1}, 4),
                                            ({"a": 1, "b": 0.25, "c": 1, "d": 1}, 1), ({"a": 0.5, "b": 2, "c": 1}, 2)])
def test_weights_share_the_takes(weights, batch):
    """Queues that always have frames get weight / sum(weights) of the frames taken."""
    taken = _takes(*_group(weights, size=4), 140, batch)
    total = sum(weights.values())
    for sid, w in weights.items():
        assert abs(taken.count(sid) / len(taken) - w / total) <= 0.02, (sid, taken.count(sid), len(taken))


def test_an_idle_stream_banks_no_credit_and_a_lone_stream_takes_all():
    group, qs = _group({"a": 1.0, "b": 0.25})
    stop = threading.Event()
    for i in range(20):  # b alone: everything is b's (nothing idles for a's weight)
        qs["b"].put(frame("b", i))
        assert [f.source_id for f in group.take(1, 0.0, stop)] == ["b"]
    # a comes back: b's long run does not leave a 20 frames of credit, they share 4:1 from here
    taken = _takes(group, qs, 50)
    assert 36 <= taken.count("a") <= 44, taken


def test_weight_is_edited_live_and_leaves_with_its_stream():
    group, qs = _group({"a": 1.0, "b": 1.0})
    assert group.weight("b") == 1.0
    group.set_weight("b", 3.0)
    taken = _takes(group, qs, 80)
    assert 56 <= taken.count("b") <= 64, taken
    group.set_weight("b", 1.0)  # equal again: round-robin
    assert _takes(group, qs, 4) in (list("abab"), list("baba"))
    with pytest.raises(ValueError):
        group.set_weight("a", 0)
    with pytest.raises(KeyError):
        group.set_weight("zz", 1.0)
    qs["b"].put(EndOfStream("b"))
    group.retire("b")
    assert _takes(group, {"a": qs["a"]}, 3) == ["a", "a", "a"]


def test_batch_waits_at_most_the_timeout():
    group = QueueGroup()
    q = group.add("a", "inference", 10, "block", None)
    group.add("dead", "inference", 10, "block", None)  # a stream that never delivers
    q.put(frame("a", 0))
    t0 = time.monotonic()
    batch = group.take(8, 0.05, threading.Event())
    elapsed = time.monotonic() - t0
    assert len(batch) == 1 and 0.04 <= elapsed < 0.5


def test_closed_group_wakes_a_waiting_taker_at_once(monkeypatch):
    """The last stream has ended (the inference stage closes its group): a worker waiting for a
    first item returns now, not at its next poll. POLL_S is made 60 s, so only the close can end
    the wait within the join below."""
    import pipeline.queues as queues

    monkeypatch.setattr(queues, "POLL_S", 60.0)
    group = QueueGroup()
    group.add("a", "inference", 4, "block", None)
    waiting, result = threading.Event(), {}

    def taker():
        waiting.set()
        result["batch"] = group.take(4, 0.0, threading.Event())

    t = threading.Thread(target=taker)
    t.start()
    assert waiting.wait(5)
    group.retire("a")
    group.close()
    t.join(10)
    assert not t.is_alive() and result["batch"] == []
    assert group.take(4, 0.0, threading.Event()) == []  # a taker that comes later does not wait either
