"""The FP32 canary: an INT8 or FP16 model checked against its FP32 original while it runs.

The accuracy gate (:mod:`pipeline.precision.gate`) judges a prepared model once, on the footage
it was calibrated on. Cameras change (night, rain, a new angle) and a quantized model can drift
from FP32 where nothing else would say so. With ``model.canary`` on, one delivered frame every
``every_s`` seconds per source is re-run on the FP32 model in the background and compared with
what the deployed model emitted for that same frame, by the gate's own functions
(:func:`~pipeline.precision.gate.judge`: margin agreement, pseudo-mAP), over a sliding window of
sampled frames.

How it stays off the live path:

* **sampling** (:meth:`Canary.on_frame`, a frame hook, where each frame is preprocessed): a
  time check per frame (no sample is taken while the canary is still checking one, or before its
  CPU share allows); a sampled frame is only marked (``Frame.keep_outputs``), so the
  postprocess stage leaves its raw outputs on it;
* **hand-over** (:class:`CanarySink`, in the sink thread): a copy of the sampled frame's image and
  the deployed model's raw outputs go into a queue of one; when the canary is still busy the
  sample is dropped (counted ``canary_dropped``), never waited for;
* **the check** (its own thread; with a live stream or in a service niced to 19 with
  ``os.setpriority`` on the thread id; in a batch job over files, where no frame has a budget to
  miss, at normal priority so that it gets its share of a saturated CPU at all): the FP32
  model on an ONNX Runtime session with one intra-op thread (which runs in the calling thread, so
  the nice value covers the inference), the deployed outputs decoded at the gate's floor. The
  thread's CPU time is measured per sample (``time.thread_time``); after a sample the canary takes
  no other until its CPU time over the elapsed time is back under ``max_cpu_share`` of one core.

What it reports per source: ``canary_frames`` (a counter), ``canary_agreement`` (the window's
margin-agreement recall: FP32 boxes at ``conf + margin`` the deployed model finds at
``conf - margin``, 0..1) and ``canary_map50`` (the window's pseudo-mAP, FP32 boxes as truth), in
Prometheus (``inferpath_canary_agreement{source}``), ``summary.json`` (``sources[].canary``) and
the live view; a warning when the window's agreement falls below the gate's
``precision.gate.min_agreement`` (once per crossing; an info line when it is back). Sampled
frames on which the two disagree (the gate's verdict on that frame alone fails) are saved as PNG
(at most ``max_saved`` a run) for re-calibration: ``inferpath quantize --calib-frames DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ConfigError, ModelError
from pipeline.fileio import sha256_file
from pipeline.model import bundled_model_path
from pipeline.onnx_tools import SOURCE_KEY, load_model, made_from, model_precision
from pipeline.sinks import SinkBase

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.frame import Detections, Frame
    from pipeline.metrics import Metrics
    from pipeline.precision.gate import Backends, GateReport
    from pipeline.stages import DecodeSettings

log = logging.getLogger(__name__)

NICE = 19  # the canary thread's nice value: the lowest priority
POLL_S = 0.1
STOP_JOIN_S = 30.0  # one FP32 inference on one thread, at most, and its comparison


@dataclass(frozen=True)
class CanarySettings:
    """What the plan resolved for ``model.canary``: the two models and the canary's limits."""

    reference: Path  # the FP32 model
    deployed: Path  # the INT8 / FP16 model the run uses
    precision: str  # the deployed model's: int8 or fp16
    every_s: float
    window: int
    min_boxes: int
    max_cpu_share: float
    save_dir: Path
    max_saved: int


def canary_settings(cfg: Config, deployed: Path) -> CanarySettings | None:
    """``model.canary`` resolved for the model ``deployed``, or None when off.

    A deployed FP32 model leaves the canary off with one warning: the canary is a monitor, and a
    config that asks for one (shared by several deployments, or run with ``--model`` on the FP32
    file to compare) should still run; comparing FP32 with itself would only say 1.0. A canary
    that cannot do what it is asked for a model that needs it (its FP32 model missing, not FP32,
    not found from the metadata) is a ConfigError: one line, before any frame is read.
    """
    c = cfg.model.canary
    if c is None:
        return None
    try:
        proto = load_model(deployed)  # parsed once: its precision here, its FP32 source below
        precision = model_precision(proto)
    except ModelError as exc:
        raise ConfigError(f"model.canary: {exc}") from None
    if precision == "fp32":
        log.warning("model.canary: %s is FP32; the canary compares an INT8 or FP16 model with the FP32 model it "
                    "was made from, so it is off", deployed.name)
        return None
    reference = Path(c.model).expanduser() if c.model else default_reference(deployed, proto)
    check_reference(reference)
    if reference.resolve() == deployed.resolve():
        raise ConfigError(f"model.canary.model: {reference} is the deployed model itself")
    save_dir = Path(c.save_dir).expanduser() if c.save_dir else Path(cfg.output.dir) / "canary"
    return CanarySettings(reference, deployed, precision, float(c.every_s), c.window, c.min_boxes,
                          float(c.max_cpu_share), save_dir, c.max_saved)


