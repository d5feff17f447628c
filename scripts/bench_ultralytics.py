"""Ultralytics peer for ``scripts/bench.py --modes live``: the same ONNX behind ``ultralytics.YOLO``.

Runs in its own virtual environment (Ultralytics pulls in PyTorch; Inferpath does not), started
as a subprocess by ``bench.py``. It simulates the same camera as bench's naive loop: a producer
thread decodes the video at its frame rate (times ``--speed``, looping) and pushes each frame with
its capture time into an *unbounded* queue, as OpenCV/FFmpeg buffers an RTSP stream; the consumer
calls ``model.predict(frame)`` one frame at a time (Ultralytics' own letterbox, normalization and
NMS). ``predict(stream=True)`` takes lists, paths and URLs but not a live in-memory generator, so
the per-frame call is the faithful "read, infer, repeat" shape. The script writes JSON: per-frame
``[capture_s, done_s]`` (seconds since the camera started), frames produced, backlog at the end.

``--mode file`` (for ``bench.py --modes ultralytics``) is the batch job a user runs on a file:
``YOLO(model, task="detect").predict(source=video, save=True, stream=True)`` over the whole video,
Ultralytics writing its annotated video. It times, in this process, the imports (torch,
Ultralytics), the ``YOLO()`` constructor, and the predict call from the first ``next()`` to the
generator's end (its lazy set-up, ORT session creation and warm-up, every frame, the video
writer's release); ``bench.py`` times the whole process around it. JSON: frames, boxes, those
seconds, the saved video's path and size.

Usage: ``python bench_ultralytics.py --model M.onnx --video V.avi --speed 1 --duration 60 --out r.json``
or ``python bench_ultralytics.py --mode file --model M.onnx --video V.avi --save-dir D --out r.json``
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
from pathlib import Path

T_START = time.perf_counter()  # before the heavy imports: file mode reports their cost


def camera(video: str, speed: float, stop: threading.Event, out: queue.Queue, t0_box: list[float]) -> None:
    """Push (frame, capture_time) at the video's rate into ``out`` until ``stop``; loops the file."""
    import cv2

    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    period = 1.0 / (fps * speed)
    t0 = time.perf_counter()
    t0_box.append(t0)
    i = 0
    while not stop.is_set():
        due = t0 + i * period
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        ok, frame = cap.read()
        if not ok:
            cap.release()
            cap = cv2.VideoCapture(video)
            ok, frame = cap.read()
            if not ok:
                break
        out.put((frame, due))
        i += 1
    cap.release()


_LIB: object = None  # keeps the torch.library registration alive


def ensure_torchvision_nms() -> str | None:
    """Make ``torchvision.ops.nms`` work where the installed torchvision has no usable C++ ops.

    PyPI's torchvision wheels are CUDA builds; next to a CPU-only torch their extension does not
    load and Ultralytics' NMS fails. Then a plain greedy NMS in torch is registered as the
    ``torchvision::nms`` operator (the same contract: indices of kept boxes, highest score first).
    Returns a note saying the fallback is in use, or None when torchvision's own kernel works.
    """
    global _LIB
    import torch

    try:
        import torchvision

        torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
        return None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"

    def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        if boxes.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        order = scores.argsort(descending=True)
        b = boxes[order]
        area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
        lt = torch.maximum(b[:, None, :2], b[None, :, :2])
        rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)
        suppressed = torch.zeros(len(b), dtype=torch.bool)
        keep = []
        for i in range(len(b)):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
        return order[torch.tensor(keep, dtype=torch.int64)]

    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", nms, "CPU")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # torchvision fakes it too
    _LIB.impl("qnms", nms, "CPU")
    import torchvision  # now imports: its fake registration for nms finds the operator

    def ops_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        return torch.ops.torchvision.nms(boxes, scores, iou_threshold)

    torchvision.ops.nms = ops_nms
    torchvision.ops.boxes.nms = ops_nms
    return f"torchvision C++ ops unavailable ({reason}); NMS ran as a greedy torch fallback"


def versions() -> dict[str, str]:
    """Versions of what the Ultralytics peer ran on (imports are already loaded by then)."""
    import cv2
    import numpy as np
    import onnxruntime
    import torch
    import torchvision
    import ultralytics

    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__}


