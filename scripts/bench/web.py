"""``web``: pipeline throughput with the live view off, on with 0 viewers, and with 1 and 10
MJPEG viewers (``scripts/mjpeg_viewers.py``, another process); the viewers' first-frame time
and how far the video they receive is behind the sink.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BATCH_VIDEO, ROOT, ModeResult, base_config, md_table, median, progress
from pipeline.runtime import Pipeline, RunSummary


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

    pipe = Pipeline(cfg)
    view = LiveView.attach(pipe, cfg.output.web) if viewers is not None else None
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


def run(args: argparse.Namespace, work: Path) -> ModeResult:
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
