"""Inferpath benchmarks: batch throughput, live latency, precision, streams per machine.

One script, modes chosen on the command line, everything measured in one run so the numbers
sit side by side under the same load (a shared machine is noisy: compare ratios and medians from
one run, not absolute figures across runs). Wall-clock time only (``time.perf_counter`` and the
pipeline's own monotonic stamps); nothing here is a timed unit test.

Modes:

* ``batch``: the bare backend on frames preprocessed in memory (the *bound*), a naive
  one-thread loop, and the pipeline over the same file, with and without the video sink; R rounds
  interleaved, medians. A sweep of ``backend.max_batch`` x ORT intra-op threads says which
  config gets the pipeline closest to the bound.
* ``live``: a realtime looping source at 1x, 2x and 3x speed through the pipeline with a latency
  budget, against a naive "read, infer, repeat" loop fed by an unbounded camera buffer and,
  where its venv exists, Ultralytics on the same ONNX (``scripts/bench_ultralytics.py``).
* ``precision``: FP32, FP16, INT8 for onnxruntime and INT8 for tensorrt on ORT CPU: size, fps,
  pseudo-mAP and agreement with FP32, convs kept in float; a whole run FP32 vs INT8.
* ``streams``: how many realtime 10 fps streams fit the 500 ms budget with < 1 % drops,
  batching on and off.
* ``tracking``: tracker cost per frame by object count (ByteTrack, SORT, OC-SORT), tracking
  cost per stream in the pipeline, and MOTA / IDF1 on degraded MOTChallenge ground truth.
* ``web``: pipeline throughput with the live view off, on with 0 viewers, and with 1 and 10
  MJPEG viewers (``scripts/mjpeg_viewers.py``, another process); the viewers' first-frame time
  and how far the video they receive is behind the sink.
* ``cluster``: realtime 10 fps streams held within the budget by the local engine and by 1 and
  2 Ray workers on this machine (``pip install 'inferpath[cluster]'``): the cost of the cluster layer.
* ``ultralytics``: whole ``inferpath run`` processes on a file with the annotated video written,
  INT8 (onnxruntime form, made by ``inferpath quantize``) and FP32, against Ultralytics
  ``predict(source=..., save=True)`` on the same FP32 ONNX in its venv; interleaved rounds.

Usage::

    python scripts/bench.py                           # batch mode
    python scripts/bench.py --modes live,streams --quick
    python scripts/bench.py --report bench-out/       # every mode, bench.md + PNG plots

Tables go to stdout (markdown), progress to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from pipeline.config import Config, build_config, load_config  # noqa: E402
from pipeline.metrics import STAGES, percentiles  # noqa: E402
from pipeline.runtime import Pipeline, RunSummary, make_backend, resolve_format, resolve_model  # noqa: E402
from pipeline.runtime.build import inference_workers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ultralytics import camera  # noqa: E402  (stdlib-only module, shared with the Ultralytics venv)

BATCH_VIDEO = ROOT / "sample_videos" / "vtest.avi"
LIVE_VIDEO = ROOT / "sample_videos" / "Megamind.avi"
ALL_MODES = ("batch", "live", "precision", "streams", "tracking", "web", "cluster", "ultralytics")
UL_PYTHON_DEFAULT = "/tmp/inferpath-ul-venv/bin/python"
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


# ------------------------------------------------------------------------------------------------
# Results and formatting


@dataclass
class ModeResult:
    """What one mode measured: markdown sections, plus data for the plots."""

    name: str
    sections: list[str] = field(default_factory=list)
    stage_p50: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> stage -> p50 ms
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # plot -> label -> (t, ms)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


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


# ------------------------------------------------------------------------------------------------
# Shared helpers


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


# ------------------------------------------------------------------------------------------------
# batch


def naive_loop(video: Path, model: str | None, frames: int | None, out_path: Path) -> float:
    """One thread: read, preprocess, infer, postprocess, write a JSON line; returns frames/s.

    Same backend (default config), thresholds and JSONL record shape as the pipeline; no video
    sink (compare with the pipeline's jsonl-only row). The backend is built and warmed up before
    the clock starts, as the pipeline's is.
    """
    import cv2

    from pipeline.postprocess import postprocess
    from pipeline.preprocess import preprocess

    cfg = backend_config(model)
    path, spec = resolve_model(cfg)
    backend = make_backend(cfg, path)
    fmt = resolve_format(cfg, spec, backend, path)
    m = cfg.model
    item = (3, spec.input_size[1], spec.input_size[0])
    backend.infer(np.zeros((1, *item), np.float32))
    n = 0
    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    with open(out_path, "w", buffering=1, encoding="utf-8") as fh:
        while frames is None or n < frames:
            t_cap = time.monotonic_ns()
            ok, image = cap.read()
            if not ok:
                break
            tensor, lb = preprocess(image, spec)
            outputs = backend.infer(tensor[None])
            det = postprocess(outputs, [lb], fmt, m.conf_threshold, m.iou_threshold, m.max_detections)[0]
            record = {"source": "naive", "seq": n, "latency_ms": round((time.monotonic_ns() - t_cap) / 1e6, 2),
                      "detections": det.to_records(spec.names)}
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            n += 1
    cap.release()
    wall = time.perf_counter() - t0
    backend.close()
    return n / wall


def cli_run(video: Path, frames: int, out_dir: Path) -> float:
    """``inferpath run`` in a subprocess with the default outputs; frames / wall time of the process."""
    cmd = [sys.executable, "-m", "pipeline", "-q", "run", "--source", str(video), "-o", str(out_dir),
           "--set", f"sources.0.max_frames={frames}", "--set", "metrics.log_interval_s=0"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"inferpath run exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return sum(1 for _ in open(out_dir / f"{video.stem}.jsonl", encoding="utf-8")) / wall


def mode_batch(args: argparse.Namespace, work: Path) -> ModeResult:
    """Bound vs naive vs pipeline on one file, R interleaved rounds; then the batch x threads sweep."""
    from pipeline.preprocess import preprocess

    res = ModeResult("batch")
    video = Path(args.video or BATCH_VIDEO)
    progress(f"batch: decoding and preprocessing {video.name} (untimed)")
    images = read_video(video, args.frames)
    n = len(images)
    cfg0 = backend_config(args.model)
    model_path, spec = resolve_model(cfg0)
    tensors = [preprocess(im, spec)[0] for im in images]
    del images
    rounds = args.repeats
    out_dir = work / "batch"
    out_dir.mkdir(parents=True, exist_ok=True)

    # The pipeline rows run the main job's backend settings (configs/sample.yaml), as `demo.sh` does.
    main = load_config(ROOT / "configs" / "sample.yaml").backend
    main_batch, main_threads = main.max_batch, main.onnxruntime.intra_op_threads

    def pipe_cfg(video_out: bool, max_batch: int = main_batch, threads: int = main_threads,
                 jsonl: bool = True) -> Config:
        return base_config({
            "sources": [{"uri": str(video), "id": "vtest"}],
            "output": {"dir": str(out_dir), "jsonl": jsonl, "video": video_out},
            "backend": {"max_batch": max_batch, "onnxruntime": {"intra_op_threads": threads}},
        }, args.model)

    # One session times the bare loop at batch 1, at the pipeline's batch and at batch 4.
    bound_backend = make_backend(backend_config(args.model, main_threads, max(4, main_batch)), model_path)
    # What the pipeline itself runs for a file: inference_workers() calls in flight on one session
    # whose threads are shared out between them (backend.onnxruntime.workers: auto).
    calls = inference_workers(pipe_cfg(False))
    calls_backend = (make_backend(backend_config(args.model, main_threads, main_batch), model_path, calls)
                     if calls > 1 else None)
    # bound_b4: the one-caller bare loop at batch 4, its best batch on a CPU, kept beside the
    # pipeline's own batch so that no ratio is only taken against the easier reference.
    keys = ("bound", "bound_same", "bound_b4", "bound_calls", "naive", "cli", "pipeline", "pipeline_nov",
            "pipeline_vo")
    if main_batch in (1, 4):
        keys = tuple(k for k in keys if k != "bound_same")
    if calls_backend is None:
        keys = tuple(k for k in keys if k != "bound_calls")
    fps: dict[str, list[float]] = {k: [] for k in keys}
    mem: dict[str, list[float]] = {k: [] for k in keys}
    last_summary: RunSummary | None = None
    errors: dict[str, str] = {}
    for r in range(rounds):
        for name in fps:
            if name in errors:
                continue
            progress(f"batch: round {r + 1}/{rounds}: {name} over {n} frames")
            try:
                with RssPeak() as peak:
                    if name == "bound":
                        fps[name].append(time_backend(bound_backend, tensors, 1))
                    elif name == "bound_same":
                        fps[name].append(time_backend(bound_backend, tensors, main_batch))
                    elif name == "bound_b4":
                        fps[name].append(time_backend(bound_backend, tensors, 4))
                    elif name == "bound_calls":
                        fps[name].append(time_backend([calls_backend] * calls, tensors, main_batch))
                    elif name == "naive":
                        fps[name].append(naive_loop(video, args.model, n, out_dir / "naive.jsonl"))
                    elif name == "cli":
                        fps[name].append(cli_run(video, n, out_dir / "cli"))
                    else:
                        _, summary, wall = run_pipeline(pipe_cfg(name != "pipeline_nov", jsonl=name != "pipeline_vo"), n)
                        fps[name].append(summary.frames / wall)
                        if name == "pipeline":
                            last_summary = summary
                mem[name].append(peak.added)
            except Exception as exc:  # report and go on
                errors[name] = f"{type(exc).__name__}: {exc}"
                progress(f"batch: {name} failed: {errors[name]}")
    bound = median(fps["bound"])
    labels = {
        "bound": "bound: bare backend, preprocessed frames in memory, batch 1",
        "bound_same": f"bound at the pipeline's batch ({main_batch})",
        "bound_b4": "bound at batch 4 (one caller on every core: its best batch on a CPU)",
        "bound_calls": f"bound at batch {main_batch}, {calls} calls in flight (threads shared out): the "
                       "pipeline's own inference for a file, without the pipeline",
        "naive": "naive: 1 thread read+preprocess+infer+postprocess+JSONL",
        "pipeline": f"pipeline: configs/sample.yaml backend (max_batch {main_batch}), JSONL + annotated video",
        "pipeline_nov": f"pipeline: configs/sample.yaml backend (max_batch {main_batch}), JSONL only (no video)",
        "pipeline_vo": f"pipeline: configs/sample.yaml backend (max_batch {main_batch}), annotated video only",
        "cli": "`inferpath run --source VIDEO` as a whole process (start-up, imports, warm-up included), "
               "default outputs (JSONL + H.264 video)",
    }
    labels = {k: v for k, v in labels.items() if k in fps}
    # Ratios against the bare loop at the pipeline's own batch, and at batch 4 (its best) when that differs.
    same_key = {1: "bound", 4: "bound_b4"}.get(main_batch, "bound_same")
    ref_keys = [same_key] + (["bound_b4"] if main_batch != 4 else [])
    ref_names = [f"x bound at the pipeline's batch ({main_batch})"] + (["x bound at batch 4"] if main_batch != 4 else [])
    rows = []
    for key, label in labels.items():
        med = median(fps[key])
        row_name = {"pipeline_nov": "pipeline (JSONL only)", "pipeline_vo": "pipeline (video only)",
                    "cli": "inferpath run (process)",
                    "bound_same": f"bound (batch {main_batch})",
                    "bound_b4": "bound (batch 4)",
                    "bound_calls": f"bound ({calls} calls, batch {main_batch})"}.get(key, key)
        refs = [median(fps[k]) if fps.get(k) else float("nan") for k in ref_keys]
        rows.append([row_name, label, med if fps[key] else errors.get(key, "-"),
                     ", ".join(f"{x:.2f}" for x in fps[key]) or "-",
                     *[med / r if fps[key] and r == r else float("nan") for r in refs],
                     med / median(fps["naive"]) if fps[key] and fps["naive"] else float("nan"),
                     median(mem[key]) if mem[key] else float("nan")])
    res.sections.append(
        f"### Batch throughput ({n} frames of {video.name}, {rounds} interleaved round(s), medians)\n\n"
        + md_table(["row", "what", "fps (median)", "fps per round", *ref_names, "x naive", "peak RSS added MB"],
                   rows)
        + "\n\n`peak RSS added`: the process's peak resident memory during the row minus its RSS when the row "
        "started (frames the bench preloads for the bound are already in the baseline).")
    p = median(fps["pipeline"])
    nv = median(fps["pipeline_nov"])
    res.extra["batch"] = {"bound": bound, "naive": median(fps["naive"]), "pipeline": p, "pipeline_nov": nv,
                          "pipeline_vo": median(fps["pipeline_vo"]), "cli": median(fps["cli"])}
    if last_summary is not None:
        res.stage_p50["pipeline batch"] = stage_p50(last_summary)
        res.sections.append("Pipeline per-stage p50 ms (last default round): " + ", ".join(
            f"{k} {v:.1f}" for k, v in res.stage_p50["pipeline batch"].items()))

    # --- bound at other batch sizes and threads, and the pipeline sweep -------------------------
    bound_backend.close()
    if calls_backend is not None:
        calls_backend.close()
    if not args.sweep:
        res.sections.append("Sweep of max_batch x threads skipped (--quick or --no-sweep; pass --sweep to run it).")
        return res
    sweep_n = min(n, args.sweep_frames)
    sub = tensors[:sweep_n]
    batches = [int(b) for b in args.sweep_batches.split(",")]
    threads = [int(t) for t in args.sweep_threads.split(",")]
    combos = [(b, t) for t in threads for b in batches]
    bfps: dict[tuple[int, int], list[float]] = {c: [] for c in combos}
    pfps: dict[tuple[int, int], list[float]] = {c: [] for c in combos}
    perr: dict[tuple[int, int], str] = {}
    backends = {c: make_backend(backend_config(args.model, c[1], c[0]), model_path) for c in combos}
    sweep_rounds = args.sweep_repeats or rounds
    for r in range(sweep_rounds):
        for c in combos:
            progress(f"batch sweep: round {r + 1}/{sweep_rounds}: max_batch {c[0]}, threads {c[1]} ({sweep_n} frames)")
            bfps[c].append(time_backend(backends[c], sub, c[0]))
            if c in perr:
                continue
            try:
                _, summary, wall = run_pipeline(pipe_cfg(args.sweep_video, c[0], c[1]), sweep_n)
                pfps[c].append(summary.frames / wall)
            except Exception as exc:
                perr[c] = f"{type(exc).__name__}: {exc}"
    for b in backends.values():
        b.close()
    ref = median(bfps.get((1, 0), [])) if (1, 0) in bfps else bound
    rows = []
    best: tuple[float, tuple[int, int]] | None = None
    for c in combos:
        pm = median(pfps[c]) if pfps[c] else float("nan")
        bm = median(bfps[c])
        rows.append([c[0], c[1] or "0 (default)", bm, pm if pfps[c] else perr.get(c, "-"), pm / ref, pm / bm])
        if pfps[c] and (best is None or pm > best[0]):
            best = (pm, c)
    outputs = "JSONL + video" if args.sweep_video else "JSONL only"
    res.sections.append(
        f"### Sweep: backend.max_batch x ORT intra-op threads ({sweep_n} frames, pipeline outputs: {outputs}, "
        f"{sweep_rounds} interleaved round(s), medians)\n\n"
        "`x bound` is against the bare backend at batch 1 and default threads measured in this sweep; "
        "`x own bound` against the bare backend at the same batch and threads.\n\n"
        + md_table(["max_batch", "intra-op threads", "bound fps (same batch/threads)", "pipeline fps",
                    "x bound", "x own bound"], rows))
    if best is not None:
        ok = best[0] / ref >= 0.9
        res.sections.append(
            f"Best pipeline config: max_batch {best[1][0]}, intra_op_threads {best[1][1]} "
            f"({best[0]:.2f} fps, {best[0] / ref:.2f} x bound: {'reaches' if ok else 'does NOT reach'} 0.9).")
        res.extra["best"] = {"max_batch": best[1][0], "threads": best[1][1], "ratio": best[0] / ref}
    return res


# ------------------------------------------------------------------------------------------------
# live


def live_row(name: str, t_done: np.ndarray, lat_ms: np.ndarray, frames_in: int, drops: dict[str, int],
             duration: float, budget: float, backlog: int = 0) -> list[Any]:
    """One row of the live table from per-frame (done time, latency)."""
    p50, p95, p99 = percentiles(lat_ms) if len(lat_ms) else [float("nan")] * 3
    first = lat_ms[t_done <= t_done.min() + 10] if len(t_done) else lat_ms
    last = lat_ms[t_done >= t_done.max() - 10] if len(t_done) else lat_ms
    f50 = float(np.median(first)) if len(first) else float("nan")
    l50 = float(np.median(last)) if len(last) else float("nan")
    dropped = sum(drops.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])) or "-"
    return [name, frames_in, len(lat_ms), f"{100 * dropped / frames_in:.1f}" if frames_in else "-", reasons,
            backlog, len(lat_ms) / duration, p50, p95, p99, f50, l50,
            "yes" if p99 <= budget else "no", "yes" if (l50 > 1.5 * f50 and l50 - f50 > 50) else "no"]


LIVE_HEADERS = ["system", "frames in", "frames out", "drop %", "drops by reason", "backlog at end", "out fps",
                "e2e p50 ms", "p95 ms", "p99 ms", "p50 first 10 s", "p50 last 10 s", "p99 <= budget", "grows"]


def naive_live(video: Path, model: str | None, speed: float, duration: float) -> dict[str, Any]:
    """Camera thread -> unbounded queue -> one consumer that preprocesses, infers, postprocesses.

    Latency is done time minus the frame's capture time, so when the consumer is slower than the
    camera the backlog, and the lag, grow without bound (an RTSP client that buffers everything).
    """

    from pipeline.postprocess import postprocess
    from pipeline.preprocess import preprocess

    cfg = backend_config(model)
    path, spec = resolve_model(cfg)
    backend = make_backend(cfg, path)
    fmt = resolve_format(cfg, spec, backend, path)
    m = cfg.model
    backend.infer(np.zeros((1, 3, spec.input_size[1], spec.input_size[0]), np.float32))
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    t0_box: list[float] = []

    # The same simulated camera as the Ultralytics peer: paced, looping, into an unbounded queue.
    th = threading.Thread(target=camera, args=(str(video), speed, stop, q, t0_box), daemon=True)
    th.start()
    while not t0_box:
        time.sleep(0.001)
    t0 = t0_box[0]
    recs: list[tuple[float, float]] = []
    while time.perf_counter() - t0 < duration:
        try:
            frame, captured = q.get(timeout=0.1)
        except queue.Empty:
            continue
        tensor, lb = preprocess(frame, spec)
        out = backend.infer(tensor[None])
        postprocess(out, [lb], fmt, m.conf_threshold, m.iou_threshold, m.max_detections)
        recs.append((captured - t0, time.perf_counter() - t0))
    stop.set()
    th.join(2.0)
    backend.close()
    backlog = q.qsize()
    return {"frames": recs, "produced": len(recs) + backlog, "backlog": backlog}


def ultralytics_live(args: argparse.Namespace, model_path: Path, speed: float, duration: float,
                     work: Path) -> dict[str, Any]:
    """Run ``bench_ultralytics.py`` in the Ultralytics venv; raises with a hint when it is missing."""
    py = args.ul_python
    if not Path(py).exists():
        raise FileNotFoundError(f"no Ultralytics venv at {py} (create it with: {UL_HINT})")
    out = work / f"ultralytics_{speed:g}x.json"
    cmd = [py, str(ROOT / "scripts" / "bench_ultralytics.py"), "--model", str(model_path), "--video",
           str(LIVE_VIDEO), "--speed", str(speed), "--duration", str(duration), "--imgsz", "416", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"bench_ultralytics.py exited {proc.returncode}: {tail[0][:300]}")
    return json.loads(out.read_text())


GOODPUT_HEADERS = ["speed", "offered fps", "frames out/s", "batch sizes (size x calls)",
                   "bare fps at the batch used", "x bare", "bare fps at batch 4", "x bare at batch 4",
                   "frames through calls side by side", "p99 ms", "p99 <= budget", "drops by reason"]


def goodput_row(label: str, offered: float, s: Any, batch_sizes: dict[int, int], backend: Any,
                tensors: list[np.ndarray], duration: float, budget: float, p99: float,
                before: dict[int, float], side_frames: int = 0) -> list[Any]:
    """A live run's frames out/s against the bare backend at the batch sizes that run used (the
    mean of the bare fps timed just before and just after the run, to even out a shared machine)."""
    fps_at = {k: (time_backend(backend, tensors, k) + before[k]) / 2 for k in sorted(set(batch_sizes) | {4})}
    frames = sum(k * n for k, n in batch_sizes.items())
    busy_s = sum(k * n / fps_at[k] for k, n in batch_sizes.items())  # bare time for the same calls
    bare = frames / busy_s if busy_s else float("nan")
    out_fps = s.fps or s.frames_out / duration  # over the span of delivered frames
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.drops.items(), key=lambda kv: -kv[1])) or "-"
    return [label, offered, out_fps, ", ".join(f"{k}x{n}" for k, n in sorted(batch_sizes.items())) or "-",
            bare, out_fps / bare if bare == bare else float("nan"), fps_at[4], out_fps / fps_at[4],
            f"{100 * side_frames / frames:.0f} %" if frames else "-", p99, "yes" if p99 <= budget else "no", reasons]


def mode_live(args: argparse.Namespace, work: Path) -> ModeResult:
    """Pipeline vs naive vs Ultralytics on a realtime looping source at 1x, 2x and 3x."""
    res = ModeResult("live")
    budget = args.budget_ms
    duration = args.duration if args.duration else (15.0 if args.quick else 60.0)
    model_path, spec = resolve_model(backend_config(args.model))
    ul_versions: dict[str, str] = {}
    goodput_rows: list[list[Any]] = []
    from pipeline.preprocess import preprocess

    tensors = [preprocess(im, spec)[0] for im in read_video(LIVE_VIDEO, 48)]
    live_backend: dict[str, Any] = {}
    if args.live_max_batch:
        live_backend["max_batch"] = args.live_max_batch
    if args.live_workers:
        live_backend["onnxruntime"] = {"workers": args.live_workers}
    live_max_batch = build_config({"backend": live_backend}, "<bench>").backend.max_batch
    bare = make_backend(backend_config(args.model, 0, max(4, live_max_batch)), model_path)
    for speed in (1.0, 2.0, 3.0):
        label = f"{speed:g}x"
        rows = []
        series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        progress(f"live {label}: bare backend at batch 1-{live_max_batch}, then the pipeline for {duration:g} s "
                 f"(budget {budget:g} ms)")
        before = {k: time_backend(bare, tensors, k) for k in sorted(set(range(1, live_max_batch + 1)) | {4})}
        try:
            cfg = base_config({
                "sources": [{"uri": str(LIVE_VIDEO), "id": f"live{label}", "realtime": True, "loop": True,
                             "speed": speed}],
                "pipeline": {"latency_budget_ms": budget, "duration_s": duration, "progress": False},
                "output": {"jsonl": False, "video": False},
                "backend": live_backend,
            }, args.model)
            pipe, summary, _ = run_pipeline(cfg)
            s = summary.sources[0]
            reader_start = pipe.metrics.series[(s.id, "capture")].times()
            t0 = float(reader_start[0]) if len(reader_start) else pipe.metrics.started
            t, lat = e2e_series(pipe, t0)
            series["pipeline"] = (t, lat)
            rows.append(live_row("pipeline", t, lat, s.frames_in, s.drops, duration, budget))
            res.stage_p50[f"live {label}"] = stage_p50(summary)
            progress(f"live {label}: bare backend at the batch sizes the pipeline used {summary.batch_sizes}")
            goodput_rows.append(goodput_row(label, 24 * speed, s, summary.batch_sizes, bare, tensors, duration,
                                            budget, float(rows[-1][9]), before, pipe.side_frames))
        except Exception as exc:
            rows.append(["pipeline", f"error: {type(exc).__name__}: {exc}"] + [""] * (len(LIVE_HEADERS) - 2))
        progress(f"live {label}: naive loop for {duration:g} s")
        try:
            r = naive_live(LIVE_VIDEO, args.model, speed, duration)
            arr = np.asarray(r["frames"], np.float64).reshape(-1, 2)
            t, lat = arr[:, 1], (arr[:, 1] - arr[:, 0]) * 1000
            series["naive"] = (t, lat)
            rows.append(live_row("naive (unbounded buffer)", t, lat, r["produced"], {}, duration, budget,
                                 r["backlog"]))
        except Exception as exc:
            rows.append(["naive", f"error: {type(exc).__name__}: {exc}"] + [""] * (len(LIVE_HEADERS) - 2))
        if args.no_ultralytics:
            rows.append(["ultralytics", "skipped (--no-ultralytics)"] + [""] * (len(LIVE_HEADERS) - 2))
        else:
            progress(f"live {label}: ultralytics for {duration:g} s")
            try:
                r = ultralytics_live(args, model_path, speed, duration, work)
                ul_versions = dict(r.get("versions", {}))
                if r.get("note"):
                    ul_versions["note"] = r["note"]
                arr = np.asarray(r["frames"], np.float64).reshape(-1, 2)
                t, lat = arr[:, 1], (arr[:, 1] - arr[:, 0]) * 1000
                series["ultralytics"] = (t, lat)
                rows.append(live_row("ultralytics (per-frame predict)", t, lat, r["produced"], {}, duration, budget,
                                     r["backlog"]))
            except Exception as exc:
                rows.append(["ultralytics", f"skipped: {type(exc).__name__}: {exc}"]
                            + [""] * (len(LIVE_HEADERS) - 2))
        res.series[f"live {label}"] = series
        p99s = {r_[0]: r_[9] for r_ in rows if isinstance(r_[9], float)}
        verdict = ""
        if "pipeline" in p99s:
            peers = [v for k, v in p99s.items() if k != "pipeline"]
            lower = all(p99s["pipeline"] < v for v in peers)
            verdict = (f"\n\nPipeline p99 {p99s['pipeline']:.0f} ms vs budget {budget:g} ms: "
                       f"{'within' if p99s['pipeline'] <= budget else 'OVER'}; lower p99 than every peer: "
                       f"{'yes' if lower and peers else 'no' if peers else 'no peer measured'}.")
        res.sections.append(
            f"### Live {label} ({LIVE_VIDEO.name} at {24 * speed:.0f} fps, loop, {duration:g} s each, "
            f"budget {budget:g} ms)\n\n" + md_table(LIVE_HEADERS, rows) + verdict)
    bare.close()
    res.sections.append(
        f"### Goodput under overload ({LIVE_VIDEO.name}, realtime loop, {duration:g} s each, budget {budget:g} ms, "
        + (f"backend {live_backend}" if live_backend else "default config") + ", outputs off)\n\n"
        "`bare fps at the batch used`: the bare backend (`session.run` on preprocessed frames in memory, same "
        "process, mean of a timing just before and one just after the pipeline run) timed at each batch size the pipeline used, weighted by how many "
        "calls it made at each: the most frames per second this model could have delivered with those calls. "
        "`x bare` = pipeline frames out/s over that, the share of the capacity delivered. `bare fps at batch 4`: "
        "the same one-caller loop at batch 4, its best batch on a CPU, as a second, stricter reference. `frames "
        "through calls side by side`: the share of frames the pipeline ran on two calls in flight (on a CPU it "
        "switches to them when one call at a time loses frames; pipeline/policy.py: SideBySide).\n\n"
        + md_table(GOODPUT_HEADERS, goodput_rows))
    res.extra["goodput"] = goodput_rows
    res.sections.append(
        "Naive and Ultralytics never drop: a slower consumer leaves frames in the unbounded buffer "
        "(`backlog at end`) and latency grows. `grows`: p50 of the last 10 s > 1.5 x p50 of the first 10 s "
        "and +50 ms. Outputs are off for all three (no JSONL/video), so only the inference path is compared."
        + (f" Ultralytics venv: {', '.join(f'{k} {v}' for k, v in ul_versions.items())}." if ul_versions else ""))
    return res


# ------------------------------------------------------------------------------------------------
# precision


def mode_precision(args: argparse.Namespace, work: Path) -> ModeResult:
    """FP32 / FP16 / INT8 for onnxruntime / INT8 for tensorrt, prepared as `inferpath quantize` does.

    Per model: file size, bare-backend fps at batch 1 and at the main job's batch (interleaved
    rounds, medians), x FP32, the accuracy gate's pseudo-mAP and agreement on held-out frames,
    and the convolutions kept in float. Then a whole `inferpath run` of the video, FP32 vs INT8
    (onnxruntime form), JSONL only and with the default outputs (JSONL + annotated video).
    """
    from pipeline import precision as P
    from pipeline.model import load_spec
    from pipeline.preprocess import preprocess

    res = ModeResult("precision")
    video = Path(args.video or BATCH_VIDEO)
    main_cfg = load_config(ROOT / "configs" / "sample.yaml")
    if args.model:
        main_cfg = dataclasses.replace(main_cfg, model=dataclasses.replace(main_cfg.model, path=args.model))
    main_cfg = dataclasses.replace(main_cfg, metrics=dataclasses.replace(main_cfg.metrics, log_interval_s=0))
    model_path, spec = resolve_model(main_cfg)
    pc = main_cfg.precision
    batch, threads = main_cfg.backend.max_batch, main_cfg.backend.onnxruntime.intra_op_threads
    out_dir = (Path(args.report) / "models") if args.report else work / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    calib_n, gate_n, fps_n = (16, 16, 20) if args.quick else (pc.calib_frames, pc.gate.frames, 100)
    calib_idx, gate_idx = P.split_video(video, calib_n, gate_n)
    calib, _ = P.read_frames_at(video, calib_idx)
    gate_frames, _ = P.read_frames_at(video, gate_idx)
    progress(f"precision: FP32 detections on {len(gate_frames)} held-out frames of {video.name}")
    gate = P.Gate(main_cfg, model_path, gate_frames, spec)
    labels = {"fp32": "FP32", "fp16": "FP16", "onnxruntime": "INT8 (onnxruntime form)",
              "tensorrt": "INT8 (tensorrt form)"}
    models: dict[str, Path] = {"fp32": model_path}
    reports: dict[str, Any] = {}
    floats: dict[str, str] = {"fp32": "-", "fp16": "-"}
    errors: dict[str, str] = {}
    try:
        models["fp16"] = P.save_model(P.convert_fp16(model_path), out_dir / f"{model_path.stem}_fp16.onnx")
        reports["fp16"] = gate.judge(models["fp16"])
    except Exception as exc:
        errors["fp16"] = f"{type(exc).__name__}: {exc}"
    progress(f"precision: calibrating on {len(calib)} frames ({pc.calib_method})")
    with P.Calibration(model_path, calib, spec, pc.calib_method, calib_idx) as cal:
        for target in P.TARGETS:
            progress(f"precision: INT8 for {target}: quantize, gate{', recover' if pc.recover else ''}")
            try:
                q, rep, rec = P.quantize_gated(cal, gate, target, out_dir / f"{model_path.stem}_int8_{target}.onnx",
                                               pc.recover, pc.max_float_layers, say=progress)
                models[target], reports[target] = q.output, rep
                floats[target] = f"head ({len(cal.head)})" + "".join(f", {n}" for n in q.float_layers)
                if rec is not None and not rep.passed:
                    errors[target] = "gate failed even after recovery: " + "; ".join(rep.failures)
            except Exception as exc:
                errors[target] = f"{type(exc).__name__}: {exc}"
    frames = read_video(video, fps_n)
    fps: dict[tuple[str, int], list[float]] = {}
    backends: dict[tuple[str, int], Any] = {}
    tensors: dict[str, list[np.ndarray]] = {}
    for name, p in models.items():
        tensors[name] = [preprocess(f, load_spec(p))[0] for f in frames]
        for b in sorted({1, batch}):
            backends[(name, b)] = make_backend(backend_config(str(p), threads, b), p)
            fps[(name, b)] = []
    for r in range(args.repeats):
        for (name, b), be in backends.items():
            progress(f"precision: round {r + 1}/{args.repeats}: {labels[name]} batch {b}, {len(frames)} frames")
            fps[(name, b)].append(time_backend(be, tensors[name], b))
    for be in backends.values():
        be.close()
    rows = []
    for name, label in labels.items():
        if name not in models:
            rows.append([label, f"error: {errors.get(name, '?')}"] + [""] * 8)
            continue
        rep = reports.get(name)
        f1, fb = median(fps[(name, 1)]), median(fps[(name, batch)])
        rows.append([
            label, f"{P.model_size_mb(models[name]):.2f}", f1, f1 / median(fps[("fp32", 1)]),
            fb, fb / median(fps[("fp32", batch)]),
            "1 (reference)" if rep is None else rep.map50,
            "1 (reference)" if rep is None else f"{rep.found:.3f} / {rep.kept:.3f}",
            "-" if rep is None else ("PASS" if rep.passed else "FAIL") + (" (weak)" if rep.weak else ""),
            floats.get(name, "?"),
        ])
    ref = gate.ref
    n_truth = sum(int((d.confidence >= main_cfg.model.conf_threshold).sum()) for d in ref)
    res.sections.append(
        f"### Precision on ONNX Runtime CPU ({video.name}; bare backend over {len(frames)} preprocessed frames, "
        f"default threads, {args.repeats} interleaved round(s), medians; gate on {len(gate_frames)} held-out "
        f"frames, {n_truth} FP32 boxes at conf {main_cfg.model.conf_threshold:g}, margin {pc.gate.margin:g})\n\n"
        + md_table(["model", "size MB", "fps b1", "x FP32 b1", f"fps b{batch}", f"x FP32 b{batch}",
                    "pseudo-mAP@0.5", "agreement found / kept", "gate", "convs kept in float"], rows)
        + (f"\n\nErrors: {errors}" if errors else "") + f"\n\nPrepared models: {out_dir}")
    if "onnxruntime" in models:
        res.sections.append(_precision_whole_runs(args, video, work, models["fp32"], models["onnxruntime"]))
    return res


def _precision_whole_runs(args: argparse.Namespace, video: Path, work: Path, fp32: Path, int8: Path) -> str:
    """A whole `inferpath run` of ``video`` with each model (main job's settings), interleaved rounds."""
    main = load_config(ROOT / "configs" / "sample.yaml").backend
    out_dir = work / "precision-runs"
    walls: dict[tuple[str, bool], list[float]] = {}
    frames_done = 0
    for r in range(args.repeats):
        for video_out in (False, True):
            for name, p in (("FP32", fp32), ("INT8 (onnxruntime form)", int8)):
                progress(f"precision: round {r + 1}/{args.repeats}: inferpath run, {name}, "
                         f"{'JSONL + video' if video_out else 'JSONL only'}")
                cfg = base_config({
                    "sources": [{"uri": str(video), "id": "vtest"}],
                    "output": {"dir": str(out_dir), "jsonl": True, "video": video_out},
                    "backend": {"max_batch": main.max_batch,
                                "onnxruntime": {"intra_op_threads": main.onnxruntime.intra_op_threads}},
                }, str(p))
                _, summary, wall = run_pipeline(cfg, args.frames)
                frames_done = summary.frames
                walls.setdefault((name, video_out), []).append(wall)
    rows = []
    for video_out in (False, True):
        ref = median(walls[("FP32", video_out)])
        for name in ("FP32", "INT8 (onnxruntime form)"):
            w = median(walls[(name, video_out)])
            rows.append(["JSONL + video (default)" if video_out else "JSONL only", name, w, frames_done / w, ref / w,
                         ", ".join(f"{x:.1f}" for x in walls[(name, video_out)])])
    return (f"### Whole `inferpath run` of {video.name} ({frames_done} frames, configs/sample.yaml backend "
            f"settings, {args.repeats} interleaved round(s), medians)\n\n"
            + md_table(["outputs", "model", "wall s", "fps", "x FP32", "wall s per round"], rows))


# ------------------------------------------------------------------------------------------------
# streams


def mode_streams(args: argparse.Namespace, work: Path) -> ModeResult:
    """Search upward for the number of realtime 10 fps streams the machine holds within the budget."""
    res = ModeResult("streams")
    budget = 500.0
    duration = args.streams_duration or (8.0 if args.quick else 20.0)
    ladder = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    rows = []
    held: dict[str, int] = {}
    best_summary: dict[str, tuple[int, RunSummary]] = {}
    for setting in ("batching on", "batching off"):
        held[setting] = 0
        for n in ladder:
            max_batch = min(n, 8) if setting == "batching on" else 1
            progress(f"streams: {setting}, {n} stream(s) for {duration:g} s")
            cfg = base_config({
                "sources": [{"uri": str(BATCH_VIDEO), "id": f"s{i}", "realtime": True, "loop": True}
                            for i in range(n)],
                "pipeline": {"latency_budget_ms": budget, "duration_s": duration, "progress": False},
                "output": {"jsonl": False, "video": False},
                "backend": {"max_batch": max_batch, "batch_timeout_ms": 20.0},
            }, args.model)
            try:
                _, summary, _ = run_pipeline(cfg)
            except Exception as exc:
                rows.append([setting, n, max_batch, f"error: {type(exc).__name__}: {exc}", "", "", "", "", "FAIL"])
                break
            e2e = summary.stages_ms.get("e2e", [float("nan")] * 3)
            f_in = sum(s.frames_in for s in summary.sources)
            dropped = sum(sum(s.drops.values()) for s in summary.sources)
            drop_pct = 100 * dropped / f_in if f_in else 100.0
            ok = e2e[2] <= budget and drop_pct < 1.0 and summary.frames > 0
            sizes = ", ".join(f"{k}x{v}" for k, v in sorted(summary.batch_sizes.items())) or "-"
            rows.append([setting, n, max_batch, e2e[0], e2e[2], f"{drop_pct:.2f}", summary.frames / duration,
                         sizes, "pass" if ok else "FAIL"])
            if not ok:
                break
            held[setting] = n
            best_summary[setting] = (n, summary)
    for setting, (n, summary) in best_summary.items():
        res.stage_p50[f"streams {n} ({setting})"] = stage_p50(summary)
    res.sections.append(
        f"### Streams per machine ({BATCH_VIDEO.name} realtime 10 fps, loop, {duration:g} s per step, "
        f"budget {budget:g} ms; pass = p99 <= budget and drops < 1 %; batch_timeout_ms 20)\n\n"
        + md_table(["setting", "streams", "max_batch", "e2e p50 ms", "e2e p99 ms", "drop %", "out fps",
                    "batch sizes (size x calls)", "result"], rows)
        + "\n\n**Streams per machine at the budget:** "
        + ", ".join(f"{k}: {v}" for k, v in held.items()))
    res.extra["held"] = held
    return res


# ------------------------------------------------------------------------------------------------
# tracking

# The trackers compared: Roboflow `trackers` defaults, and Inferpath's tracking: defaults (tuned).
TRACKER_SETTINGS: dict[str, dict[str, Any]] = {
    "bytetrack (library defaults)": {"tracker": "bytetrack", "activation_threshold": 0.7, "high_threshold": 0.6,
                                     "match_iou": 0.1, "min_hits": 2},
    "bytetrack (inferpath defaults)": {"tracker": "bytetrack"},
    "sort (library defaults)": {"tracker": "sort", "activation_threshold": 0.25, "match_iou": 0.3, "min_hits": 3},
    "sort (inferpath defaults)": {"tracker": "sort"},
    "ocsort (library defaults)": {"tracker": "ocsort", "high_threshold": 0.6, "match_iou": 0.3, "min_hits": 3},
    "ocsort (inferpath defaults)": {"tracker": "ocsort"},
}


def _moving_boxes(n: int, frames: int, seed: int = 0) -> list[Any]:
    """``n`` 30x80 boxes drifting at random constant velocities, as Detections per frame."""
    from pipeline.frame import Detections

    rng = np.random.default_rng(seed)
    pos, vel = rng.uniform(0, 700, (n, 2)), rng.normal(0, 3, (n, 2))
    return [Detections(np.c_[pos + vel * f, pos + vel * f + [30, 80]].astype(np.float32),
                       rng.uniform(0.4, 1.0, n).astype(np.float32), np.zeros(n, np.int64)) for f in range(frames)]


def mode_tracking(args: argparse.Namespace, work: Path) -> ModeResult:
    """Tracking: cost per frame by object count and tracker, cost per stream in the pipeline, and
    MOTA / IDF1 on degraded MOTChallenge ground truth (TUD sequences shipped in motmetrics)."""
    from pipeline.config import LineConfig, TrackingConfig, ZoneConfig
    from pipeline.tracking.evaluate import degrade, ground_truth_path, score
    from pipeline.tracking.mot import track_detections
    from pipeline.tracking.stream import Tracking

    res = ModeResult("tracking")
    frames = 150 if args.quick else 500
    # 1. cost per frame: the tracker alone, and the whole step (ids, one line, one zone, trails)
    rows = []
    geometry = dict(lines=[LineConfig("l", [[400, 0], [400, 576]])],
                    zones=[ZoneConfig("z", [[0, 0], [300, 0], [300, 300], [0, 300]])])
    for n in (5, 20, 50):
        dets = _moving_boxes(n, frames)
        for name in ("bytetrack", "sort", "ocsort"):
            st = Tracking(TrackingConfig(enabled=True, tracker=name, **geometry), ("person",)).stream("s")
            w0, c0 = time.perf_counter(), time.process_time()
            for i, d in enumerate(dets):
                st.tracker.update(d, i / 25)
            wall, cpu = (time.perf_counter() - w0) / frames * 1e3, (time.process_time() - c0) / frames * 1e3
            st = Tracking(TrackingConfig(enabled=True, tracker=name, **geometry), ("person",)).stream("s")
            w0, c0 = time.perf_counter(), time.process_time()
            for i, d in enumerate(dets):
                st.step(d, i / 25, ("person",))
            rows.append([n, name, wall, cpu, (time.perf_counter() - w0) / frames * 1e3,
                         (time.process_time() - c0) / frames * 1e3])
    res.sections.append(
        f"### Tracking cost per frame (synthetic moving boxes, {frames} frames, load {loadavg()})\n\n"
        "*tracker*: the library's update alone; *step*: what the pipeline runs per frame (ids, class vote, "
        "trails, one line, one zone). Wall and process CPU time, ms per frame.\n\n"
        + md_table(["objects", "tracker", "tracker wall ms", "tracker CPU ms", "step wall ms", "step CPU ms"], rows))
    # 2. cost per stream in the pipeline (vtest, persons, the counting line and zone of configs/counting.yaml)
    n_frames = args.frames or (80 if args.quick else 200)
    tracking = {"enabled": True,
                "lines": [{"name": "walkway", "points": [[400, 150], [400, 330]], "classes": ["person"]}],
                "zones": [{"name": "east", "polygon": [[480, 150], [720, 150], [720, 320], [480, 320]]}]}
    rows = []
    for streams, on in ((1, False), (1, True), (2, True)):
        progress(f"tracking: pipeline, {streams} stream(s), tracking {'on' if on else 'off'}")
        cfg = base_config({
            "sources": [{"uri": str(BATCH_VIDEO), "id": f"s{i}", "max_frames": n_frames} for i in range(streams)],
            "model": {"classes": [0]}, "backend": {"max_batch": 4},
            "output": {"dir": str(work / "tracking"), "video": False},
            "tracking": dict(tracking, enabled=on)}, args.model)
        _, summary, wall = run_pipeline(cfg)
        for s in summary.sources:
            t = s.tracking or {}
            dets = sum(s.detections.values())
            crossings = sum(sum(v.values()) for v in (t.get("lines", {}).get("walkway") or {}).values()) if t else "-"
            rows.append([streams, "on" if on else "off", s.id, s.frames_out, dets / max(1, s.frames_out),
                         summary.fps, t.get("cpu_ms_per_frame", float("nan")) if t else float("nan"),
                         t.get("ms_per_frame", float("nan")) if t else float("nan"),
                         t.get("tracks", "-") if t else "-", crossings])
    res.sections.append(
        f"### Tracking cost per stream in the pipeline ({BATCH_VIDEO.name}, first {n_frames} frames, persons)\n\n"
        + md_table(["streams", "tracking", "source", "frames", "objects/frame", "pipeline fps",
                    "tracking CPU ms/frame", "tracking wall ms/frame", "tracks", "walkway crossings"], rows))
    # 3. MOTA / IDF1 on degraded ground truth, through the same code path as `inferpath track`
    seeds = range(2 if args.quick else 5)
    rows = []
    for seq in ("TUD-Stadtmitte", "TUD-Campus"):
        gt = np.loadtxt(ground_truth_path(seq), delimiter=",")
        dets = {seed: degrade(gt, seed=seed) for seed in seeds}
        for label, kw in TRACKER_SETTINGS.items():
            scores, ms = [], []
            for seed in seeds:
                t0 = time.perf_counter()
                out = track_detections(dets[seed], TrackingConfig(**kw), 25.0)
                ms.append((time.perf_counter() - t0) / int(gt[:, 0].max()) * 1e3)
                scores.append(score(gt, out))
            rows.append([seq, label, float(np.mean([s["mota"] for s in scores])),
                         float(np.mean([s["idf1"] for s in scores])),
                         float(np.mean([s["id_switches"] for s in scores])),
                         ", ".join(f"{s['mota']:.3f}/{s['idf1']:.3f}" for s in scores), float(np.mean(ms))])
    res.sections.append(
        f"### MOTA / IDF1 on degraded MOTChallenge ground truth ({len(seeds)} seeds)\n\n"
        "Ground truth from the motmetrics wheel; 25 % of boxes dropped, 6 % jitter, confidences ~ N(0.8, 0.15), "
        "a false positive on 15 % of frames (`pipeline/tracking/evaluate.py`); tracked at 25 fps as "
        "`inferpath track` does; scored with motmetrics at IoU 0.5.\n\n"
        + md_table(["sequence", "tracker", "MOTA (mean)", "IDF1 (mean)", "ID switches (mean)",
                    "MOTA/IDF1 per seed", "ms/frame"], rows))
    return res


# ------------------------------------------------------------------------------------------------
# web


def web_round(args: argparse.Namespace, viewers: int | None, duration: float) -> dict[str, Any]:
    """One run over the looping batch video for ``duration`` s: the live view off (None) or on with
    ``viewers`` MJPEG viewers in another process. Returns fps and the viewers' figures."""
    from pipeline.web import LiveView

    web = {"enabled": viewers is not None, "port": 0}
    cfg = base_config({
        "sources": [{"uri": str(BATCH_VIDEO), "id": "cam", "loop": True}],
        "pipeline": {"duration_s": duration, "progress": False},
        "output": {"jsonl": False, "video": False, "web": web},
    }, args.model)
    import resource

    pipe = Pipeline(cfg)  # output.web on: the plan builds the live view
    view = next((ob for ob in pipe.observers if isinstance(ob, LiveView)), None)
    proc = None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    done: dict[str, RunSummary] = {}
    runner = threading.Thread(target=lambda: done.update(summary=pipe.run(progress=False)), name="bench-web-run")
    runner.start()
    if view is not None and viewers:  # viewers open the page once the pipeline delivers, as a person would
        while pipe.metrics.snapshot("cam").frames_out == 0 and runner.is_alive():
            time.sleep(0.01)
        left = duration - (time.monotonic() - t0) - 1
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "mjpeg_viewers.py"), "--port",
                                 str(view.port), "--viewers", str(viewers), "--duration", f"{left:.2f}"],
                                stdout=subprocess.PIPE, text=True)
    runner.join()
    summary = done["summary"]
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out: dict[str, Any] = {"fps": summary.fps, "encoded": view.views[0].encoded if view else 0,
                           "cpu_ms_per_frame": 1000 * cpu_s / max(summary.frames, 1),
                           "web_cpu_pct": 100 * (view.cpu_ns / 1e9) / cpu_s if view and cpu_s > 0 else 0.0}
    if proc is not None:
        data = json.loads(proc.communicate(timeout=60)[0] or "{}")
        out["first_s"] = [f for f in data.get("first_s", []) if f is not None]
        out["lags_ms"] = data.get("lags_ms", [])
        out["parts"] = data.get("parts", [])
        out["errors"] = data.get("errors", [])
        child = resource.getrusage(resource.RUSAGE_CHILDREN)  # the viewers' own cost (the browser's, in life)
        out["viewer_cpu_s"] = child.ru_utime + child.ru_stime
    return out


