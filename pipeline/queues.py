"""Bounded queues between stages, the end-of-stream sentinel, and the two full-queue policies
they carry out (which stream gets which is :mod:`pipeline.policy`'s choice).

``block`` (batch jobs over files): a full queue makes the producer wait, so backpressure reaches
the reader and nothing is dropped. ``drop_oldest`` (live sources): a full queue evicts its oldest
frame, so the newest frame always wins; every eviction is counted with reason ``queue_full@<name>``.

Several queues may share one :class:`threading.Condition` (a :class:`QueueGroup`), so the
batcher can wait for "a frame on any stream" and take frames round-robin without polling. Each
queue of a group has a weight (``sources[].weight``): with equal weights the batcher takes them in
plain round-robin; otherwise by stride scheduling, so under contention a stream gets
``weight / sum(weights)`` of the frames taken.
Every blocking call has a timeout and re-checks a stop event: shutdown never hangs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.policy import Policy

POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The sentinel that follows a source's last frame through every stage, in order."""

    source_id: str
    error: str | None = None  # set when the stream ended because something failed


DropHook = Callable[[Any, str], None]  # (evicted item, reason)


class FrameQueue:
    """A bounded FIFO with a named full-queue policy. ``put``/``get`` honour a stop event."""

    def __init__(
        self,
        name: str,
        maxsize: int,
        policy: Policy = "block",
        on_drop: DropHook | None = None,
        cond: threading.Condition | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self.policy = policy
        self.on_drop = on_drop
        self._items: deque[Any] = deque()
        self._cond = cond or threading.Condition()
        self.arrived = 0  # frames ever put (evicted or not): the load offered to the consumer
        self.evicted = 0  # frames evicted by newer ones (drop_oldest)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, stop: threading.Event | None = None) -> bool:
        """Enqueue ``item``. Sentinels are never dropped and never refused for space.

        Returns False only if ``stop`` was set while waiting for space (policy ``block``).
        """
        evicted = None
        with self._cond:
            frame = not isinstance(item, EndOfStream)
            if frame:
                if self.policy == "drop_oldest":
                    if len(self._items) >= self.maxsize:
                        evicted = self._evict_oldest_frame()
                        self.evicted += evicted is not None
                else:
                    while len(self._items) >= self.maxsize:
                        if stop is not None and stop.is_set():
                            return False
                        self._cond.wait(POLL_S)
            self._items.append(item)
            self.arrived += frame
            self._cond.notify_all()
        if evicted is not None and self.on_drop is not None:
            self.on_drop(evicted, f"queue_full@{self.name}")
        return True

    def _evict_oldest_frame(self) -> Any:
        for i, queued in enumerate(self._items):
            if not isinstance(queued, EndOfStream):
                del self._items[i]
                return queued
        return None

    def get(self, stop: threading.Event | None = None, timeout: float | None = None) -> Any:
        """Dequeue the oldest item; None on timeout or when ``stop`` is set while empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if stop is not None and stop.is_set():
                    return None
                wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def peek(self) -> Any:
        """The oldest item without taking it (caller holds the shared condition); None when empty."""
        return self._items[0] if self._items else None

    def clear(self) -> None:
        """Discard everything waiting (the consumer has gone); a producer waiting for room goes on."""
        with self._cond:
            self._items.clear()
            self._cond.notify_all()

    def pop_nowait(self) -> Any:
        """Dequeue without waiting (caller holds the shared condition); None when empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        self._cond.notify_all()
        return item


class QueueGroup:
    """Per-stream queues sharing one condition: wait for any, take round-robin, by weight.

    With every weight equal, a take visits the queues in turn from a rotating start, at most one
    frame from each per pass (plain round-robin). With unequal weights it is stride scheduling
    (weighted fair queuing in virtual time): each queue has a pass value that grows by
    ``1 / weight`` per frame taken from it, and the next frame comes from the non-empty queue with
    the smallest pass (ties in round-robin order). A queue that was empty is lifted to the
    pass of the last frame taken when it fills again, so an idle stream banks no credit and a
    stream that joins gets no burst; a stream alone takes everything (nothing idles). So while
    every queue has frames waiting, each stream gets ``weight / sum(weights)`` of the frames.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: dict[str, FrameQueue] = {}
        self._order: list[str] = []
        self._next = 0
        self._retired = [0, 0]  # (arrived, evicted) of the queues retired: the totals never go back
        self.closed = False  # no stream will come any more: a taker waits for nothing (close)
        self._weights: dict[str, float] = {}
        self._pass: dict[str, float] = {}  # stride scheduling's virtual time per queue (unequal weights)
        self._vtime = 0.0  # the pass of the last frame taken
        self._equal = True  # every weight the same: plain round-robin

    def add(self, key: str, queue_name: str, maxsize: int, policy: Policy, on_drop: DropHook | None,
            weight: float = 1.0) -> FrameQueue:
        """A new stream's queue; safe while a batcher takes (a stream added at runtime)."""
        q = FrameQueue(queue_name, maxsize, policy, on_drop, cond=self.cond)
        with self.cond:
            if key in self.queues:
                raise ValueError(f"queue group: {key!r} is already there")
            self.queues[key] = q
            self._order.append(key)
            self._set_weight(key, weight)
            self.cond.notify_all()
        return q

    def close(self) -> None:
        """No stream will come any more (the last one's end-of-stream has been taken): every taker
        waiting for a first item returns now, rather than at its next poll."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def weight(self, key: str) -> float:
        """The stream's weight (its share of inference under contention, against the others')."""
        with self.cond:
            return self._weights[key]

    def set_weight(self, key: str, weight: float) -> None:
        """Change a stream's weight while a batcher takes (a live edit); from the next frame taken."""
        with self.cond:
            if key not in self.queues:
                raise KeyError(key)
            self._set_weight(key, weight)

    def _set_weight(self, key: str, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"queue group: weight must be > 0, got {weight!r}")
        self._weights[key] = float(weight)
        self._pass.setdefault(key, self._vtime)
        equal = len(set(self._weights.values())) <= 1
        if self._equal and not equal:  # round-robin kept no virtual time: start it afresh
            self._vtime = 0.0
            self._pass = dict.fromkeys(self._weights, 0.0)
        self._equal = equal

    def retire(self, key: str) -> FrameQueue | None:
        """Take an ended stream's queue out of the round-robin (its end-of-stream has been taken);
        what it counted stays in :attr:`arrived` and :attr:`evicted`."""
        with self.cond:
            q = self.queues.pop(key, None)
            if q is None:
                return None
            self._order.remove(key)
            self._weights.pop(key, None)
            self._pass.pop(key, None)
            self._equal = len(set(self._weights.values())) <= 1
            self._retired[0] += q.arrived
            self._retired[1] += q.evicted
            self._next = self._next % max(len(self._order), 1)
            return q

    def __iter__(self) -> Iterable[FrameQueue]:
        return iter(list(self.queues.values()))

    @property
    def arrived(self) -> int:
        """Frames ever put on any of the queues (retired ones included)."""
        return self._retired[0] + sum(q.arrived for q in list(self.queues.values()))

    @property
    def evicted(self) -> int:
        """Frames ever evicted from any of the queues by newer ones (retired ones included)."""
        return self._retired[1] + sum(q.evicted for q in list(self.queues.values()))

    def take(self, max_items: int, timeout_s: float, stop: threading.Event,
             accept: Callable[[Any], bool] | None = None) -> list[Any]:
        """Wait (up to POLL_S) for a first item on any queue, then gather up to ``max_items``
        across queues (round-robin, or by weight: see the class doc), waiting at most
        ``timeout_s`` after the first item (with ``timeout_s`` 0: what is waiting now, never more).

        Sentinels are returned alone-or-with-frames as they come; ``accept(item)`` may reject a
        frame (it is then not part of the batch: the callback has dealt with it, e.g. dropped it).
        """
        out: list[Any] = []
        with self.cond:
            deadline = None
            while True:
                room = max_items - len(out)
                took = self._round(room, out, accept) if self._equal else self._by_weight(room, out, accept)
                if len(out) >= max_items or any(isinstance(i, EndOfStream) for i in out):
                    break
                now = time.monotonic()
                if out and deadline is None:
                    deadline = now + timeout_s
                if stop.is_set() or self.closed:
                    break
                if deadline is not None:
                    remaining = deadline - now
                    if remaining <= 0:
                        if took:  # past the deadline, still take what is already waiting
                            continue
                        break
                    if not took:
                        self.cond.wait(remaining)
                elif not took:
                    if not self.cond.wait(POLL_S):
                        if not out:
                            break
        return out

    def _round(self, room: int, out: list[Any], accept: Callable[[Any], bool] | None) -> bool:
        """One round-robin pass: at most one item per queue. True if anything was taken."""
        took = False
        n = len(self._order)
        for k in range(n):
            if room <= 0:
                break
            key = self._order[(self._next + k) % n]
            item = self.queues[key].pop_nowait()
            if item is None:
                continue
            took = True
            if isinstance(item, EndOfStream) or accept is None or accept(item):
                out.append(item)
                room -= 1
        self._next = (self._next + 1) % max(n, 1)
        return took

    def _by_weight(self, room: int, out: list[Any], accept: Callable[[Any], bool] | None) -> bool:
        """Stride scheduling (unequal weights): up to ``room`` frames, each from the non-empty queue
        with the smallest pass, which then grows by ``1 / weight``; an end-of-stream ends the pass.
        A frame ``accept`` rejects costs its stream nothing. True if anything was taken."""
        took = False
        n = len(self._order)
        while room > 0:
            best, best_pass = None, 0.0
            for k in range(n):  # ties go in round-robin order from the rotating start
                key = self._order[(self._next + k) % n]
                if not self.queues[key]._items:
                    continue
                p = self._pass[key] = max(self._pass[key], self._vtime)  # an idle queue banks nothing
                if best is None or p < best_pass:
                    best, best_pass = key, p
            if best is None:
                break
            item = self.queues[best].pop_nowait()
            took = True
            if isinstance(item, EndOfStream):
                out.append(item)
                break
            if accept is None or accept(item):
                out.append(item)
                room -= 1
                self._vtime = best_pass
                self._pass[best] = best_pass + 1.0 / self._weights[best]
        self._next = (self._next + 1) % max(n, 1)
        return took
