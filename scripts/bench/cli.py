"""The command line: which modes run, in what order, and where the tables and report go.

Each mode is one module of this package with ``run(args, work) -> ModeResult``; it is imported
only when chosen, so a mode's heavy imports (trackers, Ray, matplotlib) cost the others nothing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import ModeResult, loadavg, machine_info, md_table, progress
from bench.report import write_report

ALL_MODES = ("batch", "live", "precision", "streams", "tracking", "web", "cluster", "ultralytics")
UL_PYTHON_DEFAULT = "/tmp/inferpath-ul-venv/bin/python"


def run_mode(mode: str, args: argparse.Namespace, work: Path) -> ModeResult:
    """Run one mode: ``bench/<mode>.py``'s ``run``."""
    return importlib.import_module(f"bench.{mode}").run(args, work)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Inferpath benchmarks (see the module docstring).")
    ap.add_argument("--modes", help=f"comma-separated, from {','.join(ALL_MODES)} (default: batch; with --report: all)")
    ap.add_argument("--report", metavar="DIR", help="run every mode, write DIR/bench.md and PNG plots")
    ap.add_argument("--quick", action="store_true", help="short runs: 1 round, 15 s live, 8 s per streams step")
    ap.add_argument("--duration", type=float, help="seconds per live run (default 60, --quick 15)")
    ap.add_argument("--model", help="ONNX model (default: the bundled one)")
    ap.add_argument("--video", help="batch-mode video (default sample_videos/vtest.avi)")
    ap.add_argument("--frames", type=int, help="batch mode: use only the first N frames")
    ap.add_argument("--repeats", type=int, help="interleaved rounds per measurement (default 3, --quick 1)")
    ap.add_argument("--budget-ms", type=float, default=250.0, help="live-mode latency budget (default 250)")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                    help="batch mode: sweep max_batch x threads (default on, off with --quick)")
    ap.add_argument("--sweep-frames", type=int, default=200, help="frames per sweep run (default 200)")
    ap.add_argument("--sweep-repeats", type=int, help="rounds for the sweep (default: --repeats)")
    ap.add_argument("--sweep-batches", default="1,2,4")
    ap.add_argument("--sweep-threads", default="0,1,2")
    ap.add_argument("--sweep-video", action=argparse.BooleanOptionalAction, default=True,
                    help="sweep with the video sink on (the default outputs); --no-sweep-video: JSONL only")
    ap.add_argument("--streams-duration", type=float, help="seconds per streams step (default 20, --quick 8)")
    ap.add_argument("--no-ultralytics", action="store_true", help="live mode: skip the Ultralytics peer")
    ap.add_argument("--live-max-batch", type=int, help="live mode: the pipeline's backend.max_batch (default: auto)")
    ap.add_argument("--live-workers", type=int,
                    help="live mode: backend.onnxruntime.workers (default: auto; 1 = never calls side by side)")
    ap.add_argument("--ul-python", default=os.environ.get("INFERPATH_UL_PYTHON", UL_PYTHON_DEFAULT),
                    help=f"python of the Ultralytics venv (default {UL_PYTHON_DEFAULT})")
    args = ap.parse_args(argv)
    if args.modes is None:
        args.modes = ",".join(ALL_MODES) if args.report else "batch"
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ALL_MODES]
    if bad:
        ap.error(f"unknown mode {bad[0]!r}; expected one of {', '.join(ALL_MODES)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.sweep is None:
        args.sweep = not args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        try:
            import matplotlib  # noqa: F401  (fail before the long run, not after it)
        except ImportError:
            print("bench: --report needs matplotlib: pip install 'inferpath[bench]'", file=sys.stderr)
            return 2
        Path(args.report).mkdir(parents=True, exist_ok=True)
    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="inferpath-bench-"))
    results: list[ModeResult] = []
    try:
        for mode in args.modes:
            progress(f"mode {mode}: start")
            t0 = time.perf_counter()
            try:
                r = run_mode(mode, args, work)
            except Exception as exc:  # one failed mode never hides the others
                traceback.print_exc(file=sys.stderr)
                r = ModeResult(mode, error=f"{type(exc).__name__}: {exc}")
                r.sections.append(f"### {mode}\n\n**failed:** {r.error}")
            progress(f"mode {mode}: done in {time.perf_counter() - t0:.0f} s")
            results.append(r)
            print("\n\n".join(r.sections) + "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load average at end"] = loadavg()
    if args.report:
        write_report(results, info, Path(args.report), args.budget_ms)
    else:
        print(md_table(["machine", ""], [[k, v] for k, v in info.items()]))
    failed = [f"{r.name}: {r.error}" for r in results if r.error] + [f for r in results for f in r.failures]
    for line in failed:  # an engine that fails at inference must not pass as a table row
        print(f"bench: FAILED {line}", file=sys.stderr)
    return 1 if failed else 0