def mode_web(args: argparse.Namespace, work: Path) -> ModeResult:
    """Throughput of a batch pipeline with the live view off, idle, and watched by 1 and 10 viewers."""
    res = ModeResult("web")
    duration = args.duration or (10.0 if args.quick else 20.0)
    settings: list[tuple[str, int | None]] = [("web off", None), ("web on, 0 viewers", 0), ("1 viewer", 1),
                                              ("10 viewers", 10)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in settings}
    for rnd in range(args.repeats):  # interleaved rounds: a noisy neighbour hits every setting alike
        for name, viewers in settings:
            progress(f"web: round {rnd + 1}/{args.repeats}, {name}, {duration:g} s")
            runs[name].append(web_round(args, viewers, duration))
    base = median([r["fps"] for r in runs["web off"]])
    base_cpu = median([r["cpu_ms_per_frame"] for r in runs["web off"]])
    rows = []
    for name, _ in settings:
        rs = runs[name]
        fps = median([r["fps"] for r in rs])
        lags = np.array([x for r in rs for x in r.get("lags_ms", [])])
        first = [x for r in rs for x in r.get("first_s", [])]
        parts = [p for r in rs for p in r.get("parts", [])]
        errors = sum(len(r.get("errors", [])) for r in rs)
        cpu = median([r["cpu_ms_per_frame"] for r in rs])
        rows.append([name, fps, ", ".join(f"{r['fps']:.1f}" for r in rs), f"{100 * (fps / base - 1):+.1f}",
                     cpu, f"{100 * (cpu / base_cpu - 1):+.1f}", median([r["web_cpu_pct"] for r in rs]),
                     median([r["encoded"] / duration for r in rs]),
                     median(parts) / duration if parts else float("nan"),
                     max(first) if first else float("nan"),
                     float(np.percentile(lags, 50)) if len(lags) else float("nan"),
                     float(np.percentile(lags, 99)) if len(lags) else float("nan"), errors])
    res.sections.append(
        f"### Live view cost ({BATCH_VIDEO.name} looping as a batch job, no JSONL/video, {duration:g} s per run, "
        f"{args.repeats} interleaved round(s), medians; viewers in another process; output.web.max_fps 15)\n\n"
        + md_table(["setting", "pipeline fps", "fps per round", "fps vs web off %", "CPU ms per frame",
                    "CPU vs web off %", "live view threads % of CPU", "JPEG encodes/s",
                    "parts/s per viewer", "first frame s (worst)", "behind sink p50 ms", "p99 ms",
                    "viewer errors"], rows))
    res.extra["runs"] = runs
    return res


