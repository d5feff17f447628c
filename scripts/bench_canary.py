#!/usr/bin/env python3
"""The FP32 canary's two targets (issue 25), reproduced: ``docs/bench/canary.md``.

(a) **Cost.** A gated INT8 model on a live (realtime, looping) ``Megamind.avi`` offered at twice
    what the INT8 backend can do (2 x its bare frames/s, measured first), with the default latency
    budget of the live bench (250 ms): the same run without and with ``model.canary``
    (``every_s`` 10), alternated ``--pairs`` times. Reported: frames delivered by each, the
    canary's CPU time and share of one core, and what it costs the stream (1 - with / without).
(b) **Detection.** The same INT8 model with every weight tensor damaged after the gate (gaussian
    noise, sigma 10 % of the tensor's standard deviation: :func:`damage_weights`) on a live 1x
    loop of ``vtest.avi`` with the canary at its defaults: seconds from the first frame to the
    canary's warning.

Run it under the heavy lock on a quiet machine::

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_canary.py --duration 60 --pairs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEGAMIND = ROOT / "sample_videos" / "Megamind.avi"
VTEST = ROOT / "sample_videos" / "vtest.avi"


def damage_weights(src: str | Path, dst: str | Path, rel: float = 0.1, seed: int = 0) -> int:
    """Write ``src`` with gaussian noise added to every weight tensor (an initializer of 2+
    dimensions: the convolutions' kernels), sigma ``rel`` times that tensor's standard deviation:
    int8 weights (an INT8 model's) in their own integer units, rounded and clipped to [-127, 127];
    float16 / float32 weights as they are. Biases, scales and zero points are left alone (a model
    whose kernels were corrupted after it passed the gate). Returns how many tensors changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    changed = 0
    for i, tensor in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(tensor)
        if w.ndim < 2 or w.size < 2 or w.dtype not in (np.int8, np.float16, np.float32):
            continue
        noise = rng.normal(0.0, rel * float(w.astype(np.float64).std()), w.shape)
        if w.dtype == np.int8:
            noisy = np.clip(np.rint(w + noise), -127, 127).astype(np.int8)
        else:
            noisy = (w + noise).astype(w.dtype)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy, tensor.name))
        changed += 1
    onnx.save(model, str(dst))
    return changed


