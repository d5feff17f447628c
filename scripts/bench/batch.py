"""``batch``: the bare backend on frames preprocessed in memory (the *bound*), a naive
one-thread loop, and the pipeline over the same file, with and without the video sink; R rounds
interleaved, medians. A sweep of ``backend.max_batch`` x ORT intra-op threads says which
config gets the pipeline closest to the bound.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    BATCH_VIDEO,
    ROOT,
    ModeResult,
    RssPeak,
    backend_config,
    base_config,
    md_table,
    median,
    progress,
    read_video,
    run_pipeline,
    stage_p50,
    time_backend,
)
from pipeline.config import Config, load_config
from pipeline.runtime import RunSummary, make_backend, resolve_format, resolve_model
from pipeline.runtime.plan import inference_workers


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


def run(args: argparse.Namespace, work: Path) -> ModeResult:
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
    res.failures += [f"batch: {name}: {why}" for name, why in errors.items()]
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
    res.failures += [f"batch sweep: max_batch {c[0]}, threads {c[1]}: {why}" for c, why in perr.items()]
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
