"""ONNX Runtime on a CPU: one call on every core, or calls side by side (issue 13).

    python scripts/bench_calls.py [ROUNDS]

Times the bundled model over 240 preprocessed frames of vtest.avi three ways: one session with
2 intra-op threads and one caller (the classic bare loop), two 1-thread sessions with a caller
each, and one 1-thread session with two callers. What it found is in docs/bench/outputs.md and
behind ``backend.onnxruntime.workers: auto``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.model import bundled_model_path, load_spec  # noqa: E402
from pipeline.preprocess import preprocess  # noqa: E402
from pipeline.videoio import opened_video, sample_frames  # noqa: E402

N = 240


def session(threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(bundled_model_path()), so, providers=["CPUExecutionProvider"])


def timed(sessions: list[ort.InferenceSession], frames: list[np.ndarray], batch: int) -> float:
    """Frames/s with one caller thread per entry of ``sessions`` (an entry may repeat)."""
    name = sessions[0].get_inputs()[0].name
    batches = [np.stack(frames[i:i + batch]) for i in range(0, len(frames), batch)]
    for s in set(sessions):
        s.run(None, {name: batches[0]})
    callers = [threading.Thread(target=lambda s, part: [s.run(None, {name: b}) for b in part],
                                args=(s, batches[k::len(sessions)])) for k, s in enumerate(sessions)]
    t0 = time.perf_counter()
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    return len(frames) / (time.perf_counter() - t0)


def main(rounds: int) -> None:
    spec = load_spec(bundled_model_path(), None)
    with opened_video(ROOT / "sample_videos" / "vtest.avi") as cap:
        frames = [preprocess(image, spec)[0] for _, image in sample_frames(cap, range(N))]
    two_threads, ones, shared = session(2), [session(1), session(1)], session(1)
    for r in range(rounds):
        print(f"round {r + 1}: one 2-thread session, one caller: b1 {timed([two_threads], frames, 1):.1f} "
              f"b4 {timed([two_threads], frames, 4):.1f} fps; two 1-thread sessions: b1 {timed(ones, frames, 1):.1f} "
              f"b4 {timed(ones, frames, 4):.1f} fps; one 1-thread session, two callers: "
              f"b1 {timed([shared, shared], frames, 1):.1f} fps", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
