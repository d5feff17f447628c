"""The measuring half of scripts/gpu_check.sh (one subcommand per step; each exits 1 when its check
fails). Run on a GPU machine with TensorRT; nothing here is imported by the package or the tests.

    gates WORK VIDEO          every engine kind through TensorRT vs FP32 on ONNX Runtime (the gate)
    bench WORK VIDEO          inference fps per engine at batch 1 and 8; any error fails
    compare-runs REF CAND N   two `inferpath run` JSONL files: every frame in order, detections within the gate
    live SUMMARY BUDGET_MS    a live run at overload: frames dropped, the budget held, no source error
    live-run DIR VIDEO BUDGET_MS SOURCES FPS SECONDS INFERPATH CACHE_DIR
                              serve VIDEO over RTSP at FPS, `inferpath run` SOURCES streams of it on TensorRT, then live
    decode OUT VIDEO N        decode fps of a clip: OpenCV on the CPU vs NVDEC (PyNvVideoCodec)
    summary OUT               summary.json and summary.md from the steps' results

Results go to OUT (the parent of WORK) as <step>.json; ``summary`` reads them with steps.tsv.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Each engine kind: (label, model file under WORK or "fp32" for the bundled model, backend.tensorrt.precision)
ENGINES = (
    ("fp32", "fp32", "fp32"),
    ("fp16 (flag on TRT 10, converted on TRT 11)", "fp32", "fp16"),
    ("fp16 onnx", "model.fp16.onnx", "auto"),
    ("int8 minmax", "model.int8.onnx", "auto"),
    ("int8 entropy", "model.int8-entropy.onnx", "auto"),
    ("uint8 input", "model.uint8.onnx", "auto"),
    ("uint8 input, fp16 (flag / converted)", "model.uint8.onnx", "fp16"),
    ("fp16 + uint8 input", "model.fp16.uint8.onnx", "auto"),
)


def _out_of(run_dir: Path) -> Path:
    """OUT, for a run's directory OUT/work/<run> (where the step results go)."""
    return run_dir.parent.parent


def _write(out: Path, name: str, data: Any) -> None:
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def _trt_config(work: Path, precision: str, **extra: Any) -> Any:
    from pipeline.config import build_config

    return build_config({"backend": {"name": "tensorrt", "max_batch": 8,
                                     "tensorrt": {"precision": precision, "cache_dir": str(work / "engines")}},
                         **extra})


def _model(work: Path, name: str) -> Path:
    from pipeline.model import bundled_model_path

    return bundled_model_path() if name == "fp32" else work / name


def gates(work: Path, video: str) -> int:
    """Every engine kind through the TensorRT backend against FP32 on ONNX Runtime (CPU)."""
    from pipeline import precision as prec
    from pipeline.config import Config
    from pipeline.precision_cli import run_backends

    frames, _ = prec.read_frames_at(video, prec.held_out_indices(prec.count_frames(video), 64, ()))
    gate = prec.Gate(Config(), _model(work, "fp32"), frames, backends=run_backends())  # the reference: FP32 on ONNX Runtime
    assert gate.backend_name == "onnxruntime"
    rows, failed = [], 0
    for label, name, precision in ENGINES:
        path = _model(work, name)
        row: dict[str, Any] = {"engine": label, "model": str(path), "precision": precision}
        try:
            if not path.exists():
                raise FileNotFoundError(f"{path} was not prepared (see its step's log)")
            cfg = _trt_config(work, precision)
            with prec.Detector(cfg, path, backends=gate.backends) as cand:  # the candidate runs on TensorRT, never a fallback
                if cand.backend.name != "tensorrt":
                    raise RuntimeError(f"ran on {cand.backend.name}, not TensorRT (see the log)")
                got = cand.detect(gate.frames, gate.floor)
            report = prec.judge(gate.ref, got, cfg, gate.reference, path)
            row.update(passed=report.passed, map50=report.map50, found=report.found, kept=report.kept,
                       mean_iou=report.mean_iou, boxes=report.candidate_boxes, ref_boxes=report.reference_boxes,
                       weak=report.weak, failures=report.failures)
            print(report.table(), flush=True)
        except Exception as exc:
            row.update(passed=False, error=f"{type(exc).__name__}: {exc}")
        failed += not row["passed"]
        rows.append(row)
        print(f"{label}: {'PASS' if row['passed'] else 'FAIL'} {row.get('error') or row.get('failures') or ''}",
              flush=True)
    _write(work.parent, "gates", rows)
    return 1 if failed else 0


