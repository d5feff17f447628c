"""The invariants of pipeline/batching.py, as properties over random call times and failures.

The inference stage runs 1 to 3 workers over 1 to 3 streams, with random batch limits and
timeouts, a backend whose calls take a random time and, in some runs, fail at a random call.
Whatever the interleaving (fixed seeds: plain ``random``), every stream's frames leave in order,
none twice, each with its own result; without a failure none is lost; with one, every stream
still open ends with the error and each frame read is accounted for: delivered, dropped, or
never handed on.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from pipeline.batching import InOrderBatches
from pipeline.frame import Frame
from pipeline.queues import EndOfStream, FrameQueue, QueueGroup
from pipeline.stages import InferenceStage
from tests.conftest import stage_ctx, tiny_frame


class RandomBackend:
    """Each call sleeps a random 0-4 ms (seeded); call ``fail_at`` raises. Output: each frame's seq."""

    name = "random"
    max_batch = 8

    def __init__(self, seed: int, fail_at: int | None) -> None:
        self.rng = random.Random(seed)
        self.fail_at = fail_at
        self.calls = 0
        self.lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            self.calls += 1
            call, delay = self.calls, self.rng.random() * 0.004
        if call == self.fail_at:
            raise RuntimeError("device lost")
        time.sleep(delay)
        return [batch.reshape(len(batch), -1)[:, :1].copy()]

    def close(self) -> None:
        pass


def _drain(out: FrameQueue, streams: int, timeout: float = 30) -> list:
    items, ended = [], 0
    deadline = time.monotonic() + timeout
    while ended < streams:
        assert time.monotonic() < deadline, "the stage never ended every stream"
        item = out.get(timeout=0.2)
        if item is not None:
            items.append(item)
            ended += isinstance(item, EndOfStream)
    return items


@pytest.mark.parametrize("seed", range(40))
def test_frames_leave_in_order_none_twice_none_lost(seed, no_thread_leak):
    rng = random.Random(seed)
    sids = [f"s{i}" for i in range(rng.randint(1, 3))]
    counts = {sid: rng.randint(0, 30) for sid in sids}
    fail_at = rng.choice([None, None, rng.randint(1, 12)])
    backend = RandomBackend(seed, fail_at)
    ctx = stage_ctx()
    group = QueueGroup()
    queues = {sid: group.add(sid, "inference", 256, "block", None) for sid in sids}
    out = FrameQueue("post", 1024, "block")
    stage = InferenceStage(ctx, backend, group, out, sids, max_batch=rng.randint(1, 4),
                           batch_timeout_ms=rng.choice([0, 1, 5]), workers=rng.randint(1, 3))
    stage.start()

    def produce(sid: str, seed: int) -> None:  # each stream at its own random pace
        pace = random.Random(seed)
        for seq in range(counts[sid]):
            queues[sid].put(tiny_frame(sid, seq))
            if pace.random() < 0.3:
                time.sleep(pace.random() * 0.003)
        queues[sid].put(EndOfStream(sid))

    producers = [threading.Thread(target=produce, args=(sid, seed * 10 + i)) for i, sid in enumerate(sids)]
    for p in producers:
        p.start()
    items = _drain(out, len(sids))
    for p in producers:
        p.join(10)
    stage.join(10)
    assert not stage.is_alive()

    failed = stage.batches.failure is not None
    for sid in sids:
        mine = [i for i in items if (i.source_id if isinstance(i, EndOfStream) else i.source_id) == sid]
        assert isinstance(mine[-1], EndOfStream) and sum(isinstance(i, EndOfStream) for i in mine) == 1, sid
        seqs = [f.seq for f in mine[:-1]]
        assert seqs == sorted(set(seqs)), (sid, seqs)  # in order, none twice
        assert all(float(f.outputs[0][0, 0]) == f.seq for f in mine[:-1])  # each frame its own result
        if mine[-1].error is None:  # ended normally (before any failure, or with none)
            assert seqs == list(range(counts[sid])), (sid, seqs)  # none lost
        else:
            assert failed and "device lost" in mine[-1].error
    if failed:  # every frame read is delivered, dropped by the failing call, never handed on, or unread
        delivered = sum(isinstance(i, Frame) for i in items)
        dropped = sum(st.drops.get("error@inference", 0) for st in ctx.metrics.sources.values())
        unhanded = sum(isinstance(i, Frame) for batch in stage.batches.unhanded() for i in batch)
        unread = sum(isinstance(i, Frame) for q in queues.values() for i in list(q._items))
        assert delivered + dropped + unhanded + unread == sum(counts.values())
        assert ctx.errors and "device lost" in ctx.errors[0][1]


@pytest.mark.parametrize("seed", range(10))
def test_batches_finished_in_any_order_are_handed_on_in_number_order(seed):
    """InOrderBatches alone: batches taken by one thread, finished by several in a random order."""
    rng = random.Random(seed)
    group = QueueGroup()
    q = group.add("a", "inference", 512, "block", None)
    n = rng.randint(1, 200)
    for seq in range(n):
        q.put(seq)
    handed: list[list[int]] = []
    batches = InOrderBatches(group, handed.append)
    taken = []
    stop = threading.Event()
    while sum(len(items) for _, items in taken) < n:
        with batches.take_lock:
            got = batches.take(rng.randint(1, 5), 0.0, stop)
        assert got is not None
        taken.append(got)
    assert [number for number, _ in taken] == list(range(len(taken)))  # numbered in take order, no gap
    rng.shuffle(taken)
    workers = [threading.Thread(target=lambda part=taken[k::3]: [batches.finish(*b) for b in part]) for k in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert [seq for items in handed for seq in items] == list(range(n)) and batches.handed == len(taken)
    assert batches.unhanded() == []
