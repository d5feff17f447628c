"""``inferpath track``: MOTChallenge detections in, MOTChallenge results out, with the pipeline's
tracker and ``tracking:`` settings (from a deployment YAML and ``--set``, or the defaults)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from pipeline.config import load_config
from pipeline.errors import ConfigError


def cmd_track(args: argparse.Namespace) -> int:
    from pipeline.tracking.mot import DEFAULT_FPS, read_detections, sequence_fps, track_detections, write_results

    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ConfigError(f"--fps: expected a positive number, got {args.fps:g}")
    cfg = load_config(args.config, args.set or []).tracking
    dets = read_detections(args.detections)
    fps = args.fps or sequence_fps(args.detections) or DEFAULT_FPS
    rows = track_detections(dets, cfg, fps)
    write_results(args.output, rows)
    ids = len(set(rows[:, 1].astype(int).tolist())) if len(rows) else 0
    frames = int(dets[:, 0].max()) if len(dets) else 0
    print(f"{args.output}: {len(rows)} boxes in {ids} tracks over {frames} frames "
          f"({cfg.tracker}, {fps:g} fps)", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``track`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "track", help="track MOTChallenge detections (det.txt) into MOTChallenge results",
        description="Reads MOTChallenge detections (frame,id,x,y,w,h,conf,..., frames from 1), tracks them with "
                    "the pipeline's tracker and tracking: settings, and writes MOTChallenge results "
                    "(frame,id,x,y,w,h,conf,-1,-1,-1) for the standard scoring tools.")
    p.add_argument("config", nargs="?", help="deployment YAML whose tracking: settings to use (default: defaults)")
    p.add_argument("--detections", "-d", required=True, metavar="DET_TXT", help="MOTChallenge detections file")
    p.add_argument("--output", "-o", required=True, metavar="RESULT_TXT", help="results file to write")
    p.add_argument("--fps", type=float, metavar="N",
                   help="frame rate of the sequence (default: seqinfo.ini beside it, else 30)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=cmd_track)


__all__ = ["register", "cmd_track"]
