"""The ``inferpath`` command line: run, config, quantize, convert, build-engine, doctor, inspect, profile.

Subcommands parse arguments and call the library; no logic here.

Every :class:`~pipeline.errors.InferpathError` becomes one line on stderr and a non-zero exit,
with no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from pipeline import __version__
from pipeline.config import apply_overrides, build_config, normalize_sources, read_yaml
from pipeline.errors import InferpathError, SourceError
from pipeline.logs import log_to_stderr

log = logging.getLogger("pipeline")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    log_to_stderr("%(asctime)s %(levelname)-7s %(message)s", level)
    from pipeline.sources import quiet_native_logs

    quiet_native_logs(debug=bool(verbose))


VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                  ".gif", ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _looks_like_source(arg: str) -> bool:
    """A positional argument that is a video, an image, a glob, a URL or a camera, not a YAML."""
    if "://" in arg or arg.lower().startswith("webcam:") or arg.startswith("/dev/video"):
        return True
    return Path(arg).suffix.lower() in VIDEO_SUFFIXES or any(c in arg for c in "*?[")


def _config_from_args(args: argparse.Namespace):
    """Config YAML (optional) + quick-case flags + ``--set`` overrides → a validated Config.

    A positional video, image, glob or URL is the source (``inferpath run video.mp4``), as
    Ultralytics users expect."""
    if args.config and _looks_like_source(args.config):
        args.source = [args.config, *(args.source or [])]
        args.config = None
    data = read_yaml(args.config) if args.config else {}
    origin = str(args.config) if args.config else "<command line>"
    if args.source:
        data["sources"] = [{"uri": s} for s in args.source]
        data.pop("source", None)
    if getattr(args, "realtime", False):
        srcs = data.get("sources") or []
        data["sources"] = [dict({"uri": s} if isinstance(s, str) else s, realtime=True) for s in srcs]
    sets = list(args.set or [])
    flag_sets = [
        ("model", "model.path"), ("output", "output.dir"), ("latency_budget_ms", "pipeline.latency_budget_ms"),
        ("duration", "pipeline.duration_s"), ("max_batch", "backend.max_batch"), ("backend", "backend.name"),
    ]
    for attr, key in flag_sets:
        value = getattr(args, attr, None)
        if value is not None:
            sets.insert(0, f"{key}={value}")
    if getattr(args, "metrics_port", None) is not None:
        sets[:0] = ["metrics.prometheus.enabled=true", f"metrics.prometheus.port={args.metrics_port}"]
    if getattr(args, "no_video", False):
        sets.insert(0, "output.video=false")
    if getattr(args, "display", False):
        sets.insert(0, "output.display=true")
    if getattr(args, "track", False):
        sets.insert(0, "tracking.enabled=true")
    if getattr(args, "serve", None) is not None:
        sets[:0] = ["output.web.enabled=true", f"output.web.port={args.serve}"]
    if sets:
        normalize_sources(data)
        apply_overrides(data, sets)
    return build_config(data, origin)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runtime import Pipeline

    cfg = _config_from_args(args)
    pipe = Pipeline(cfg)  # the engine (local, or Ray: this process is the driver) and observers follow cfg

    def on_signal(signum, _frame) -> None:
        pipe.stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = pipe.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(summary.table())
    out_dir = Path(cfg.output.dir).expanduser()
    if cfg.output.jsonl or cfg.output.video:
        _write_summary_json(out_dir / "summary.json", summary)
    code = 0
    for s in summary.sources:
        if s.error:
            print(f"inferpath: error: {s.id}: {s.error}", file=sys.stderr)
            code = code or (SourceError.exit_code if s.source_failed else 1)
        elif (not s.live and s.claimed_frames and s.frames_in < min(s.claimed_frames - 1, s.max_frames or s.claimed_frames)
              and summary.stopped_by is None):
            print(f"inferpath: error: {s.uri}: damaged or truncated video: {s.frames_in} of {s.claimed_frames} "
                  f"frames (per its header) were readable; processed those {s.frames_in}", file=sys.stderr)
            code = code or SourceError.exit_code
        elif not s.live and s.frames_in == 0 and summary.stopped_by is None:
            print(f"inferpath: error: {s.uri}: no decodable frames", file=sys.stderr)
            code = code or SourceError.exit_code
    if summary.stopped_by in _SIGNAL_EXIT:  # the shell convention: 128 + the signal's number
        code = code or _SIGNAL_EXIT[summary.stopped_by]
    return code


_SIGNAL_EXIT = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def _write_summary_json(path: Path, summary) -> None:
    data = {
        "model": summary.model, "backend": summary.backend, "wall_s": round(summary.wall_s, 3),
        "frames": summary.frames, "fps": round(summary.fps, 2), "batch_sizes": summary.batch_sizes,
        "stopped_by": summary.stopped_by,
        "stages_ms": {k: {"p50": v[0], "p95": v[1], "p99": v[2]} for k, v in summary.stages_ms.items()},
        "sources": [s.to_dict() for s in summary.sources],
        **({"workers": summary.workers} if getattr(summary, "workers", None) else {}),
    }
    try:
        path.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        log.warning("%s: cannot write summary (%s)", path, exc.strerror)


def _finite(value):
    """The same structure with NaN/inf as null: strict JSON parsers reject ``NaN``."""
    from pipeline.runtime.summary import finite

    return finite(value)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (after defaults and overrides) as YAML."""
    import yaml

    cfg = _config_from_args(args)
    from pipeline.sources import redacted_config

    print(yaml.safe_dump(redacted_config(cfg), sort_keys=False), end="")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="deployment YAML (see configs/), or a video, image or URL to run on")
    p.add_argument("--source", "-s", action="append", metavar="URI",
                   help="video file, glob, rtsp://, http(s)://, webcam:N (repeatable; replaces the config's)")
    p.add_argument("--model", "-m", metavar="PATH", help="ONNX model (default: the bundled NanoDet COCO)")
    p.add_argument("--output", "-o", metavar="DIR", help="output directory (default: outputs)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key (repeatable)")
    p.add_argument("--realtime", action="store_true", help="play files at their native frame rate, as cameras")
    p.add_argument("--latency-budget-ms", type=float, metavar="N", help="drop frames that cannot finish in N ms")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.add_argument("--max-batch", type=int, metavar="N", help="frames per inference call, across streams (default: backend.max_batch auto: 1 on a CPU, "
                        "where two calls run side by side instead; 4 on TensorRT and GPU providers)")
    p.add_argument("--backend", metavar="NAME", help="onnxruntime (default) or tensorrt")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on 127.0.0.1:N")
    p.add_argument("--no-video", action="store_true", help="do not write the annotated video")
    p.add_argument("--display", action="store_true", help="show a window per source (needs a display)")
    p.add_argument("--track", action="store_true", help="track objects (ids, trails, counting): tracking.enabled")
    p.add_argument("--serve", type=int, metavar="PORT",
                   help="live view in a browser at http://127.0.0.1:PORT/ (output.web)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferpath", description="Real-time video object detection.")
    parser.add_argument("--version", action="version", version=f"inferpath {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("run", help="run a deployment (or --source URI with the bundled model)")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("config", help="print the resolved config")
    _add_run_args(p)
    p.set_defaults(func=cmd_config)
    for module in ("pipeline.precision_cli", "pipeline.observe_cli", "pipeline.tracking.cli", "pipeline.service_cli"):
        _register_optional(module, sub)
    return parser


def _register_optional(module: str, sub) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InferpathError as exc:
        print(f"inferpath: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("inferpath: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``inferpath`` command: :func:`main`, then the process ends at once (:func:`exit_now`)."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` the way the interpreter would, less its tear-down: the
    threads still running are joined and the exit handlers run (logging's flush, Ray's shutdown),
    the standard streams are flushed, and the process ends without freeing every module and
    object one by one (about 0.1 s with ONNX Runtime, PyAV and pydantic loaded; every output is
    closed by then). For the command line only: a library caller's interpreter goes on."""
    import atexit
    import os
    import threading

    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said there
                pass
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
