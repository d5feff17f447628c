"""Inferpath benchmarks: batch throughput, live latency, precision, streams per machine.

One script, modes chosen on the command line, everything measured in one run so the numbers
sit side by side under the same load (a shared machine is noisy: compare ratios and medians from
one run, not absolute figures across runs). Wall-clock time only (``time.perf_counter`` and the
pipeline's own monotonic stamps); nothing here is a timed unit test.

Modes:

* ``batch``: the bare backend on frames preprocessed in memory (the *bound*), a naive
  one-thread loop, and the pipeline over the same file, with and without the video sink; R rounds
  interleaved, medians. A sweep of ``backend.max_batch`` x ORT intra-op threads says which
  config gets the pipeline closest to the bound.
* ``live``: a realtime looping source at 1x, 2x and 3x speed through the pipeline with a latency
  budget, against a naive "read, infer, repeat" loop fed by an unbounded camera buffer and,
  where its venv exists, Ultralytics on the same ONNX (``scripts/bench_ultralytics.py``).
* ``precision``: FP32, FP16, INT8 for onnxruntime and INT8 for tensorrt on ORT CPU: size, fps,
  pseudo-mAP and agreement with FP32, convs kept in float; a whole run FP32 vs INT8.
* ``streams``: how many realtime 10 fps streams fit the 500 ms budget with < 1 % drops,
  batching on and off.
* ``tracking``: tracker cost per frame by object count (ByteTrack, SORT, OC-SORT), tracking
  cost per stream in the pipeline, and MOTA / IDF1 on degraded MOTChallenge ground truth.
* ``web``: pipeline throughput with the live view off, on with 0 viewers, and with 1 and 10
  MJPEG viewers (``scripts/mjpeg_viewers.py``, another process); the viewers' first-frame time
  and how far the video they receive is behind the sink.
* ``cluster``: realtime 10 fps streams held within the budget by the local engine and by 1 and
  2 Ray workers on this machine (``pip install 'inferpath[cluster]'``): the cost of the cluster layer.
* ``ultralytics``: whole ``inferpath run`` processes on a file with the annotated video written,
  INT8 (onnxruntime form, made by ``inferpath quantize``) and FP32, against Ultralytics
  ``predict(source=..., save=True)`` on the same FP32 ONNX in its venv; interleaved rounds.

Usage::

    python scripts/bench.py                           # batch mode
    python scripts/bench.py --modes live,streams --quick
    python scripts/bench.py --report bench-out/       # every mode, bench.md + PNG plots

Tables go to stdout (markdown), progress to stderr. One module per mode in ``scripts/bench/``
(``bench/<mode>.py``); the command line is ``bench/cli.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside this file
from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