# ------------------------------------------------------------------------------------------------
# cluster

CLUSTER_LADDER = [1, 2, 3, 4, 5, 6, 8, 12, 16]


def _cluster_step(cfg: Config, workers: int | None) -> RunSummary:
    """One step of the cluster search: the local engine (``workers`` None) or Ray workers."""
    if workers is None:
        return run_pipeline(cfg)[1]
    from pipeline.cluster import ClusterRun

    summary = ClusterRun(cfg).run()
    if summary.errors:
        raise RuntimeError(f"cluster error: {summary.errors[0][0]}: {summary.errors[0][1]}")
    return summary


def mode_cluster(args: argparse.Namespace, work: Path) -> ModeResult:
    """Realtime 10 fps streams held within the budget by the local engine and by 1 and 2 Ray
    workers on this machine: what the cluster layer itself costs (one local Ray for the mode)."""
    res = ModeResult("cluster")
    try:
        import ray
    except ImportError:
        res.sections.append("### Cluster\n\nRay is not installed: pip install 'inferpath[cluster]'")
        return res
    budget = 500.0
    duration = args.streams_duration or (8.0 if args.quick else 20.0)
    cores = os.cpu_count() or 1
    settings: list[tuple[str, int | None, float]] = [("local engine", None, 0.0), ("ray, 1 worker", 1, float(cores)),
                                                     ("ray, 2 workers", 2, cores / 2)]
    rows: list[list[Any]] = []
    ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
             logging_level="WARNING", log_to_driver=False)
    alive = {name: True for name, _, _ in settings}
    held = {name: 0 for name, _, _ in settings}
    try:  # interleaved: every engine at n streams, then at the next n, so load changes hit them alike
        for n in CLUSTER_LADDER:
            for name, workers, cpus in settings:
                if not alive[name]:
                    continue
                progress(f"cluster: {name}, {n} stream(s) for {duration:g} s")
                cfg = base_config({
                    "sources": [{"uri": str(BATCH_VIDEO), "id": f"s{i}", "realtime": True, "loop": True}
                                for i in range(n)],
                    "pipeline": {"latency_budget_ms": budget, "duration_s": duration, "progress": False},
                    "output": {"dir": str(work / "cluster"), "jsonl": True, "video": False},
                    "backend": {"max_batch": min(n, 8), "batch_timeout_ms": 20.0},
                    "cluster": {"engine": "ray" if workers else "local", "workers": workers or 1,
                                "cpus_per_worker": cpus or 1.0},
                }, args.model)
                try:
                    summary = _cluster_step(cfg, workers)
                except Exception as exc:
                    rows.append([name, n, f"error: {type(exc).__name__}: {exc}", "", "", "", "FAIL"])
                    alive[name] = False
                    continue
                e2e = summary.stages_ms.get("e2e", [float("nan")] * 3)
                f_in = sum(s.frames_in for s in summary.sources)
                drop_pct = 100 * sum(sum(s.drops.values()) for s in summary.sources) / f_in if f_in else 100.0
                ok = e2e[2] <= budget and drop_pct < 1.0 and summary.frames > 0
                rows.append([name, n, e2e[0], e2e[2], f"{drop_pct:.2f}", summary.frames / duration,
                             "pass" if ok else "FAIL"])
                alive[name] = ok
                held[name] = n if ok else held[name]
            if not any(alive.values()):
                break
    finally:
        ray.shutdown()
    local = held.get("local engine") or 0
    ratios = ", ".join(f"{k}: {v / local:.2f}x" for k, v in held.items() if k != "local engine") if local else "-"
    res.sections.append(
        f"### Cluster layer ({BATCH_VIDEO.name} realtime 10 fps, loop, {duration:g} s per step, budget {budget:g} ms; "
        f"pass = p99 <= budget and drops < 1 %; {cores} cores; the Ray workers split them)\n\n"
        + md_table(["engine", "streams", "e2e p50 ms", "e2e p99 ms", "drop %", "out fps", "result"], rows)
        + "\n\n**Streams held:** " + ", ".join(f"{k}: {v}" for k, v in held.items())
        + f"; against the local engine: {ratios}")
    res.extra["held"] = held
    return res


