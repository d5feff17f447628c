#!/usr/bin/env python3
"""One inference call per frame, batch 1, for several ONNX models side by side (docs/bench/models.md).

Real frames of a video through the pipeline's own preprocessing (each model's spec), the models
interleaved round by round so that a change in the machine's load hits them all alike; the median
of the rounds, for each intra-op thread count. Run it under the heavy lock:

    flock /tmp/heavy.lock python scripts/bench_models.py pipeline/models/nanodet_coco.onnx \
        pipeline/models/centernet_coco.onnx [more.onnx ...] [--threads 2,1] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.model import load_spec  # noqa: E402
from pipeline.preprocess import preprocess  # noqa: E402
from pipeline.videoio import open_video  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--video", type=Path, default=Path(__file__).resolve().parent.parent / "sample_videos" / "vtest.avi")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="2,1")
    args = ap.parse_args()
    cap = open_video(str(args.video))
    frames = []
    while len(frames) < args.frames:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    inputs = {m: [preprocess(f, load_spec(m))[0][None] for f in frames] for m in args.models}
    print(f"| model | threads | ms per call (median of {args.rounds}) | rounds | calls/s |")
    print("|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        sessions = {}
        for m in args.models:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sessions[m] = ort.InferenceSession(str(m), so, providers=["CPUExecutionProvider"])
            name = sessions[m].get_inputs()[0].name
            for x in inputs[m][:5]:  # warm-up
                sessions[m].run(None, {name: x})
        times: dict[Path, list[float]] = {m: [] for m in args.models}
        for _ in range(args.rounds):
            for m, sess in sessions.items():
                name = sess.get_inputs()[0].name
                t0 = time.perf_counter()
                for x in inputs[m]:
                    sess.run(None, {name: x})
                times[m].append((time.perf_counter() - t0) / len(inputs[m]) * 1000)
        for m in args.models:
            med = statistics.median(times[m])
            print(f"| {m.name} | {threads} | {med:.1f} | {', '.join(f'{t:.1f}' for t in times[m])} | {1000 / med:.1f} |")
    print(f"\nload average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
