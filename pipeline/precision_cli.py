"""CLI subcommands for model preparation: ``quantize``, ``convert``, ``build-engine``, ``doctor``.

``pipeline.cli`` calls :func:`register` with its subparsers. Handlers return an exit code and
raise :class:`~pipeline.errors.InferpathError` subclasses for user errors, which the CLI prints
as one line. A prepared model is written to a temporary file beside the output and only moved
into place once the accuracy gate passes, so a refused model never lands where a deployment
could pick it up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.errors import AccuracyGateError, ConfigError, ModelError
from pipeline.fileio import staged_path
from pipeline.model import bundled_model_path, run_spec


def register(subparsers: Any) -> None:
    """Add ``quantize``, ``convert``, ``build-engine`` and ``doctor`` to an argparse subparsers object."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", nargs="?", help="deployment YAML (default: built-in defaults, bundled model)")
        p.add_argument("--model", metavar="PATH", help="ONNX model (overrides model.path)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set precision.gate.min_map=0.85",
        )

    def gate_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-gate", action="store_true", help="skip the accuracy gate against the FP32 model")
        p.add_argument(
            "--gate-frames", type=int, metavar="N", help="held-out frames for the gate (default: precision.gate.frames)"
        )
        p.add_argument("--output", "-o", metavar="PATH", help="where to write the prepared ONNX")

    q = subparsers.add_parser(
        "quantize",
        help="write an INT8 model calibrated on your video, in the form your backend runs fastest",
        description="Calibrate on frames of VIDEO (preprocessed as the pipeline does) and write an INT8 ONNX "
        "for --target: onnxruntime (U8S8 Q/DQ, int8 weights: the fast CPU form) or tensorrt (symmetric "
        "S8S8 Q/DQ: the form TensorRT 10/11 builds). Then gate it against FP32 on other frames of the "
        "same video; if it fails, keep the most sensitive convolutions in float and try again.",
    )
    common(q)
    q.add_argument("--calib", metavar="VIDEO", help="video to calibrate on (your own footage)")
    q.add_argument("--calib-frames", metavar="DIR",
                   help="a directory of images (.png, .jpg) to calibrate on, alone or added to --calib's frames: "
                   "e.g. the frames the FP32 canary saved (model.canary.save_dir). Alone, half of them are held "
                   "out for the gate unless --gate-video is given")
    q.add_argument("--target", metavar="BACKEND",
                   help="onnxruntime | tensorrt: the backend the model is for (default: backend.name)")
    q.add_argument("--frames", type=int, metavar="N", help="calibration frames (default: precision.calib_frames)")
    q.add_argument(
        "--method",
        choices=("minmax", "entropy", "percentile"),
        help="calibration method (default: precision.calib_method)",
    )
    q.add_argument("--gate-video", metavar="VIDEO", help="video for the gate (default: --calib, other frames)")
    q.add_argument("--no-recover", action="store_true",
                   help="on a failed gate, refuse at once instead of keeping sensitive layers in float")
    gate_opts(q)
    q.set_defaults(func=cmd_quantize)

    c = subparsers.add_parser(
        "convert",
        help="write an FP16 and/or uint8-input model",
        description="--fp16: FP16 weights and compute, float32 inputs/outputs. --uint8-input: the model takes "
        "letterboxed uint8 BGR frames (NHWC) and normalizes inside the graph.",
    )
    common(c)
    c.add_argument("--fp16", action="store_true", help="convert to FP16 (float32 I/O kept)")
    c.add_argument("--uint8-input", action="store_true", help="take raw uint8 NHWC BGR frames")
    c.add_argument("--video", metavar="VIDEO", help="video for the accuracy gate (default: first file source)")
    gate_opts(c)
    c.set_defaults(func=cmd_convert)

    b = subparsers.add_parser(
        "build-engine",
        help="prebuild the TensorRT engine for a deployment",
        description="Build (or find) the cached TensorRT engine and print its path.",
    )
    common(b)
    b.set_defaults(func=cmd_build_engine)

    d = subparsers.add_parser("doctor", help="what hardware and libraries this machine has, and what will run")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)


# --------------------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Any:
    return load_config(args.config, list(args.overrides or []))


def _model_paths(args: argparse.Namespace, cfg: Any) -> tuple[Path, Path | None]:
    model = Path(args.model or cfg.model.path or bundled_model_path())
    spec = Path(cfg.model.spec) if cfg.model.spec else None
    if not model.is_file():
        raise ConfigError(f"model.path: {model}: model file not found")
    return model, spec


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag}: expected a positive integer, got {value}")


