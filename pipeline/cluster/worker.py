"""The Ray actor: one ``InferpathWorker`` per worker process runs today's :class:`~pipeline.runtime.Pipeline`
over the streams the driver assigned to it.

Decode, inference and annotation (the annotated video) all happen here, on the worker's node;
only results leave it. The pipeline's ``on_result`` consumer turns each delivered frame into a
small record (boxes, scores, classes, timings) and keeps it until the driver's next :meth:`poll`
takes it, so detections reach the driver in small batches. In a service (``inferpath serve`` on
Ray) the pipeline is a local service too: the driver adds, removes and edits streams here
(:meth:`add`, :meth:`remove`, :meth:`update`); the actor is threaded, so a ``poll`` runs while a
``remove`` waits for its stream's last frame. When records wait unread (the driver
is slow or gone), the consumer waits: a file's reader is held back and nothing is lost; a live
source keeps only its newest result (``slow_consumer``, see :mod:`pipeline.results`).

This module imports nothing of Ray: the driver wraps the class with ``ray.remote`` (so Ray
shows it as ``ray::InferpathWorker``), and a run without a cluster never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import UnknownStreamError
from pipeline.logs import log_to_stderr
from pipeline.queues import POLL_S

log = logging.getLogger("pipeline.cluster.worker")
WAITING_RECORDS = 512  # records kept for the driver before the consumer waits
LIVE_RESULTS = 8  # a live source's results the on_result buffer holds (small: no pixels)
POLL_WAIT_S = 0.25  # a poll with nothing to take waits this long for the next result
START_WAIT_S = 120.0  # a service call that comes while the pipeline starts waits this long for it


def result_record(result) -> dict:
    """What crosses the network for one frame (no pixels)."""
    det = result.detections
    return {"source": result.source, "seq": result.seq, "pts": result.pts, "latency_ms": result.latency_ms,
            "stages_ms": result.stages_ms, "batch": result.batch_size, "xyxy": det.xyxy,
            "confidence": det.confidence, "class_id": det.class_id, "tracker_id": det.tracker_id,
            "events": list(result.events)}


class InferpathWorker:
    """Runs one Pipeline over its streams; the driver calls :meth:`start` once, then :meth:`poll`."""

    def __init__(self, name: str, log_level: int = logging.INFO) -> None:
        self.name = name
        log_to_stderr(f"%(asctime)s %(levelname)-7s [{name}] %(message)s", log_level)
        self._records: deque[dict] = deque()
        self._cond = threading.Condition()
        self._pipe = None
        self._runner = None  # the on_result consumer (pipeline.results.CallbackRunner)
        self._thread: threading.Thread | None = None
        self._summary: list | None = None  # SourceSummary of each source, at the end
        self._batch_sizes: dict[int, int] = {}
        self._error: str | None = None
        self._finished = threading.Event()
        self._running = threading.Event()  # the pipeline runs (a service's streams may join) or has ended
        self._serving = False
        self._collected: dict[str, int] = {}  # records made per source (a removed stream's last is known)
        self._tap = None  # the live view's frames (pipeline.web.FrameTap), when the driver serves it

    def info(self, probe: str | None = None) -> dict:
        """Where this worker runs, and whether it sees the driver's probe file in ``output.dir``."""
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
                "sees_output": Path(probe).exists() if probe else None}

    def start(self, cfg: Config, serve: bool = False, view: dict | None = None) -> dict:
        """Build the pipeline over ``cfg.sources`` and run it in a thread; errors building it
        (model, backend) are raised to the driver. ``serve``: a service's share (it runs until
        stopped, streams join and leave). ``view``: the driver serves the live view
        (``{"max_fps", "jpeg_quality"}``): keep each stream's newest frame for the JPEGs
        :meth:`poll` is asked for. Returns the model and backend names."""
        from pipeline.runtime import Pipeline

        try:
            pipe = Pipeline(cfg, pixel_sinks_only=True, serve=serve)  # the driver writes the sinks that need no pixels
        except BaseException:
            self._finished.set()
            self._running.set()  # a service call waiting for it gives up
            raise
        if view is not None:
            from pipeline.web import FrameTap

            self._tap = FrameTap(tuple(pipe.names), view["max_fps"], view["jpeg_quality"])
            pipe.add_sink_factory(self._tap.sink_for)
        self._runner = pipe.on_result(self._collect, live_buffer=LIVE_RESULTS)
        self._pipe = pipe
        self._serving = serve
        self._thread = threading.Thread(target=self._run, name="inferpath-worker-run", daemon=True)
        self._thread.start()
        if serve:
            threading.Thread(target=self._until_running, name="inferpath-worker-up", daemon=True).start()
        else:
            self._running.set()
        return {"model": pipe.model_path.name, "backend": pipe.backend.name}

    def _until_running(self) -> None:
        engine = self._pipe.engine
        while not engine.running.wait(POLL_S) and not self._finished.is_set():
            pass
        self._running.set()

    def _service(self):
        """The running service pipeline (a call that comes while it starts waits for it)."""
        if not self._running.wait(START_WAIT_S) or self._finished.is_set():  # (start runs beside this call)
            raise RuntimeError(f"worker {self.name}: its pipeline is not running")
        if not self._serving:
            raise RuntimeError(f"worker {self.name}: not a service")
        return self._pipe

    def add(self, scfg) -> dict:
        """Start one stream (a ``SourceConfig`` under its part id) in the running service."""
        return self._service().add_source(scfg)

    def remove(self, part_id: str) -> dict:
        """Stop one stream; once its last frame has left this worker's sinks (its video closed and
        playable), its summary and the number of records made for the driver (all of them are
        queued for :meth:`poll` by then)."""
        summary = self._service().remove_source(part_id)
        if not self._runner.buffer.wait_taken(part_id, START_WAIT_S):  # its last results through _collect
            log.warning("stream %s: its last results were not taken in %g s", part_id, START_WAIT_S)
        with self._cond:
            collected = self._collected.pop(part_id, 0)
        if self._tap is not None:
            self._tap.forget(part_id)
        return {"summary": summary, "collected": collected}

    def update(self, partial: dict, check_only: bool = False) -> list[str]:
        """A live edit of the service (see :mod:`pipeline.runtime.live`); ``check_only``: validate
        it here (the lines against this worker's frames), apply nothing."""
        return self._service().update(partial, check_only=check_only)

    def _run(self) -> None:
        try:
            summary = self._pipe.run(progress=False)
            self._summary = list(summary.sources)
            self._batch_sizes = dict(summary.batch_sizes)
        except Exception as exc:  # reported to the driver; the worker itself stays up
            self._error = str(exc) or type(exc).__name__
            log.error("pipeline failed: %s", self._error)
        finally:
            self._finished.set()
            with self._cond:
                self._cond.notify_all()

    def _collect(self, result) -> None:
        record = result_record(result)
        record["collected_ns"] = time.monotonic_ns()
        with self._cond:
            while len(self._records) >= WAITING_RECORDS and not self._pipe.abort.is_set():
                self._cond.wait(POLL_S)
            self._records.append(record)
            self._collected[result.source] = self._collected.get(result.source, 0) + 1
            self._cond.notify_all()  # a waiting poll returns at once

    def poll(self, max_records: int = 256, wait_s: float = POLL_WAIT_S, want: list[str] | None = None) -> dict:
        """The records waiting (at most ``max_records``), each source's counters, and, once the
        pipeline has ended and every record was taken, ``done`` with its final summary. With
        nothing waiting it waits up to ``wait_s`` for a result (a long poll: the driver always
        has one in flight, so a result leaves as soon as it exists, and an idle worker costs
        four calls a second). ``want``: the streams someone watches in the driver's live view;
        ``jpegs`` has the newest frame of each, when one is due (:class:`pipeline.web.FrameTap`)."""
        due = bool(want) and self._tap is not None and self._tap.due(want)  # a watched stream's JPEG: answer now
        with self._cond:
            if not self._records and not self._finished.is_set() and not due:
                self._cond.wait(wait_s)
            # A service's stream (one with results, so registered there) whose end the results
            # consumer had taken before these records were: all its records are made, and it is
            # complete once none of them is left behind.
            ends = [sid for sid in self._collected if self._runner.buffer.taken(sid)] if self._serving else []
            n = min(max_records, len(self._records))
            records = [self._records.popleft() for _ in range(n)]
            now = time.monotonic_ns()
            for rec in records:  # sink to taken by the driver's poll, on this node's clock
                rec["delivery_ms"] = (now - rec.pop("collected_ns")) / 1e6
            left = len(self._records)
            behind = {rec["source"] for rec in self._records} if ends else set()
            complete = {sid for sid in ends if sid not in behind}
            self._cond.notify_all()
        pipe = self._pipe
        stats = {}
        if pipe is not None:
            sources = [s.source for s in list(pipe.engine.streams.values())] if self._serving else pipe.sources
            fps = {src.id: float(src.fps or 0.0) for src in sources}
            for sid in pipe.metrics.source_ids():
                st = pipe.metrics.snapshot(sid)
                stats[sid] = {"frames_in": st.frames_in, "frames_out": st.frames_out, "drops": dict(st.drops),
                              "events": dict(st.events), "gauges": dict(st.gauges), "fps": fps.get(sid, 0.0)}
                if self._serving:  # starting | up | reconnecting | down | ended, as the service says
                    try:
                        stats[sid]["state"] = pipe.engine.stream_state(sid)
                    except UnknownStreamError:  # removed meanwhile
                        stats.pop(sid)
                        continue
                    if sid in complete and stats[sid]["state"] in ("ended", "down"):
                        stats[sid]["complete"] = True  # it ended here and every record of it is in this reply or sent
        done = self._finished.is_set() and left == 0
        jpegs = self._tap.jpegs(want) if want and self._tap is not None else {}
        return {"records": records, "stats": stats, "done": done, "jpegs": jpegs,
                "summary": self._summary if done else None, "batch_sizes": self._batch_sizes if done else None,
                "error": self._error if done else None}

    def stop(self, reason: str = "driver stop") -> None:
        """First call: end the streams and drain; second: abort (as Ctrl-C on a local run)."""
        if self._pipe is not None:
            self._pipe.stop(reason)


__all__ = ["InferpathWorker", "result_record"]
