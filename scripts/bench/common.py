"""What every mode shares: results and formatting (``ModeResult``, ``md_table``), the machine's
description, memory sampling, configs, timing a bare backend, and running a pipeline.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as _dt
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import ROOT
from pipeline.config import Config, build_config
from pipeline.metrics import STAGES
from pipeline.runtime import Pipeline, RunSummary

BATCH_VIDEO = ROOT / "sample_videos" / "vtest.avi"
LIVE_VIDEO = ROOT / "sample_videos" / "Megamind.avi"
# torchvision pinned in the same install: a later bare `pip install ultralytics` would take the newest
# torchvision, which pins a newer torch and swaps it in with its CUDA dependencies (GBs). onnx: Ultralytics'
# ONNX backend checks for it and would pip-install it on first use, inside the timed run.
UL_HINT = ("python3 -m venv /tmp/inferpath-ul-venv && /tmp/inferpath-ul-venv/bin/pip install torch==2.13.0 "
           "torchvision==0.28.0 ultralytics onnxruntime onnx")
_T0 = time.perf_counter()


def progress(msg: str) -> None:
    """One progress line on stderr, with the time since the bench started."""
    sys.stderr.write(f"[bench {time.perf_counter() - _T0:6.0f}s] {msg}\n")
    sys.stderr.flush()


@dataclass
class ModeResult:
    """What one mode measured: markdown sections, plus data for the plots."""

    name: str
    sections: list[str] = field(default_factory=list)
    stage_p50: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> stage -> p50 ms
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # plot -> label -> (t, ms)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the whole mode failed
    # what failed inside a mode that reported it as a table row and went on; any fails the run
    failures: list[str] = field(default_factory=list)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats get a sensible number of digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def rss_mb() -> float:
    """This process's resident set size in MB (Linux /proc), NaN elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class RssPeak:
    """Samples RSS every 20 ms while the block runs; ``added`` is the peak minus the RSS at entry:
    the memory that the measured work itself takes (the bench's own frames are already counted)."""

    def __enter__(self) -> RssPeak:
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def added(self) -> float:
        return self.peak - self.base


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info() -> dict[str, str]:
    """CPU model, cores, RAM, library versions, load average and date."""
    import cv2
    import onnxruntime as ort

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores (os.cpu_count)": str(os.cpu_count()),
        "ram": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "load average at start": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def read_video(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """Decode up to ``limit`` BGR frames (untimed set-up)."""
    from pipeline.videoio import opened_video, sample_frames

    with opened_video(path) as cap:
        frames = [f for _, f in sample_frames(cap, None if limit is None else range(limit))]
    if not frames:
        raise RuntimeError(f"{path}: no frames decoded")
    return frames


def base_config(extra: dict[str, Any], model: str | None) -> Config:
    """A config with quiet progress/logging, the given model, and ``extra`` merged in."""
    data: dict[str, Any] = {"pipeline": {"progress": False}, "metrics": {"log_interval_s": 0}}
    if model:
        data["model"] = {"path": model}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return build_config(data, "<bench>")


def backend_config(model: str | None, threads: int = 0, max_batch: int = 1) -> Config:
    return base_config({"backend": {"max_batch": max_batch, "onnxruntime": {"intra_op_threads": threads}}}, model)


def time_backend(backend: Any, tensors: list[np.ndarray], batch: int) -> float:
    """Frames/s of ``backend.infer`` over ``tensors`` in batches of ``batch`` (stacked before timing).
    A list of backends: one caller thread per entry, each on its share of the batches, all at once
    (an entry may repeat: calls in flight on one session, as the pipeline's inference workers do)."""
    callers = backend if isinstance(backend, list) else [backend]
    batches = [np.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]
    for b in {id(c): c for c in callers}.values():  # warm-up for this batch size (untimed)
        b.infer(batches[0])
        b.infer(batches[0])
    parts = [batches[k::len(callers)] for k in range(len(callers))]
    t0 = time.perf_counter()
    if len(callers) == 1:
        for x in parts[0]:  # in this thread: the classic one-caller loop
            callers[0].infer(x)
    else:
        with concurrent.futures.ThreadPoolExecutor(len(callers)) as pool:
            for done in [pool.submit(lambda c, part: [c.infer(x) for x in part], c, part)
                         for c, part in zip(callers, parts)]:
                done.result()  # a caller's error is raised here, not lost with its thread
    return len(tensors) / (time.perf_counter() - t0)


def stage_p50(summary: RunSummary) -> dict[str, float]:
    rows = summary.stages_ms
    return {s: rows[s][0] for s in STAGES if s in rows}


def e2e_series(pipe: Pipeline, t0: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since ``t0`` or the pipeline's start, e2e ms) for every frame that reached the sinks."""
    ts, vs = [], []
    for (_sid, stage), series in list(pipe.metrics.series.items()):
        if stage == "e2e":
            ts.append(series.times())
            vs.append(series.values())
    if not ts:
        return np.zeros(0), np.zeros(0)
    t, v = np.concatenate(ts), np.concatenate(vs)
    order = np.argsort(t)
    return t[order] - (t0 if t0 is not None else pipe.metrics.started), v[order] * 1000


def run_pipeline(cfg: Config, frames: int | None = None) -> tuple[Pipeline, RunSummary, float]:
    """Build and run a pipeline; returns it, its summary and the wall-clock seconds of ``run()``."""
    if frames is not None:  # the benchmark's --frames: each source ends after that many
        cfg = dataclasses.replace(cfg, sources=[dataclasses.replace(sc, max_frames=frames) for sc in cfg.sources])
    pipe = Pipeline(cfg)
    t0 = time.perf_counter()
    summary = pipe.run(progress=False)
    wall = time.perf_counter() - t0
    if summary.errors:
        raise RuntimeError(f"pipeline error: {summary.errors[0][0]}: {summary.errors[0][1]}")
    return pipe, summary, wall


def side_frames(pipe: Pipeline) -> int:
    """Frames the pipeline's inference stage ran side by side: the one place the bench reads the
    stage graph."""
    return pipe._graph.inference.side_frames