def bench(work: Path, video: str) -> int:
    """Inference-only fps per engine at batch 1 and 8; ORT CPU for reference. Any error fails."""
    import numpy as np

    from pipeline.backends.base import BackendOptions
    from pipeline.backends.tensorrt import TensorRTBackend
    from pipeline.config import Config
    from pipeline.model import load_spec
    from pipeline.precision import measure_fps, read_frames
    from pipeline.precision_cli import run_backends
    from pipeline.preprocess import preprocess

    frames, _ = read_frames(video, 8)
    rows, failed = [], 0
    for label, name, precision in ENGINES:
        path = _model(work, name)
        row: dict[str, Any] = {"model": label}
        try:
            cfg = _trt_config(work, precision).backend.tensorrt
            be = TensorRTBackend(str(path), BackendOptions(max_batch=8, extra={"tensorrt": cfg}))
            try:
                spec = load_spec(path)
                x = np.stack([preprocess(f, spec)[0] for f in frames])
                row["precision"] = be.plan.precision
                for b in (1, 8):
                    for _ in range(20):
                        be.infer(x[:b])
                    n, t0 = 200, time.perf_counter()
                    for _ in range(n):
                        be.infer(x[:b])
                    row[f"fps_b{b}"] = round(n * b / (time.perf_counter() - t0), 1)
            finally:
                be.close()
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            failed += 1
        rows.append(row)
        print(row, flush=True)
    for label, path in (("ort-cpu fp32", _model(work, "fp32")), ("ort-cpu int8", work / "model.int8.onnx")):
        if path.exists():
            rows.append({"model": label, "fps_b1": round(measure_fps(Config(), path, frames[0], run_backends(), 3.0), 1)})
    _write(work.parent, "bench", rows)
    return 1 if failed else 0


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def compare_runs(ref_path: Path, cand_path: Path, frames: int) -> int:
    """Every frame of the file, in order, in both runs; the candidate's detections within the gate
    of the reference's (both runs write boxes down to the gate's floor; see gpu_check.sh)."""
    import numpy as np

    from pipeline.config import Config
    from pipeline.frame import Detections
    from pipeline.precision.gate import judge

    def detections(rows: list[dict]) -> list[Detections]:
        out = []
        for r in rows:
            d = r["detections"]
            out.append(Detections(np.asarray([x["box"] for x in d], np.float32).reshape(-1, 4),
                                  np.asarray([x["score"] for x in d], np.float32),
                                  np.asarray([x["class_id"] for x in d], np.int64)))
        return out

    ref, cand = _jsonl(ref_path), _jsonl(cand_path)
    problems = []
    for name, rows in (("reference", ref), ("candidate", cand)):
        seqs = [r["seq"] for r in rows]
        if seqs != list(range(frames)):
            problems.append(f"{name}: {len(seqs)} frames, expected 0..{frames - 1} in order")
    report = judge(detections(ref), detections(cand), Config()) if not problems else None
    if report is not None:
        print(report.table())
        problems += report.failures
    result = {"reference": str(ref_path), "candidate": str(cand_path), "frames": frames, "problems": problems,
              **({"map50": report.map50, "found": report.found, "kept": report.kept} if report else {})}
    _write(_out_of(cand_path.parent), f"compare-{cand_path.parent.name}", result)
    print("\n".join(problems) or "ok")
    return 1 if problems else 0


def live(summary_path: Path, budget_ms: float) -> int:
    """A live run at overload: every source delivered frames, frames were dropped (it was
    overloaded), none failed, and each delivered frame's end-to-end p99 is within the budget."""
    s = json.loads(summary_path.read_text())
    problems = []
    drops = sum(sum(src["drops"].values()) for src in s["sources"])
    if drops == 0:
        problems.append("no frame dropped: the run was not overloaded")
    for src in s["sources"]:
        if src["error"] or src["frames_out"] == 0:
            problems.append(f"{src['id']}: {src['frames_out']} frames out, error {src['error']}")
        p99 = src["e2e_ms"]["p99"]
        if p99 is None or p99 > budget_ms:
            problems.append(f"{src['id']}: e2e p99 {p99} ms over the {budget_ms:g} ms budget")
    result = {"budget_ms": budget_ms, "fps": s["fps"], "drops": drops, "backend": s["backend"],
              "sources": [{k: src[k] for k in ("id", "frames_in", "frames_out", "drops", "e2e_ms")}
                          for src in s["sources"]], "problems": problems}
    _write(_out_of(summary_path.parent), "live", result)
    print(json.dumps(result, indent=2))
    return 1 if problems else 0


def live_run(out_dir: Path, video: str, budget_ms: float, sources: int, fps: float, duration: float,
             inferpath: str, cache_dir: str) -> int:
    """``inferpath run`` with the TensorRT backend on ``sources`` RTSP streams of ``video`` served at
    ``fps`` (more than the GPU path takes: overload), then :func:`live` on its summary."""
    import subprocess

    import yaml

    sys.path.insert(0, str(ROOT))
    from tests.rtsp import RtspServer, rtsp_available

    out_dir.mkdir(parents=True, exist_ok=True)
    why = rtsp_available()
    if why:
        _write(_out_of(out_dir), "live", {"budget_ms": budget_ms, "fps": 0, "drops": 0, "backend": "tensorrt",
                                        "sources": [], "problems": [f"no RTSP server: {why}"]})
        print(f"no RTSP server: {why}")
        return 1
    with RtspServer(Path(video), fps=fps) as srv:
        cfg = {"sources": [{"uri": srv.url, "id": f"cam{i}"} for i in range(sources)],
               "backend": {"name": "tensorrt", "tensorrt": {"cache_dir": cache_dir}},
               "pipeline": {"latency_budget_ms": budget_ms, "duration_s": duration, "progress": False},
               "output": {"dir": str(out_dir), "video": False}}
        path = out_dir / "live.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([inferpath, "run", str(path)], timeout=duration + 600)
    if proc.returncode != 0:
        print(f"inferpath run exited {proc.returncode}")
    return live(out_dir / "summary.json", budget_ms) or (1 if proc.returncode else 0)