def default_reference(deployed: Path, proto: Any = None) -> Path:
    """The FP32 model ``deployed`` was made from, as its metadata names it (:data:`SOURCE_KEY`):
    the path recorded, else a file of that name beside it, else among the bundled models; the
    recorded sha256, when there is one, must match. ``proto``: the model, already loaded."""
    rec = made_from(proto if proto is not None else load_model(deployed))
    if rec is None:
        raise ConfigError(f"model.canary.model: {deployed.name} does not say which FP32 model it was made from "
                          f"(no {SOURCE_KEY} in its metadata); set model.canary.model to it")
    candidates = [Path(rec["path"])] if rec.get("path") else []
    candidates += [deployed.parent / rec["name"], bundled_model_path().parent / rec["name"]]
    other: Path | None = None
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        if rec.get("sha256") and sha256_file(path) != rec["sha256"]:
            other = other or path
            continue
        return path
    if other is not None:
        raise ConfigError(f"model.canary.model: {other} is not the model {deployed.name} was made from "
                          "(its sha256 differs); set model.canary.model to the FP32 model")
    raise ConfigError(f"model.canary.model: {deployed.name} was made from {rec['name']}, which is not at "
                      f"{', '.join(str(p) for p in dict.fromkeys(candidates))}; set model.canary.model to it")


def check_reference(path: Path) -> None:
    """The canary's model must be a readable FP32 ONNX file (one ConfigError line otherwise)."""
    if not path.is_file():
        raise ConfigError(f"model.canary.model: {path}: model file not found")
    try:
        precision = model_precision(load_model(path))
    except ModelError as exc:
        raise ConfigError(f"model.canary.model: {exc}") from None
    if precision != "fp32":
        raise ConfigError(f"model.canary.model: {path} is {precision}; the canary needs the FP32 model")


