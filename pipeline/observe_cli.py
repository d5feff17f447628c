"""Observability subcommands: ``inspect`` (what a model is and costs) and ``profile`` (a drift
reference from a video). Argument parsing only; the work is in :mod:`pipeline.inspect_model` and
:mod:`pipeline.drift`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the model report (``--json``: as JSON); ``--run`` adds a timed pipeline run."""
    from pipeline.inspect_model import describe_model, format_report, profile_run

    if args.frames < 1:
        raise ConfigError(f"--frames: expected an integer >= 1, got {args.frames}")
    data = describe_model(args.model)
    if args.run:
        data["run"] = profile_run(args.model, args.video, args.frames)
    if args.json:
        print(json.dumps(data, indent=2, default=lambda x: None if x != x else x))
    else:
        print(format_report(data))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Write the drift reference profile of a video (see :mod:`pipeline.drift`)."""
    from pipeline.drift import STAT_NAMES, write_profile

    out = Path(args.output) if args.output else Path.cwd() / f"{Path(args.video).stem}.profile.json"
    profile = write_profile(args.video, out, frames=args.frames)
    stats = ", ".join(f"{n} {m:.1f} ± {s:.1f}" for n, m, s in zip(STAT_NAMES, profile.mean, profile.std))
    print(f"{out}: {profile.frames} frames of {profile.video}: {stats}")
    print(f"use it with: --set metrics.drift.reference={out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``inspect`` and ``profile`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "inspect", help="describe a model: inputs, outputs, format, FLOPs; --run for a per-stage timing",
        description="Inputs and outputs, the detected output format, the spec, operator counts, parameters, "
                    "estimated FLOPs per frame, opset and metadata of an ONNX model. With --run, a short "
                    "pipeline run over a sample video shows where the time goes, stage by stage.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--run", action="store_true", help="also time a short pipeline run (outputs off)")
    p.add_argument("--video", metavar="PATH", help="video for --run (default: sample_videos/vtest.avi)")
    p.add_argument("--frames", type=int, default=60, metavar="N", help="frames for --run (default: 60)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "profile", help="write a drift reference profile (input statistics) of a video",
        description="Mean and spread of brightness, contrast and sharpness over frames spread through VIDEO, "
                    "written as JSON; point metrics.drift.reference at it to be warned when live input drifts.")
    p.add_argument("video", metavar="VIDEO", help="a video of normal conditions for the camera")
    p.add_argument("--frames", type=int, default=200, metavar="N", help="frames to sample (default: 200)")
    p.add_argument("--output", "-o", metavar="PATH", help="profile path (default: <video stem>.profile.json)")
    p.set_defaults(func=cmd_profile)


__all__ = ["register", "cmd_inspect", "cmd_profile"]
