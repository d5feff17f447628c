"""``live``: a realtime looping source at 1x, 2x and 3x speed through the pipeline with a latency
budget, against a naive "read, infer, repeat" loop fed by an unbounded camera buffer and,
where its venv exists, Ultralytics on the same ONNX (``scripts/bench_ultralytics.py``).
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_ultralytics import camera  # stdlib-only module, shared with the Ultralytics venv

from bench.common import (
    LIVE_VIDEO,
    ROOT,
    UL_HINT,
    ModeResult,
    backend_config,
    base_config,
    e2e_series,
    md_table,
    progress,
    read_video,
    run_pipeline,
    side_frames,
    stage_p50,
    time_backend,
)
from pipeline.config import build_config
from pipeline.metrics import percentiles
from pipeline.runtime import make_backend, resolve_format, resolve_model


def loop_row(key: str, name: str, r: dict, series: dict, duration: float, budget: float) -> list[Any]:
    """A comparison loop's row (naive, Ultralytics): ``r["frames"]`` holds (capture, done) times;
    its latency series goes into ``series[key]`` for the plot."""
    arr = np.asarray(r["frames"], np.float64).reshape(-1, 2)
    t, lat = arr[:, 1], (arr[:, 1] - arr[:, 0]) * 1000
    series[key] = (t, lat)
    return live_row(name, t, lat, r["produced"], {}, duration, budget, r["backlog"])


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


def run(args: argparse.Namespace, work: Path) -> ModeResult:
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
                                            budget, float(rows[-1][9]), before, side_frames(pipe)))
        except Exception as exc:
            rows.append(["pipeline", f"error: {type(exc).__name__}: {exc}"] + [""] * (len(LIVE_HEADERS) - 2))
        progress(f"live {label}: naive loop for {duration:g} s")
        try:
            r = naive_live(LIVE_VIDEO, args.model, speed, duration)
            rows.append(loop_row("naive", "naive (unbounded buffer)", r, series, duration, budget))
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
                rows.append(loop_row("ultralytics", "ultralytics (per-frame predict)", r, series, duration, budget))
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