def lower_priority() -> bool:
    """Nice the calling thread to :data:`NICE` (Linux: ``setpriority`` on the thread id acts on
    that thread alone). False where the platform does not allow it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except (AttributeError, OSError) as exc:
        log.debug("canary: cannot lower the thread's priority: %s", exc)
        return False
    return True


@dataclass
class Sample:
    """One sampled frame as handed to the canary: copies, so the pipeline may free its own."""

    source_id: str
    seq: int
    pts: float
    image: np.ndarray
    letterbox: Any
    outputs: list[np.ndarray]


@dataclass
class Checked:
    """One sampled frame, checked: both models' detections down to the gate's floor."""

    seq: int
    reference: Detections  # FP32
    deployed: Detections


class _SourceState:
    """One source: when its next sample is due, its window, its warning state and totals."""

    def __init__(self, window: int) -> None:
        self.next_due = 0.0
        self.window: deque[Checked] = deque(maxlen=window)
        self.report: GateReport | None = None  # the gate's verdict on the window, after the last sample
        self.below = False
        self.cpu_s = 0.0


class CanarySink(SinkBase):
    """Per source, in the sink thread: hands a sampled frame to the canary (a queue of one; a
    full queue drops it) and frees the raw outputs kept for it."""

    name = "canary"

    def __init__(self, canary: Canary, source_id: str) -> None:
        self.canary = canary
        self.source_id = source_id

    def write(self, frame: Frame) -> None:
        if not frame.keep_outputs or frame.outputs is None:
            return
        self.canary.offer(Sample(frame.source_id, frame.seq, frame.pts, frame.image.copy(), frame.letterbox,
                                 [o.copy() for o in frame.outputs]))
        frame.outputs = None

    def close(self) -> None:
        pass


class Canary:
    """The observer (see the module doc): ``on_frame`` samples, :class:`CanarySink` hands over,
    its thread checks. Built by the plan (:func:`pipeline.observers.from_config`) with the run's
    decoding and backend factory; its FP32 session is opened here, so a model ONNX Runtime
    refuses fails before any frame is read."""

    def __init__(self, settings: CanarySettings, cfg: Config, decode: DecodeSettings, names: tuple[str, ...],
                 backends: Backends, *, low_priority: bool = True) -> None:
        from pipeline.precision.gate import Detector, score_floor

        self.settings = settings
        self.cfg = cfg  # the gate's thresholds (precision.gate) and the deployment's model settings
        self.decode = decode
        self.floor = score_floor(cfg)
        self.min_agreement = float(cfg.precision.gate.min_agreement)
        b = cfg.backend
        ort = dataclasses.replace(b.onnxruntime, intra_op_threads=1, inter_op_threads=1, workers=1,
                                  providers=["CPUExecutionProvider"])
        ref_cfg = dataclasses.replace(cfg, backend=dataclasses.replace(b, name="onnxruntime", max_batch=1,
                                                                       onnxruntime=ort))
        try:
            self.reference = Detector(ref_cfg, settings.reference, backends=backends)
        except Exception as exc:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ConfigError(f"model.canary.model: {settings.reference}: cannot run it ({first})") from None
        ref_names = self.reference.spec.names
        if names and ref_names and len(names) != len(ref_names):
            self.reference.close()
            raise ConfigError(f"model.canary.model: {settings.reference.name} has {len(ref_names)} classes, the "
                              f"deployed {settings.deployed.name} {len(names)}: not the model it was made from")
        self._queue: queue.Queue[Sample] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sources: dict[str, _SourceState] = {}
        self._lock = threading.Lock()
        self._not_before = 0.0  # no sample before this (monotonic): the CPU share
        self._busy = False  # checking a sample: none is marked meanwhile (the queue's drop is the backstop)
        self._saved = 0
        self._save_failed = False
        self._failed = False
        self.low_priority = low_priority  # live streams (or a service): niced; a batch job: not
        self.niced = False
        self.cpu_s = 0.0  # the canary thread's CPU time, all samples
        self.metrics: Metrics | None = None
        log.info("canary: %s (%s) checked against %s (FP32) every %g s per source, window %d, at most %g of a "
                 "core", settings.deployed.name, settings.precision.upper(), settings.reference, settings.every_s,
                 settings.window, settings.max_cpu_share)

    # ---- observer protocol ---------------------------------------------------------------------
    def start(self, metrics: Metrics) -> None:
        self.metrics = metrics
        for sid in list(self._sources):
            metrics.count(sid, "canary_frames", 0)  # the series exist (and the summary shows the canary) from the start
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inferpath-canary", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Check the sample waiting, if any, then end the thread and close the FP32 session."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(STOP_JOIN_S)
            if t.is_alive():
                log.warning("canary: still checking a frame %g s after the stop; its session is left open", STOP_JOIN_S)
                return
        if not self._closed:
            self._closed = True
            self.reference.close()

    def forget_source(self, source_id: str) -> None:
        """A stream removed from a service: its window goes."""
        with self._lock:
            self._sources.pop(source_id, None)

    def sink_for(self, src: Any, scfg: Any = None) -> CanarySink:
        """The sink factory: one hand-over sink per source."""
        self._state(src.id)
        if self.metrics is not None:  # a stream joining a running service
            self.metrics.count(src.id, "canary_frames", 0)
        return CanarySink(self, src.id)

    # ---- the hot path: a time check per frame, a copy per sample --------------------------------
    def on_frame(self, frame: Frame) -> None:
        """Frame hook (where the frame was preprocessed: its stream's thread, or the inference
        worker that took it, one frame at a time): mark the frame when its source's sample is due."""
        now = time.monotonic()
        st = self._sources.get(frame.source_id) or self._state(frame.source_id)
        if now < st.next_due or now < self._not_before or self._busy:
            return
        st.next_due = now + self.settings.every_s
        frame.keep_outputs = True

    def offer(self, sample: Sample) -> None:
        """Hand a sample to the canary's thread; dropped (and counted) when it is still busy."""
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            if self.metrics is not None:
                self.metrics.count(sample.source_id, "canary_dropped")

    # ---- the canary's thread -------------------------------------------------------------------
    def _run(self) -> None:
        self.niced = lower_priority() if self.low_priority else False
        while True:
            try:
                sample = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._busy = True
            t0, c0 = time.monotonic(), time.thread_time()
            try:
                self.check(sample)
            except Exception as exc:  # an observer never stops the pipeline
                if not self._failed:
                    self._failed = True
                    log.error("canary: checking a frame of %s failed: %s (further failures counted, not logged)",
                              sample.source_id, exc)
                if self.metrics is not None:
                    self.metrics.count(sample.source_id, "canary_errors")
            cpu = time.thread_time() - c0
            self.cpu_s += cpu
            self._not_before = t0 + cpu / self.settings.max_cpu_share
            self._busy = False
            st = self._sources.get(sample.source_id)
            if st is not None:
                st.cpu_s += cpu
                if self.metrics is not None:
                    self.metrics.gauge(sample.source_id, "canary_cpu_s", st.cpu_s)

    def check(self, sample: Sample) -> GateReport:
        """Both models' detections of ``sample`` at the gate's floor, the gate's verdict on the
        source's window, what it says to Prometheus, the log and the disagreements directory."""
        from pipeline.postprocess import postprocess
        from pipeline.precision.gate import disagreements, judge

        reference = self.reference.detect([sample.image], self.floor)[0]
        d = self.decode
        deployed = postprocess([sample.outputs[d.output]], [sample.letterbox], d.fmt, self.floor, d.iou, d.max_det,
                               list(d.classes) if d.classes else None)[0]
        st = self._state(sample.source_id)
        st.window.append(Checked(sample.seq, reference, deployed))
        report = judge([c.reference for c in st.window], [c.deployed for c in st.window], self.cfg)
        st.report = report
        m, sid = self.metrics, sample.source_id
        if m is not None:
            m.count(sid, "canary_frames")
            m.gauge(sid, "canary_boxes", float(report.found_judged))
            if report.found_judged:
                m.gauge(sid, "canary_agreement", report.found)
            if not np.isnan(report.map50):
                m.gauge(sid, "canary_map50", report.map50)
        self._judge_window(sid, st, report)
        if self._saved < self.settings.max_saved and not self._save_failed:  # the frame alone: saved if it disagrees
            frame_report = judge([reference], [deployed], self.cfg)
            wrong = disagreements(frame_report)
            if wrong:
                self._save(sample, frame_report, wrong)
        return report

    def _judge_window(self, sid: str, st: _SourceState, report: GateReport) -> None:
        """One warning when the window's agreement falls below the gate's threshold, one info line
        when it is back (once per crossing); a window with fewer than ``min_boxes`` FP32 boxes is
        not judged."""
        if report.found_judged < self.settings.min_boxes:
            return
        low = report.found < self.min_agreement
        if low and not st.below:
            st.below = True
            log.warning("%s: canary: the %s model finds %.3f of FP32's %d boxes over the last %d sampled frames "
                        "(pseudo-mAP %.3f), below the gate's %g: it no longer agrees with FP32 on this footage%s",
                        sid, self.settings.precision.upper(), report.found, report.found_judged, report.frames,
                        report.map50, self.min_agreement,
                        f"; frames that disagree go to {self.settings.save_dir}" if self.settings.max_saved else "")
            if self.metrics is not None:
                self.metrics.count(sid, "canary_warnings")
        elif not low and st.below:
            st.below = False
            log.info("%s: canary: agreement back to %.3f over the last %d sampled frames (>= %g)", sid, report.found,
                     report.frames, self.min_agreement)

    def _save(self, sample: Sample, report: GateReport, why: list[str]) -> None:
        """Write a disagreeing frame (PNG) and a line about it (``canary.jsonl``), up to ``max_saved``."""
        s = self.settings
        import cv2

        name = f"{_safe(sample.source_id)}-{time.strftime('%Y%m%d-%H%M%S')}-{sample.seq:07d}.png"
        try:
            s.save_dir.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(s.save_dir / name), sample.image):
                raise OSError("cv2.imwrite returned False")
            line = {"file": name, "source": sample.source_id, "seq": sample.seq, "pts": round(sample.pts, 3),
                    "found": round(report.found, 4), "kept": round(report.kept, 4),
                    "map50": None if np.isnan(report.map50) else round(report.map50, 4),
                    "fp32_boxes": report.reference_boxes, "deployed_boxes": report.candidate_boxes, "why": why}
            with open(s.save_dir / "canary.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as exc:
            self._save_failed = True
            log.warning("canary: cannot save disagreeing frames to %s (%s); not saving more", s.save_dir, exc)
            return
        self._saved += 1
        if self.metrics is not None:
            self.metrics.count(sample.source_id, "canary_saved")
        if self._saved == s.max_saved:
            log.info("canary: %d disagreeing frames saved to %s (model.canary.max_saved); no more this run",
                     self._saved, s.save_dir)

    # ---- reading -------------------------------------------------------------------------------
    def _state(self, source_id: str) -> _SourceState:
        with self._lock:
            st = self._sources.get(source_id)
            if st is None:
                st = self._sources[source_id] = _SourceState(self.settings.window)
            return st

    def window(self, source_id: str) -> list[Checked]:
        """The checked frames in ``source_id``'s window, oldest first."""
        st = self._sources.get(source_id)
        return list(st.window) if st else []

    def report(self, source_id: str) -> GateReport | None:
        """The gate's verdict on ``source_id``'s window after its last sample (None before one)."""
        st = self._sources.get(source_id)
        return st.report if st else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "source"


__all__ = ["Canary", "CanarySettings", "CanarySink", "Checked", "Sample", "canary_settings",
           "check_reference", "default_reference", "lower_priority"]