def decode(out: Path, video: str, n: int) -> int:
    """Decode fps of ``video`` (first ``n`` frames): OpenCV/FFmpeg on the CPU vs NVDEC."""
    import cv2

    from pipeline.sources.nvdec import NvdecCapture, NvdecUnavailable

    result: dict[str, Any] = {"video": video, "frames": n}
    for name, opener in (("cpu", lambda: cv2.VideoCapture(video, cv2.CAP_FFMPEG)), ("nvdec", lambda: NvdecCapture(video))):
        try:
            cap = opener()
            t0, got = time.perf_counter(), 0
            while got < n and cap.read()[0]:
                got += 1
            result[f"{name}_fps"] = round(got / (time.perf_counter() - t0), 1)
            result[f"{name}_frames"] = got
            cap.release()
        except NvdecUnavailable as exc:
            result["nvdec"] = f"not measured: {exc}"
    _write(out, "decode", result)
    print(json.dumps(result, indent=2))
    return 0 if result.get("cpu_frames") else 1


def summary(out: Path) -> int:
    """summary.json (everything) and summary.md (what a person reads in a minute)."""
    steps = [dict(zip(("step", "status", "seconds"), line.split("\t"))) for line in
             (out / "steps.tsv").read_text().splitlines() if line.strip()] if (out / "steps.tsv").exists() else []
    parts = {name: json.loads((out / f"{name}.json").read_text())
             for name in ("gates", "bench", "live", "decode", "environment")
             if (out / f"{name}.json").exists()}
    compares = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("compare-*.json"))}
    failed = [s["step"] for s in steps if s["status"] != "ok"]
    data = {"passed": not failed and bool(steps), "failed_steps": failed, "steps": steps, **parts,
            "runs": compares}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    env = parts.get("environment", {})
    md = [f"# GPU check: {'PASSED' if data['passed'] else 'FAILED'}", "",
          f"{env.get('gpu', '?')}; TensorRT {env.get('tensorrt', '?')}; driver {env.get('driver', '?')}", ""]
    if failed:
        md += ["Failed: " + ", ".join(failed), ""]
    md += ["| step | status | time |", "|---|---|---|"] + [
        f"| {s['step']} | {s['status']} | {s['seconds']} s |" for s in steps]
    if "gates" in parts:
        md += ["", "## Accuracy gate through TensorRT (vs FP32 on ONNX Runtime)", "",
               "| engine | gate | pseudo-mAP | found / kept | note |", "|---|---|---|---|---|"]
        for r in parts["gates"]:
            md.append(f"| {r['engine']} | {'PASS' if r['passed'] else 'FAIL'} | {r.get('map50', '')} | "
                      f"{r.get('found', '')} / {r.get('kept', '')} | {r.get('error') or '; '.join(r.get('failures', []))} |")
    if "bench" in parts:
        md += ["", "## Inference fps (TensorRT; ONNX Runtime CPU for reference)", "",
               "| model | precision | batch 1 | batch 8 | note |", "|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r.get('precision', '')} | {r.get('fps_b1', '')} | {r.get('fps_b8', '')} | "
               f"{r.get('error', '')} |" for r in parts["bench"]]
    for name, r in compares.items():
        md += ["", f"## {name}: {'ok' if not r['problems'] else 'FAILED: ' + '; '.join(r['problems'])}"]
    if "live" in parts:
        lv = parts["live"]
        md += ["", f"## Live RTSP at overload: {'held' if not lv['problems'] else 'FAILED: ' + '; '.join(lv['problems'])}",
               "", f"{lv['fps']} fps out, {lv['drops']} frames dropped, budget {lv['budget_ms']} ms; e2e p99 per "
               "source: " + ", ".join(f"{s['id']} {s['e2e_ms']['p99']} ms" for s in lv["sources"])]
    if "decode" in parts:
        d = parts["decode"]
        md += ["", f"## Decode ({d['video']}, {d['frames']} frames): CPU {d.get('cpu_fps')} fps, "
               f"NVDEC {d.get('nvdec_fps', d.get('nvdec', '-'))}"]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "gates":
        return gates(Path(args[0]), args[1])
    if cmd == "bench":
        return bench(Path(args[0]), args[1])
    if cmd == "compare-runs":
        return compare_runs(Path(args[0]), Path(args[1]), int(args[2]))
    if cmd == "live":
        return live(Path(args[0]), float(args[1]))
    if cmd == "live-run":
        return live_run(Path(args[0]), args[1], float(args[2]), int(args[3]), float(args[4]), float(args[5]),
                        args[6], args[7])
    if cmd == "decode":
        return decode(Path(args[0]), args[1], int(args[2]))
    if cmd == "summary":
        return summary(Path(args[0]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
