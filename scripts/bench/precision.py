"""``precision``: FP32, FP16, INT8 for onnxruntime and INT8 for tensorrt on ORT CPU: size, fps,
pseudo-mAP and agreement with FP32, convs kept in float; a whole run FP32 vs INT8.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BATCH_VIDEO,
    ROOT,
    ModeResult,
    backend_config,
    base_config,
    md_table,
    median,
    progress,
    read_video,
    run_pipeline,
    time_backend,
)
from pipeline.config import load_config
from pipeline.precision_cli import run_backends
from pipeline.runtime import make_backend, resolve_model


def run(args: argparse.Namespace, work: Path) -> ModeResult:
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
    gate = P.Gate(main_cfg, model_path, gate_frames, spec, backends=run_backends())
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
    res.failures += [f"precision: {labels[name]}: {why}" for name, why in errors.items()]
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