def run_file(args: argparse.Namespace) -> dict:
    """``predict(source=video, save=True, stream=True)`` over the whole file; the times of each part."""
    nms_note = ensure_torchvision_nms()
    from ultralytics import YOLO

    t_imported = time.perf_counter()
    model = YOLO(args.model, task="detect")
    t_loaded = time.perf_counter()
    frames = boxes = 0
    first_s = None
    speeds: dict[str, list[float]] = {}  # Ultralytics' own per-frame ms: preprocess, inference, postprocess
    for res in model.predict(source=args.video, save=True, stream=True, imgsz=args.imgsz, conf=args.conf,
                             iou=args.iou, batch=args.batch, rect=False, project=args.save_dir, name="predict", exist_ok=True,
                             verbose=args.verbose):
        if first_s is None:
            first_s = time.perf_counter() - t_loaded
        frames += 1
        boxes += int(len(res.boxes)) if res.boxes is not None else 0
        for k, v in (res.speed or {}).items():
            speeds.setdefault(k, []).append(float(v))
    t_done = time.perf_counter()
    save_dir = Path(model.predictor.save_dir) if model.predictor is not None else None
    saved = sorted(p for p in save_dir.iterdir() if p.is_file()) if save_dir and save_dir.is_dir() else []
    predict_s = t_done - t_loaded
    return {
        "mode": "file", "frames": frames, "boxes": boxes, "note": nms_note,
        "import_s": t_imported - T_START, "load_s": t_loaded - t_imported, "predict_s": predict_s,
        "first_result_s": first_s, "in_process_s": t_done - T_START,
        "predict_fps": frames / predict_s if predict_s > 0 else 0.0,
        "speed_ms_p50": {k: statistics.median(v) for k, v in speeds.items() if v},
        "saved": [{"path": str(p), "bytes": p.stat().st_size} for p in saved],
        "versions": versions(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("live", "file"), default="live",
                    help="live: a realtime camera, per-frame predict; file: predict(save=True) over the file")
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--conf", type=float, default=0.35)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--save-dir", default="runs", help="file mode: Ultralytics' project folder for the video")
    ap.add_argument("--verbose", action="store_true", help="file mode: Ultralytics' per-frame log lines")
    ap.add_argument("--batch", type=int, default=1, help="file mode: frames per inference call (Ultralytics' default 1)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.mode == "file":
        Path(args.out).write_text(json.dumps(run_file(args)))
        return 0

    nms_note = ensure_torchvision_nms()
    import cv2
    from ultralytics import YOLO

    model = YOLO(args.model, task="detect")
    cap = cv2.VideoCapture(args.video)
    ok, first = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"{args.video}: cannot read a frame")
    for _ in range(3):  # warm-up (session creation, first-call allocations) before the clock starts
        model.predict(first, imgsz=args.imgsz, conf=args.conf, iou=args.iou, rect=False,
                      verbose=False)

    q: queue.Queue = queue.Queue()  # unbounded, like a stream buffer
    stop = threading.Event()
    t0_box: list[float] = []
    producer = threading.Thread(target=camera, args=(args.video, args.speed, stop, q, t0_box), daemon=True)
    producer.start()
    while not t0_box:
        time.sleep(0.001)
    t0 = t0_box[0]
    records: list[list[float]] = []
    boxes = 0
    while True:
        now = time.perf_counter()
        if now - t0 >= args.duration:
            break
        try:
            frame, captured = q.get(timeout=0.1)
        except queue.Empty:
            continue
        res = model.predict(frame, imgsz=args.imgsz, conf=args.conf, iou=args.iou, rect=False,
                      verbose=False)
        done = time.perf_counter()
        boxes += int(len(res[0].boxes)) if res and res[0].boxes is not None else 0
        records.append([captured - t0, done - t0])
    stop.set()
    producer.join(2.0)
    backlog = q.qsize()
    result = {
        "frames": records,
        "produced": len(records) + backlog,
        "backlog": backlog,
        "boxes": boxes,
        "note": nms_note,
        "versions": versions(),
    }
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
