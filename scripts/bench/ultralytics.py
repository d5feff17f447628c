"""``ultralytics``: whole ``inferpath run`` processes on a file with the annotated video written,
INT8 (onnxruntime form, made by ``inferpath quantize``) and FP32, against Ultralytics
``predict(source=..., save=True)`` on the same FP32 ONNX in its venv; interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BATCH_VIDEO,
    ROOT,
    UL_HINT,
    ModeResult,
    backend_config,
    base_config,
    loadavg,
    md_table,
    median,
    progress,
)
from pipeline.config import build_config
from pipeline.runtime import resolve_model


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


def run(args: argparse.Namespace, work: Path) -> ModeResult:
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