# ------------------------------------------------------------------------------------------------
# ultralytics (whole runs on a file, annotated video written)


def _timed_process(label: str, cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, float, str]:
    """Run ``cmd`` to its end; its wall seconds, its CPU seconds (user + sys) and its output tail."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"{label} exited {proc.returncode}: {tail[0][:300]}")
    return wall, cpu, (proc.stdout + "\n" + proc.stderr)[-4000:]


def mode_ultralytics(args: argparse.Namespace, work: Path) -> ModeResult:
    """Whole processes on one file, annotated video written: inferpath INT8 / FP32 vs Ultralytics.

    (a) ``inferpath run --source VIDEO --model INT8`` (onnxruntime form, made first by ``inferpath
    quantize --calib VIDEO``) and (b) the same with the FP32 model, both with the default outputs
    (JSONL + annotated video); (c) Ultralytics ``YOLO(FP32 ONNX).predict(source=VIDEO, save=True,
    stream=True)`` in its own venv (``scripts/bench_ultralytics.py --mode file``), imgsz 416 and
    the pipeline's conf/iou, and (d) the same with ``batch=4`` (inferpath's default batch). Each is
    a fresh process timed from start to exit, R interleaved rounds (the order rotates each round),
    medians; ratios per round and of the medians.
    """
    from pipeline.videoio import count_frames

    res = ModeResult("ultralytics")
    if args.no_ultralytics:
        res.sections.append("### Whole runs vs Ultralytics\n\nskipped (--no-ultralytics)")
        return res
    video = Path(args.video or BATCH_VIDEO)
    py = args.ul_python
    if not Path(py).exists():
        raise FileNotFoundError(f"no Ultralytics venv at {py} (create it with: {UL_HINT})")
    fp32, _ = resolve_model(backend_config(args.model))
    m = base_config({}, args.model).model
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    ip = [sys.executable, "-m", "pipeline"]
    int8 = work / f"{fp32.stem}_int8_onnxruntime.onnx"
    progress(f"ultralytics: inferpath quantize --calib {video.name} (target onnxruntime, default settings)")
    quantize = ip + ["quantize", "--model", str(fp32), "--calib", str(video), "-o", str(int8)]
    q_wall, _, q_out = _timed_process("inferpath quantize", quantize, env, 1800)
    gate_line = next((" ".join(ln.split()) for ln in q_out.splitlines() if ln.strip().startswith("gate ")), "gate ?")
    ul_env = {**os.environ, "YOLO_CONFIG_DIR": str(work / "ul-config")}
    systems = {  # name: (kind, model, Ultralytics batch)
        "inferpath INT8 (onnxruntime form)": ("ip", int8, 0),
        "inferpath FP32": ("ip", fp32, 0),
        "Ultralytics FP32 ONNX": ("ul", fp32, 1),
        "Ultralytics FP32 ONNX, batch=4": ("ul", fp32, 4),
    }
    walls: dict[str, list[float]] = {k: [] for k in systems}
    cpus: dict[str, list[float]] = {k: [] for k in systems}
    inrun: dict[str, list[float]] = {k: [] for k in systems}
    frames: dict[str, int] = {}
    written: dict[str, int] = {}
    boxes: dict[str, int] = {}
    ul_parts: dict[str, list[dict[str, Any]]] = {}
    loads: list[str] = []
    names = list(systems)
    timeout = 1800.0
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            kind, model, ul_batch = systems[name]
            out_dir = work / f"ul-round{r}-{kind}{ul_batch}-{model.stem}"
            loads.append(loadavg())
            progress(f"ultralytics: round {r + 1}/{args.repeats}: {name} (load {loads[-1]})")
            if kind == "ip":
                cmd = ip + ["run", "--source", str(video), "--model", str(model), "-o", str(out_dir)]
                wall, cpu, _ = _timed_process("inferpath run", cmd, env, timeout)
                summary = json.loads((out_dir / "summary.json").read_text())
                frames[name], inside = int(summary["frames"]), float(summary["wall_s"])
                boxes[name] = sum(int(v) for v in summary["sources"][0]["detections"].values())
                vids = [Path(p) for p in summary["sources"][0]["outputs"] if p.endswith((".mp4", ".avi", ".mkv"))]
            else:
                js = out_dir / "ultralytics.json"
                cmd = [py, str(ROOT / "scripts" / "bench_ultralytics.py"), "--mode", "file", "--model", str(model),
                       "--video", str(video), "--imgsz", "416", "--conf", f"{m.conf_threshold:g}",
                       "--iou", f"{m.iou_threshold:g}", "--batch", str(ul_batch), "--save-dir", str(out_dir),
                       "--out", str(js)]
                out_dir.mkdir(parents=True, exist_ok=True)
                wall, cpu, _ = _timed_process("bench_ultralytics.py", cmd, ul_env, timeout)
                rj = json.loads(js.read_text())
                ul_parts.setdefault(name, []).append(rj)
                frames[name], inside = int(rj["frames"]), float(rj["predict_s"])
                boxes[name] = int(rj["boxes"])
                vids = [Path(s["path"]) for s in rj["saved"] if s["path"].endswith((".mp4", ".avi", ".mkv"))]
            walls[name].append(wall)
            cpus[name].append(cpu)
            inrun[name].append(inside)
            written[name] = count_frames(vids[0]) if vids else 0  # the run wrote the whole video
            shutil.rmtree(out_dir, ignore_errors=True)
    loads.append(loadavg())
    ul_name, int8_name = "Ultralytics FP32 ONNX", "inferpath INT8 (onnxruntime form)"
    ul_wall = median(walls[ul_name])
    rows = []
    for name in names:
        w = median(walls[name])
        per_round = [u / x for u, x in zip(walls[ul_name], walls[name], strict=True)]
        rows.append([
            name, w, frames[name] / w, ul_wall / w,
            ", ".join(f"{x:.2f}" for x in per_round) if name != ul_name else "-",
            median(inrun[name]), frames[name] / median(inrun[name]), median(cpus[name]),
            f"{written[name]} / {frames[name]}", boxes[name], ", ".join(f"{x:.1f}" for x in walls[name]),
        ])
    parts = ("import_s", "load_s", "first_result_s", "predict_s", "in_process_s")
    ul_names = [n for n in names if n in ul_parts]
    ul_rows = [[k] + [median([float(p[k]) for p in ul_parts[n] if p.get(k) is not None]) for n in ul_names]
               for k in parts]
    ul_rows += [[f"per frame {k} ms (p50)"] + [median([float(p["speed_ms_p50"].get(k, float("nan")))
                                                      for p in ul_parts[n]]) for n in ul_names]
                for k in ("preprocess", "inference", "postprocess")]
    last = ul_parts[ul_name][-1] if ul_parts.get(ul_name) else {}
    versions = dict(last.get("versions", {}))
    int8_x = ul_wall / median(walls[int8_name])
    int8_b4 = median(walls["Ultralytics FP32 ONNX, batch=4"]) / median(walls[int8_name])
    target = 1.5
    res.extra.update({"walls": walls, "cpus": cpus, "inrun": inrun, "frames": frames, "loads": loads,
                      "ul_versions": versions, "int8_vs_ultralytics": int8_x, "int8_vs_ultralytics_b4": int8_b4})
    res.sections.append(
        f"### Whole runs on {video.name}, annotated video written ({frames.get(names[0], '?')} frames; "
        f"{args.repeats} interleaved round(s), order rotating, medians)\n\n"
        + md_table(["system", "wall s (whole process)", "fps (frames / wall)", "x Ultralytics (medians)",
                    "x Ultralytics per round", "in-run s", "in-run fps", "CPU s (user+sys)",
                    "video frames written / processed", "boxes", "wall s per round"], rows)
        + f"\n\nINT8 vs Ultralytics `predict(save=True)`: **{int8_x:.2f}x** (target >= {target:g}x: "
        f"{'met' if int8_x >= target else 'NOT met'}); vs Ultralytics with `batch=4`: {int8_b4:.2f}x. "
        f"Load average before each run and at the end: {'; '.join(loads)} ({os.cpu_count()} cores).")
    res.sections.append(
        "Ultralytics' own clock, medians over rounds (seconds unless marked):\n\n"
        + md_table(["part"] + ul_names, ul_rows)
        + "\n\n`import_s`: interpreter start to torch + Ultralytics imported; `load_s`: `YOLO(onnx)`; "
        "`first_result_s`: predict's lazy set-up (ORT session, warm-up) and the first result; `predict_s`: "
        "the whole predict generator, video writer released; per-frame ms: Ultralytics' `Results.speed` "
        "(batch=4: per image). inferpath's `in-run s` is its summary's `wall_s` (pipeline start to last "
        "sink closed); the whole-process wall adds interpreter start, imports, config and model load.")
    defaults = build_config({}, "<defaults>")
    res.sections.append(
        f"Commands: (a)/(b) `inferpath run --source {video.name} --model M -o DIR` (built-in defaults: "
        f"max_batch {defaults.backend.max_batch}, JSONL + {defaults.output.video_codec} .mp4); INT8 made by `inferpath quantize --calib {video.name} -o "
        f"{int8.name}` ({q_wall:.0f} s, {gate_line}); (c) `YOLO('{fp32.name}', task='detect')"
        f".predict(source='{video.name}', save=True, stream=True, imgsz=416, conf={m.conf_threshold:g}, "
        f"iou={m.iou_threshold:g}, rect=False, verbose=False)` (MJPG .avi, Ultralytics' Linux default), "
        f"(d) the same with `batch=4`, in `{py}`"
        + (f" ({', '.join(f'{k} {v}' for k, v in versions.items())})" if versions else "")
        + (f". Note: {last['note']}" if last.get("note") else "") + ".")
    return res


# ------------------------------------------------------------------------------------------------
# plots


def write_plots(results: list[ModeResult], out: Path, budget: float) -> list[Path]:
    """PNG plots: latency over time per live speed, and where the time goes per stage."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench: plots need matplotlib: pip install 'inferpath[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for r in results:
        for plot, series in r.series.items():
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(9, 4.5))
            for label, (t, ms) in series.items():
                if len(t):
                    ax.plot(t, ms, ".", ms=2, label=f"{label} (p99 {np.percentile(ms, 99):.0f} ms)")
            ax.axhline(budget, color="red", ls="--", lw=1, label=f"budget {budget:g} ms")
            ax.set_yscale("log")
            ax.set_xlabel("seconds since start")
            ax.set_ylabel("end-to-end latency, ms (log)")
            ax.set_title(f"{plot}: latency over time")
            ax.legend(loc="upper left", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            path = out / f"latency_{plot.replace(' ', '_')}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    stages = {label: d for r in results for label, d in r.stage_p50.items()}
    if stages:
        # Two panels: the work each stage does (ms, queue excluded: in a batch job the queue wait is
        # backpressure and would dwarf the rest), and each stage's share of the end-to-end time.
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
        labels = list(stages)
        bottom = np.zeros(len(labels))
        shares_bottom = np.zeros(len(labels))
        totals = np.array([sum(np.nan_to_num(stages[lab].get(st, 0.0)) for st in STAGES) for lab in labels])
        colors = dict(zip(STAGES, plt.get_cmap("tab10").colors))  # one colour per stage in both panels
        for stage in STAGES:
            vals = np.nan_to_num(np.array([stages[lab].get(stage, 0.0) for lab in labels]))
            share = 100 * vals / np.maximum(totals, 1e-9)
            ax2.bar(labels, share, bottom=shares_bottom, label=stage, color=colors[stage])
            shares_bottom += share
            if stage == "queue":
                continue
            ax.bar(labels, vals, bottom=bottom, label=stage, color=colors[stage])
            bottom += vals
        ax.set_ylabel("p50 ms per stage (stacked, queue wait excluded)")
        ax.set_title("Work per frame, by stage")
        ax.legend(fontsize=8)
        ax2.set_ylabel("% of the summed stage p50s")
        ax2.set_title("Share of the time, queue wait included")
        ax2.legend(fontsize=8)
        for a in (ax, ax2):
            plt.setp(a.get_xticklabels(), rotation=15, ha="right", fontsize=8)
        fig.tight_layout()
        path = out / "stages.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# main

MODES: dict[str, Callable[[argparse.Namespace, Path], ModeResult]] = {
    "batch": mode_batch, "live": mode_live, "precision": mode_precision, "streams": mode_streams,
    "tracking": mode_tracking,
    "web": mode_web,
    "cluster": mode_cluster,
    "ultralytics": mode_ultralytics,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Inferpath benchmarks (see the module docstring).")
    ap.add_argument("--modes", help=f"comma-separated, from {','.join(ALL_MODES)} (default: batch; with --report: all)")
    ap.add_argument("--report", metavar="DIR", help="run every mode, write DIR/bench.md and PNG plots")
    ap.add_argument("--quick", action="store_true", help="short runs: 1 round, 15 s live, 8 s per streams step")
    ap.add_argument("--duration", type=float, help="seconds per live run (default 60, --quick 15)")
    ap.add_argument("--model", help="ONNX model (default: the bundled one)")
    ap.add_argument("--video", help="batch-mode video (default sample_videos/vtest.avi)")
    ap.add_argument("--frames", type=int, help="batch mode: use only the first N frames")
    ap.add_argument("--repeats", type=int, help="interleaved rounds per measurement (default 3, --quick 1)")
    ap.add_argument("--budget-ms", type=float, default=250.0, help="live-mode latency budget (default 250)")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                    help="batch mode: sweep max_batch x threads (default on, off with --quick)")
    ap.add_argument("--sweep-frames", type=int, default=200, help="frames per sweep run (default 200)")
    ap.add_argument("--sweep-repeats", type=int, help="rounds for the sweep (default: --repeats)")
    ap.add_argument("--sweep-batches", default="1,2,4")
    ap.add_argument("--sweep-threads", default="0,1,2")
    ap.add_argument("--sweep-video", action=argparse.BooleanOptionalAction, default=True,
                    help="sweep with the video sink on (the default outputs); --no-sweep-video: JSONL only")
    ap.add_argument("--streams-duration", type=float, help="seconds per streams step (default 20, --quick 8)")
    ap.add_argument("--no-ultralytics", action="store_true", help="live mode: skip the Ultralytics peer")
    ap.add_argument("--live-max-batch", type=int, help="live mode: the pipeline's backend.max_batch (default: auto)")
    ap.add_argument("--live-workers", type=int,
                    help="live mode: backend.onnxruntime.workers (default: auto; 1 = never calls side by side)")
    ap.add_argument("--ul-python", default=os.environ.get("INFERPATH_UL_PYTHON", UL_PYTHON_DEFAULT),
                    help=f"python of the Ultralytics venv (default {UL_PYTHON_DEFAULT})")
    args = ap.parse_args(argv)
    if args.modes is None:
        args.modes = ",".join(ALL_MODES) if args.report else "batch"
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode {bad[0]!r}; expected one of {', '.join(ALL_MODES)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.sweep is None:
        args.sweep = not args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        try:
            import matplotlib  # noqa: F401  (fail before the long run, not after it)
        except ImportError:
            print("bench: --report needs matplotlib: pip install 'inferpath[bench]'", file=sys.stderr)
            return 2
        Path(args.report).mkdir(parents=True, exist_ok=True)
    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="inferpath-bench-"))
    results: list[ModeResult] = []
    try:
        for mode in args.modes:
            progress(f"mode {mode}: start")
            t0 = time.perf_counter()
            try:
                r = MODES[mode](args, work)
            except Exception as exc:  # one failed mode never hides the others
                traceback.print_exc(file=sys.stderr)
                r = ModeResult(mode, error=f"{type(exc).__name__}: {exc}")
                r.sections.append(f"### {mode}\n\n**failed:** {r.error}")
            progress(f"mode {mode}: done in {time.perf_counter() - t0:.0f} s")
            results.append(r)
            print("\n\n".join(r.sections) + "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load average at end"] = loadavg()
    if args.report:
        out = Path(args.report)
        plots = write_plots(results, out, args.budget_ms)
        md = ["# Inferpath benchmark", "", "## Machine", "",
              md_table(["", ""], [[k, v] for k, v in info.items()]), "",
              "Numbers come from one run with every system side by side; on a shared machine compare "
              "ratios and medians within this report, not absolute fps across reports.", ""]
        for r in results:
            md += [f"## {r.name}", "", "\n\n".join(r.sections), ""]
        if plots:
            md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
        (out / "bench.md").write_text("\n".join(md) + "\n")
        progress(f"report written: {out / 'bench.md'} and {len(plots)} plot(s)")
    else:
        print(md_table(["machine", ""], [[k, v] for k, v in info.items()]))
    return 1 if all(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
