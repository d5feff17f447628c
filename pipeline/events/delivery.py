"""One target's delivery thread behind a bounded queue: retries with backoff, drops counted.

:class:`Delivery` owns the queue, the thread, the backoff and the counts; a transport
(:mod:`.mqtt`, :mod:`.webhook`) says how one message is sent (:meth:`Delivery.send`).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

from pipeline.errors import ConfigError
from pipeline.sources.base import redact_text, redact_uri

if TYPE_CHECKING:
    from pipeline.config import EventSinkConfig
    from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

DROP_EVENT = "events_dropped"  # Metrics.count(source, "events_dropped:<sink>:<reason>")
SENT_EVENT = "events_sent"  # Metrics.count(source, "events_sent:<sink>")


def target_url(cfg: EventSinkConfig, label: str, schemes: tuple[str, str]) -> SplitResult:
    """``cfg.url`` split, once its scheme fits the target's type and it names a host."""
    url = urlsplit(cfg.url)
    if url.scheme not in schemes:
        raise ConfigError(f"output.events ({label}): type {cfg.type} needs a {' or '.join(s + '://' for s in schemes)} "
                          f"URL, got {url.scheme}://")
    if not url.hostname:
        raise ConfigError(f"output.events ({label}): the URL names no host")
    return url


class Rejected(Exception):
    """The receiver refused the message for good (an HTTP 4xx): it is dropped, not retried."""


class Delivery:
    """Sends one source's messages to one target from a thread of its own.

    ``offer`` (the sink thread) appends to the queue and returns at once; when ``queue_size``
    messages already wait, the oldest is dropped (reason ``queue_full``). The thread takes the
    head of the queue and sends it until it is delivered; after each failure it waits (``initial_backoff_s``, doubled per
    failure up to ``max_backoff_s``, +/-20 % jitter) before trying again. ``close`` lets it
    deliver for at most ``drain_s``; what is left is dropped (``shutdown``). The end runs in the
    delivery thread: :meth:`begin_close` starts it and returns, :meth:`close` also waits for it.

    Counts: ``sent``, ``dropped`` (by reason), mirrored into the run's metrics as
    ``events_sent:<sink>`` and ``events_dropped:<sink>:<reason>``."""

    kind = "delivery"

    def __init__(self, cfg: EventSinkConfig, label: str, source_id: str, metrics: Metrics | None) -> None:
        self.cfg = cfg
        self.label = label
        self.source_id = source_id
        self.metrics = metrics
        self.where = redact_uri(cfg.url)  # the only form of the URL that is ever logged
        self.sent = 0
        self.dropped: Counter[str] = Counter()
        self._queue: deque[dict] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = 0.0
        self._failing = False
        self._woken = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"inferpath-events-{label}-{source_id}", daemon=True)
        self._thread.start()

    # ---- the sink thread ------------------------------------------------------------------------
    def offer(self, msg: dict) -> None:
        """Queue ``msg`` (never blocks; the oldest waiting message is dropped when full)."""
        with self._cond:
            if self._closing:
                self._drop("shutdown")
                return
            if len(self._queue) >= self.cfg.queue_size:
                self._queue.popleft()
                self._drop("queue_full")
            self._queue.append(msg)
            self._cond.notify()

    def begin_close(self, drain_s: float | None = None) -> None:
        """Start the end: deliver what is queued for at most ``drain_s`` (default ``cfg.drain_s``),
        then drop the rest (counted) and disconnect, all in the delivery thread; returns at once."""
        deadline = time.monotonic() + (self.cfg.drain_s if drain_s is None else drain_s)
        with self._cond:
            self._deadline = min(self._deadline, deadline) if self._closing else deadline  # a later call may cut it
            self._closing = True
            self._cond.notify_all()
        self._woken.set()

    def close(self, drain_s: float | None = None) -> None:
        """:meth:`begin_close` (the earlier deadline wins), then wait for the delivery thread."""
        self.begin_close(drain_s)
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + self.cfg.timeout_s + 2.0)
        if self._thread.is_alive():
            log.warning("events %s (%s): delivery thread still busy at the end", self.label, self.where)

    # ---- the delivery thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._deliver()
        finally:
            try:
                self.close_transport()
            except Exception as exc:
                log.debug("events %s: disconnecting: %s", self.label, redact_text(str(exc)))
            with self._cond:
                left = len(self._queue)
                self._queue.clear()
            if left:
                self._drop("shutdown", left)
            drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
            log.info("events %s (%s) %s: %d sent%s", self.label, self.where, self.source_id, self.sent,
                     f", dropped {drops}" if drops else "")

    def _deliver(self) -> None:
        backoff = self.cfg.initial_backoff_s
        try:
            self.open_transport()
        except Exception as exc:  # reported; the queue still fills and drops, counted
            self._report_failure(f"cannot start: {exc}")
        msg: dict | None = None  # the message being sent: out of the queue, retried until delivered
        while True:
            if msg is None:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait(1.0)
                    if not self._queue:
                        return
                    msg = self._queue.popleft()
            if self._closing and time.monotonic() >= self._deadline:
                self._drop("shutdown")
                return
            try:
                ok = self.send(msg, json.dumps(msg, separators=(",", ":")).encode())
            except Rejected as exc:
                self._drop("rejected")
                log.warning("events %s (%s): message %s refused: %s (dropped)", self.label, self.where,
                            msg.get("id"), redact_text(str(exc)))
                msg = None
                continue
            except Exception as exc:  # a bug in a transport must not end the thread
                ok = False
                self._report_failure(f"{type(exc).__name__}: {exc}")
            if ok:
                msg = None
                self.sent += 1
                self._count(f"{SENT_EVENT}:{self.label}")
                if self._failing:
                    self._failing = False
                    log.info("events %s (%s): delivering again", self.label, self.where)
                backoff = self.cfg.initial_backoff_s
                continue
            wait_s = backoff * random.uniform(0.8, 1.2)
            if self._closing:  # draining: the backoff still holds, up to the drain's deadline
                time.sleep(min(wait_s, max(0.0, self._deadline - time.monotonic())))
            else:
                self._woken.wait(wait_s)  # close() cuts the wait short
            backoff = min(backoff * 2, self.cfg.max_backoff_s)

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n
        self._count(f"{DROP_EVENT}:{self.label}:{reason}", n)

    def _count(self, event: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.count(self.source_id, event, n)

    def _report_failure(self, why: str) -> None:
        """Log the first failure of a run of failures (redacted); the rest are retried quietly."""
        if not self._failing:
            self._failing = True
            log.warning("events %s (%s): %s; retrying with backoff (queue %d of %d)", self.label, self.where,
                        redact_text(why), len(self._queue), self.cfg.queue_size)

    # ---- what a transport provides --------------------------------------------------------------
    def open_transport(self) -> None:
        """Delivery thread, once, before the first message (connect, or nothing)."""

    def send(self, msg: dict, payload: bytes) -> bool:
        """Delivery thread: send one message; True when delivered, False to retry it after the
        backoff (call :meth:`_report_failure` to say why); raise :class:`Rejected` to drop it."""
        raise NotImplementedError

    def close_transport(self) -> None:
        """Delivery thread, at its end: disconnect."""
