"""Batches across streams with several inference calls in flight, handed on in order.

The inference stage (:class:`~pipeline.stages.InferenceStage`) runs ``workers`` threads. Each
takes a batch from the streams' queues (a :class:`~pipeline.queues.QueueGroup`, round-robin),
runs it, and hands it on. :class:`InOrderBatches` is what keeps that correct while calls overlap
and finish in any order.

Invariants (tested with random call times and failures in ``tests/test_batching.py``):

1. **Taken and numbered as one step.** A batch is taken from the queues and given its number
   under one lock (:attr:`InOrderBatches.take_lock`), so numbers follow the order batches were
   taken, from 0, with no gap. Each queue is FIFO, so a stream's frames are taken in order, and
   any frame of batch ``n`` of a stream precedes all of that stream's frames in batch ``n + 1``.
2. **Handed on in number order.** A batch finished ahead of its turn waits (in ``_done``); its
   worker goes on to the next batch. The batch whose turn it is is handed on together with every
   later one already finished, under a second lock (``_turn``), so exactly one thread hands on at
   a time and a stream's frames leave in the order they were read: none twice, none skipped.
3. **An end of stream follows its batch's frames.** An end-of-stream sentinel taken with frames
   leaves after them (the hand-on callback's order), so it is the last item of its stream.
4. **A failure stops the hand-on.** The first failure is kept (:meth:`fail`); from then on no
   batch is handed on and every worker stops taking. The batches taken but not handed on are
   :meth:`unhanded`: the stage ends every stream with the error, and the run counts their frames
   as dropped (``error``), so a source's ``frames_in == frames_out + drops`` still holds.

Without a failure every batch taken is handed on exactly once (2), so no frame is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pipeline.queues import QueueGroup


class InOrderBatches:
    """Numbers batches as they are taken and hands them on in that order (see the module doc)."""

    def __init__(self, group: QueueGroup, hand_on: Callable[[list[Any]], None]) -> None:
        self.group = group
        self.hand_on = hand_on  # called with each batch's items, in number order, one thread at a time
        self.take_lock = threading.Lock()  # held by the caller of take(): a batch is taken and numbered as one step
        self._turn = threading.Lock()  # batches are handed on in the order they were numbered
        self._taken = 0  # number of the next batch taken
        self._handed = 0  # number of the next batch to hand on
        self._done: dict[int, list[Any]] = {}  # batches (frames and end-of-streams) run ahead of their turn
        self.failure: BaseException | None = None  # the first worker's error: every worker stops

    def take(self, limit: int, wait_s: float, stop: threading.Event,
             accept: Callable[[Any], bool] | None = None) -> tuple[int, list[Any]] | None:
        """The next batch and its number, or None when nothing came. The caller holds
        :attr:`take_lock` (so it can decide ``limit`` in the same step)."""
        items = self.group.take(limit, wait_s, stop, accept=accept)
        if not items:
            return None
        number = self._taken
        self._taken += 1
        return number, items

    def finish(self, number: int, items: list[Any]) -> None:
        """Batch ``number`` has run: hand it on if it is its turn, with every later one already done."""
        with self._turn:  # a batch done ahead of its turn waits here; its worker goes on
            self._done[number] = items
            while self._handed in self._done and self.failure is None:
                self.hand_on(self._done.pop(self._handed))
                self._handed += 1

    def fail(self, exc: BaseException) -> None:
        """Keep the first failure: nothing more is handed on."""
        with self._turn:
            if self.failure is None:
                self.failure = exc

    @property
    def handed(self) -> int:
        """Batches handed on so far."""
        return self._handed

    def unhanded(self) -> list[list[Any]]:
        """Batches finished but never handed on (after a failure), in number order."""
        with self._turn:
            return [self._done[n] for n in sorted(self._done)]


__all__ = ["InOrderBatches"]