def _gate_video(args: argparse.Namespace, cfg: Any, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for src in cfg.sources:
        if Path(src.uri).is_file():
            return Path(src.uri)
    sample = Path("sample_videos/vtest.avi")
    if sample.is_file():
        return sample
    raise ConfigError("the accuracy gate needs frames: pass --video PATH (or --no-gate to skip it)")


@contextlib.contextmanager
def backend_errors_in_one_line(model: Path):
    """ONNX Runtime's own errors while calibrating or gating ``model`` (an input it rejects, an
    operator it lacks) become one ModelError line naming the model, as ``inferpath run`` reports
    an inference error, instead of a traceback."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelError(f"{model}: ONNX Runtime failed on it ({first})") from None


def _print_gate(report: Any) -> None:
    print(report.table())


def cmd_quantize(args: argparse.Namespace) -> int:
    """``inferpath quantize [CONFIG] --calib VIDEO [--calib-frames DIR] [--target T]``: INT8 model, gate, recovery."""
    from pipeline import precision as prec

    cfg = _config(args)
    if args.target:
        target = prec.check_target(args.target)
    else:
        target = prec.check_target(cfg.backend.name, "backend.name (the default --target)")
    model, spec_path = _model_paths(args, cfg)
    _positive(args.frames, "--frames")
    _positive(args.gate_frames, "--gate-frames")
    spec = run_spec(model, spec_path)
    n_gate = args.gate_frames or cfg.precision.gate.frames
    method = args.method or cfg.precision.calib_method
    output = Path(args.output or f"{model.stem}.int8.onnx")
    gating = not args.no_gate and cfg.precision.gate.enabled
    frames, calib_idx, gate_frames, what = _calibration_sets(args, args.frames or cfg.precision.calib_frames, n_gate,
                                                             gating)
    print(f"calibrating on {what} ({method}), target {target}", file=sys.stderr)
    with (backend_errors_in_one_line(model), prec.Calibration(model, frames, spec, method, calib_idx) as cal,
          staged_path(output, ".onnx") as tmp):
        if not gating:
            result = cal.quantize(tmp, target)
        else:
            result = _gate_and_recover(args, cfg, cal, target, tmp, gate_frames(), spec)
    kept = ", ".join(result.excluded_nodes) or "none"
    print(f"wrote {output} (INT8 for {target}; convs kept in float: {kept})")
    return 0


def _calibration_sets(args: argparse.Namespace, n_calib: int, n_gate: int, gating: bool):
    """``(calibration frames, their video indices, a callable giving the gate's frames, what was
    taken)`` from ``--calib VIDEO`` and/or ``--calib-frames DIR``. The video's frames are split as
    before (calibration and held-out never share a frame) and the directory's images are added to
    the calibration. A directory alone is split the same way, unless ``--gate-video`` (or
    ``--no-gate``) leaves every image to the calibration."""
    from pipeline import precision as prec

    if not args.calib and not args.calib_frames:
        raise ConfigError("quantize: nothing to calibrate on; pass --calib VIDEO and/or --calib-frames DIR")
    images = prec.read_image_dir(args.calib_frames)[0] if args.calib_frames else []

    def video_frames(video: str | Path) -> Any:
        return lambda: prec.read_frames_at(video, prec.held_out_indices(prec.count_frames(video), n_gate, ()))[0]

    if args.calib:
        calib_idx, gate_idx = prec.split_video(args.calib, n_calib, n_gate)
        frames, calib_idx = prec.read_frames_at(args.calib, calib_idx)
        if args.gate_video and Path(args.gate_video) != Path(args.calib):
            gate = video_frames(args.gate_video)
        else:
            gate = lambda: prec.read_frames_at(args.calib, gate_idx)[0]  # noqa: E731
        what = f"{len(frames)} frames of {args.calib}" + (f" and {len(images)} images of {args.calib_frames}"
                                                          if images else "")
        return frames + images, calib_idx, gate, what
    if args.gate_video or not gating:
        gate = video_frames(args.gate_video) if args.gate_video else (lambda: [])
        return images, [], gate, f"{len(images)} images of {args.calib_frames}"
    if len(images) < prec.MIN_VIDEO_FRAMES:
        raise ConfigError(f"--calib-frames: {args.calib_frames}: {len(images)} image(s); alone it needs at least "
                          f"{prec.MIN_VIDEO_FRAMES} (half to calibrate on, half held out for the accuracy gate), or "
                          "--gate-video VIDEO, or --no-gate")
    calib_idx = prec.spread_indices(len(images), min(n_calib, len(images) // 2), prec.CALIB_PHASE)
    gate_idx = prec.held_out_indices(len(images), n_gate, calib_idx)
    return ([images[i] for i in calib_idx], [], lambda: [images[i] for i in gate_idx],
            f"{len(calib_idx)} images of {args.calib_frames} ({len(gate_idx)} others held out for the gate)")


def _gate_and_recover(args, cfg, cal, target: str, tmp: Path, frames: list, spec) -> Any:
    """Quantize to ``tmp`` and gate it on ``frames``; on failure (unless --no-recover) keep
    sensitive convs in float.

    Returns the QuantizeResult of the model left at ``tmp``; a failure raises AccuracyGateError.
    """
    from pipeline import precision as prec

    gate = prec.Gate(cfg, cal.source, frames, spec, backends=run_backends())
    recover = cfg.precision.recover and not args.no_recover
    result, report, rec = prec.quantize_gated(cal, gate, target, tmp, recover, cfg.precision.max_float_layers,
                                              say=lambda line: print(line, file=sys.stderr))
    if rec is None:
        _print_gate(report)
        report.raise_if_failed()
        return result
    if rec.first_report is not None:
        print("first INT8 model:")
        _print_gate(rec.first_report)
    print(rec.summary())
    if not report.passed:
        raise AccuracyGateError(
            f"accuracy gate failed even with {len(rec.result.float_layers)} conv(s) in float "
            f"(precision.max_float_layers): " + "; ".join(report.failures)
            + " (calibrate on more of your footage, or use --no-gate to keep the first model anyway)"
        )
    _print_gate(report)
    if rec.fps and not rec.faster_than_fp32:
        raise AccuracyGateError(
            f"the recovered model passes the gate but is not faster than FP32 here "
            f"({rec.fps['recovered']:.1f} vs {rec.fps['fp32']:.1f} fps); not written: keep FP32"
        )
    return result


def run_backends():
    """The gate opens models as a run does: with the runtime's backend factory and format resolution."""
    from pipeline import precision as prec
    from pipeline.runtime import make_backend, resolve_format

    return prec.Backends(make_backend, resolve_format)


def _gate(args: argparse.Namespace, cfg, model: Path, prepared: Path, video, spec) -> None:
    """Run the accuracy gate of ``prepared`` against ``model`` on frames spread over ``video``;
    print the table and raise AccuracyGateError below the thresholds."""
    from pipeline import precision as prec

    n = args.gate_frames or cfg.precision.gate.frames
    frames, _ = prec.read_frames_at(video, prec.held_out_indices(prec.count_frames(video), n, ()))
    report = prec.run_gate(model, prepared, frames, cfg, reference_spec=spec, backends=run_backends())
    _print_gate(report)
    report.raise_if_failed()


def cmd_convert(args: argparse.Namespace) -> int:
    """``inferpath convert [CONFIG] --fp16 [--uint8-input]``: prepared model, then the gate."""
    from pipeline import precision as prec

    if not (args.fp16 or args.uint8_input):
        raise ConfigError("convert: nothing to do; pass --fp16 and/or --uint8-input")
    _positive(args.gate_frames, "--gate-frames")
    cfg = _config(args)
    model, spec_path = _model_paths(args, cfg)
    spec = run_spec(model, spec_path)
    suffix = ".fp16" * args.fp16 + ".uint8" * args.uint8_input
    output = Path(args.output or f"{model.stem}{suffix}.onnx")
    proto = prec.load_model(model)
    if args.fp16:
        proto = prec.convert_fp16(proto)
        prec.set_metadata(proto, {prec.SOURCE_KEY: prec.source_record(model)})  # the canary's default FP32
    if args.uint8_input:
        proto = prec.wrap_uint8_input(proto, spec)
    elif spec_path is not None:  # keep the spec with the model: an explicit YAML does not follow it
        prec.set_metadata(proto, {prec.SPEC_KEY: json.dumps(spec.to_dict())})
    with backend_errors_in_one_line(model), staged_path(output, ".onnx") as tmp:
        prec.save_model(proto, tmp)
        if not args.no_gate and cfg.precision.gate.enabled:
            _gate(args, cfg, model, tmp, _gate_video(args, cfg, args.video), spec)
    print(f"wrote {output} ({prec.model_precision(output)}{', uint8 NHWC BGR input' if args.uint8_input else ''})")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    """``inferpath build-engine CONFIG``: build or find the cached engine; print its path."""
    from pipeline.backends.tensorrt import build_engine_for_config

    cfg = _config(args)
    model, _ = _model_paths(args, cfg)
    path, built, precision = build_engine_for_config(cfg, model)
    print(f"{'built' if built else 'cached'} {precision} engine: {path}", file=sys.stderr)
    print(path)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """``inferpath doctor``: report hardware, libraries and which backends will run."""
    from pipeline.doctor import collect, format_report

    report = collect()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.runnable_backends else 1
