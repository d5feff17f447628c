"""ONNX Runtime on a CPU: one call on every core, or calls side by side (issue 13).

    python scripts/bench_calls.py [ROUNDS]

Times the bundled model over 240 preprocessed frames of vtest.avi three ways: one session on
every core with one caller (the classic bare loop), two sessions with half the cores and a caller
each, and one session with half the cores and two callers (what ``backend.onnxruntime.workers:
auto`` runs for files). What it found is in docs/bench/outputs.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.common import BATCH_VIDEO, backend_config, read_video, time_backend  # noqa: E402

from pipeline.preprocess import preprocess  # noqa: E402
from pipeline.runtime import make_backend, resolve_model  # noqa: E402


def main(rounds: int) -> None:
    cfg = backend_config(None, max_batch=4)
    path, spec = resolve_model(cfg)
    tensors = [preprocess(image, spec)[0] for image in read_video(BATCH_VIDEO, 240)]
    every_core = make_backend(cfg, path)
    halves = [make_backend(cfg, path, workers=2) for _ in range(2)]
    for r in range(rounds):
        rows = [(f"batch {b}", time_backend(every_core, tensors, b), time_backend(halves, tensors, b),
                 time_backend([halves[0]] * 2, tensors, b)) for b in (1, 4)]
        print(f"round {r + 1}: " + "; ".join(
            f"{name}: one session, one caller {one:.1f}, two sessions {two:.1f}, one session two callers "
            f"{shared:.1f} fps" for name, one, two, shared in rows), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