def say(msg: str) -> None:
    sys.stderr.write(f"[bench_canary {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def gated_int8(work: Path) -> Path:
    """``inferpath quantize`` on vtest.avi with the accuracy gate on (it must pass)."""
    from pipeline.cli import main

    out = work / "nanodet.int8.onnx"
    rc = main(["quantize", "--calib", str(VTEST), "--frames", "32", "--gate-frames", "64", "-o", str(out)])
    if rc != 0:
        raise SystemExit(f"quantize failed (exit {rc})")
    return out


def bare_fps(model: Path) -> float:
    """The INT8 backend's frames/s at batch 1 on every core (the live pipeline's first session)."""
    from pipeline.config import build_config
    from pipeline.precision import read_frames
    from pipeline.preprocess import preprocess
    from pipeline.runtime import make_backend, resolve_model

    cfg = build_config({"model": {"path": str(model)}})
    path, spec = resolve_model(cfg)
    backend = make_backend(cfg, path)
    tensors = [preprocess(f, spec)[0][None] for f in read_frames(MEGAMIND, 48)[0]]
    try:
        for t in tensors[:4]:
            backend.infer(t)
        t0 = time.perf_counter()
        for t in tensors:
            backend.infer(t)
        return len(tensors) / (time.perf_counter() - t0)
    finally:
        backend.close()


def live_run(model: Path, video: Path, speed: float, duration: float, budget_ms: float, canary: dict | None,
             work: Path, label: str) -> dict[str, Any]:
    """One live run; its delivered frames, drops and, with the canary, what it reported and when it warned."""
    from pipeline.config import build_config
    from pipeline.runtime import Pipeline

    data: dict[str, Any] = {
        "sources": [{"uri": str(video), "id": "live", "realtime": True, "loop": True, "speed": speed}],
        "model": {"path": str(model)},
        "pipeline": {"latency_budget_ms": budget_ms, "duration_s": duration, "progress": False},
        "output": {"dir": str(work / label), "jsonl": False, "video": False},
        "metrics": {"log_interval_s": 0},
    }
    if canary is not None:
        data["model"]["canary"] = canary
    warned: list[float] = []

    class Warned(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.WARNING and "canary: the" in record.getMessage():
                warned.append(time.monotonic())

    handler = Warned()
    logging.getLogger("pipeline.canary").addHandler(handler)
    try:
        pipe = Pipeline(build_config(data, "<bench_canary>"))
        summary = pipe.run(progress=False)
    finally:
        logging.getLogger("pipeline.canary").removeHandler(handler)
    s = summary.sources[0]
    first = pipe.metrics.series[("live", "capture")].times()
    t0 = float(first[0]) if len(first) else pipe.metrics.started
    return {"label": label, "frames_in": s.frames_in, "frames_out": s.frames_out, "drops": dict(s.drops),
            "wall_s": summary.wall_s, "e2e_ms": s.e2e_ms, "canary": s.canary,
            "warned_after_s": [round(w - t0, 1) for w in warned]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per live run (default 60)")
    ap.add_argument("--pairs", type=int, default=2, help="without/with canary pairs for (a), alternated (default 2)")
    ap.add_argument("--overload", type=float, default=2.0, help="offered rate / bare INT8 fps for (a) (default 2)")
    ap.add_argument("--budget-ms", type=float, default=250.0, help="latency budget (the live bench's default 250)")
    ap.add_argument("--every-s", type=float, default=10.0, help="model.canary.every_s (default 10)")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        work = Path(tmp)
        say("quantize (gated) on vtest.avi")
        int8 = gated_int8(work)
        fps = bare_fps(int8)
        speed = args.overload * fps / 23.976
        say(f"INT8 bare {fps:.1f} fps at batch 1; offering {args.overload:g}x = {args.overload * fps:.1f} fps "
            f"(Megamind at speed {speed:.2f})")
        results["bare_fps"], results["offered_fps"] = fps, args.overload * fps
        canary = {"every_s": args.every_s}
        runs = []
        for i in range(args.pairs):
            for with_canary in (False, True):
                label = f"{'with' if with_canary else 'without'}-{i}"
                say(f"(a) live {label} canary, {args.duration:g} s")
                runs.append(live_run(int8, MEGAMIND, speed, args.duration, args.budget_ms,
                                     canary if with_canary else None, work, label))
                r = runs[-1]
                say(f"    {r['frames_out']} of {r['frames_in']} frames delivered; canary {r['canary']}")
        results["cost_runs"] = runs
        out_without = sum(r["frames_out"] for r in runs if r["canary"] is None)
        out_with = sum(r["frames_out"] for r in runs if r["canary"] is not None)
        cpu = sum(r["canary"]["cpu_s"] for r in runs if r["canary"] is not None)
        wall = sum(r["wall_s"] for r in runs if r["canary"] is not None)
        pairs = [(a["frames_out"], b["frames_out"]) for a, b in zip(runs[::2], runs[1::2])]
        results["pairs"] = [{"without": a, "with": b, "cost_pct": 100 * (1 - b / a) if a else float("nan")}
                            for a, b in pairs]
        results["cost"] = {"delivered_without": out_without, "delivered_with": out_with,
                           "cost_pct": 100 * (1 - out_with / out_without) if out_without else float("nan"),
                           "canary_cpu_s": cpu, "canary_share_of_a_core_pct": 100 * cpu / wall if wall else 0.0}
        damaged = work / "nanodet.int8.damaged.onnx"
        n = damage_weights(int8, damaged, 0.1, 0)
        say(f"(b) {n} weight tensors damaged (10 % noise); live 1x vtest.avi with the canary, {args.duration:g} s")
        r = live_run(damaged, VTEST, 1.0, args.duration, args.budget_ms, {"every_s": args.every_s}, work,
                     "damaged")  # the FP32 model: the one its metadata names
        results["damaged"] = r
        say(f"    warned after {r['warned_after_s']} s; canary {r['canary']}")
    print(json.dumps(results, indent=2, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
