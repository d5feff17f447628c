"""Accuracy recovery: when the gate fails, keep the most sensitive convolutions in float.

Sensitivity is measured, not guessed: FP32 and the quantized model run side by side on a few
calibration frames with every Conv's input and output exposed, and each Conv is scored by the
quantization noise it *adds*: the relative noise power (``|x_int8 - x_fp32|^2 / |x_fp32|^2``) of
its output minus that of its input. A layer that turns a clean input into a noisy output ranks
first. (ONNX Runtime's ``qdq_loss_debug`` gives each activation's cumulative SQNR; the
difference across a layer is what separates the layer's own damage from what it inherits.)

The loop keeps 1, 2, 4, ... of the top-ranked convolutions in float, re-quantizing from the same
calibration (seconds each), until the gate passes or ``precision.max_float_layers`` is reached.
Every float layer costs speed, so the result's speed is measured against FP32 and a model that
is no longer faster is reported as such.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.precision.gate import Backends, Detector
from pipeline.preprocess import preprocess

if TYPE_CHECKING:
    import onnx

    from pipeline.config import Config
    from pipeline.precision.gate import Gate, GateReport
    from pipeline.precision.quantize import Calibration, QuantizeResult

log = logging.getLogger(__name__)

SENSITIVITY_FRAMES = 8


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """``model`` serialized with ``names`` added as graph outputs (float, shape unknown)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return m.SerializeToString()


def _activations(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # keep every tensor name
    sess = ort.InferenceSession(_with_outputs(model, names), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    idx = [outs.index(n) for n in names]
    return [[r[i] for i in idx] for r in (sess.run(None, f) for f in feeds)]


def rel_noise(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Relative noise power of ``got`` against ``ref`` over frames: sum |got-ref|^2 / sum |ref|^2."""
    num = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for r, g in zip(ref, got, strict=True))
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    return num / den if den > 0 else 0.0


@dataclass(frozen=True)
class LayerScore:
    """One quantized convolution: the noise it adds, and its share of all quantized convs' MACs."""

    name: str
    added_noise: float
    mac_share: float


def layer_sensitivity(cal: Calibration, quantized: str | Path, frames: int = SENSITIVITY_FRAMES) -> list[LayerScore]:
    """The quantized convolutions of ``quantized``, most sensitive first."""
    import onnx

    qmodel = onnx.load(str(quantized))
    quantizable = set(cal.quantizable_convs())
    qnames = {n.name for n in qmodel.graph.node if n.op_type == "Conv"}
    convs = {n.name: n for n in cal.prepared.graph.node if n.op_type == "Conv" and n.name in quantizable & qnames}
    tensors = sorted({t for n in convs.values() for t in (n.input[0], n.output[0])} - {cal.input_name})
    step = max(1, len(cal.frames) // frames)
    feeds = [{cal.input_name: preprocess(f, cal.spec)[0][None]} for f in cal.frames[::step][:frames]]
    ref = _activations(cal.prepared, tensors, feeds)
    got = _activations(qmodel, tensors, feeds)
    noise = {t: rel_noise([r[i] for r in ref], [g[i] for g in got]) for i, t in enumerate(tensors)}
    noise[cal.input_name] = 0.0
    shapes = {t: ref[0][i].shape for i, t in enumerate(tensors)}
    weights = {i.name: tuple(i.dims) for i in cal.prepared.graph.initializer}
    macs = {}
    for name, n in convs.items():  # output elements x (input channels per group x kernel area)
        w = weights.get(n.input[1], ())
        macs[name] = float(np.prod(shapes[n.output[0]][1:])) * float(np.prod(w[1:]))
    total = sum(macs.values()) or 1.0
    scores = [LayerScore(name, noise[n.output[0]] - noise[n.input[0]], macs[name] / total) for name, n in convs.items()]
    return sorted(scores, key=lambda s: -s.added_noise)


def measure_fps(cfg: Config, model_path: str | Path, frame: np.ndarray, backends: Backends,
                seconds: float = 2.0) -> float:
    """Frames per second of bare inference on the deployment's backend at its batch size."""
    with Detector(cfg, model_path, backends=backends) as det:
        batch = np.stack([preprocess(frame, det.spec)[0]] * max(1, det.backend.max_batch))
        for _ in range(3):
            det.backend.infer(batch)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 5:
            det.backend.infer(batch)
            n += 1
        return n * len(batch) / (time.perf_counter() - t0)


@dataclass
class Recovery:
    """What recovery did: the layers kept in float, each attempt's verdict, and the speed cost."""

    result: QuantizeResult
    report: GateReport
    attempts: list[tuple[list[str], GateReport]] = field(default_factory=list)
    fps: dict[str, float] = field(default_factory=dict)  # "fp32", "int8" (first try), "recovered"
    first_report: GateReport | None = None  # the verdict on the first INT8 model
    judged_on: str = "onnxruntime"  # the backend the gate (and the speed) ran on

    @property
    def faster_than_fp32(self) -> bool:
        return self.fps.get("recovered", 0.0) > self.fps.get("fp32", float("inf"))

    def summary(self) -> str:
        layers = self.result.float_layers
        lines = [f"recovery: kept {len(layers)} conv(s) in float: {', '.join(layers) or 'none'}"]
        if self.fps:
            f = self.fps
            lines.append(
                f"recovery: speed (bare inference): FP32 {f['fp32']:.1f} fps, first INT8 "
                f"{f['int8']:.1f} fps, recovered {f['recovered']:.1f} fps ({f['recovered'] / f['fp32']:.2f}x FP32)"
            )
            if not self.faster_than_fp32:
                lines.append("recovery: the recovered model is NOT faster than FP32 here; keep FP32")
        elif self.report.passed:
            lines.append(f"recovery: speed not measured: judged on {self.judged_on}, the model is for "
                         f"{self.result.target}")
        return "\n".join(lines)


def recover(
    cal: Calibration,
    gate: Gate,
    target: str,
    first: tuple[QuantizeResult, GateReport],
    work: Path,
    max_layers: int,
    say: Callable[[str], None] = print,
) -> Recovery:
    """Re-quantize with the most sensitive convolutions in float until ``gate`` passes or the cap."""
    res, report = first
    ranking = layer_sensitivity(cal, res.output)
    say("recovery: most sensitive convs (added noise, share of INT8 compute): " + ", ".join(
        f"{s.name} ({s.added_noise:.2g}, {s.mac_share:.0%})" for s in ranking[:min(5, max_layers)]))
    attempts: list[tuple[list[str], GateReport]] = []
    cap = min(max_layers, len(ranking))
    sizes = sorted({min(2**i, cap) for i in range(cap.bit_length() + 1)}) if cap > 0 else []
    for k in sizes:
        keep = [s.name for s in ranking[:k]]
        res = cal.quantize(work / f"recover-{k}.onnx", target, keep)
        report = gate.judge(res.output)
        attempts.append((keep, report))
        say(f"recovery: {k} conv(s) in float: pseudo-mAP {report.map50:.3f}, agreement {report.agreement:.3f}: "
            f"{'PASS' if report.passed else 'FAIL'}")
        if report.passed:
            break
    rec = Recovery(res, report, attempts, first_report=first[1], judged_on=gate.backend_name)
    if report.passed and gate.backend_name == target:  # speed on another backend says nothing
        frame = gate.frames[len(gate.frames) // 2]
        rec.fps = {"fp32": measure_fps(gate.cfg, gate.reference, frame, gate.backends),
                   "int8": measure_fps(gate.cfg, first[0].output, frame, gate.backends),
                   "recovered": measure_fps(gate.cfg, res.output, frame, gate.backends)}
    return rec


def quantize_gated(
    cal: Calibration,
    gate: Gate,
    target: str,
    output: str | Path,
    recover_on_fail: bool = True,
    max_layers: int = 8,
    say: Callable[[str], None] = print,
) -> tuple[QuantizeResult, GateReport, Recovery | None]:
    """Quantize for ``target`` to ``output``, judge it; on a failed gate, :func:`recover`.

    Returns the model at ``output`` (the recovered one when recovery passed), its report, and the
    recovery (None when none ran). Raises nothing on failure: callers decide (the CLI refuses).
    """
    import dataclasses
    import shutil

    res = cal.quantize(output, target)
    report = gate.judge(output)
    if report.passed or not recover_on_fail or report.nothing_to_judge:
        return res, report, None
    say(f"gate failed ({'; '.join(report.failures)}); recovering: keeping the most sensitive convs in float")
    rec = recover(cal, gate, target, (res, report), cal.dir, max_layers, say)
    if rec.report.passed:
        shutil.copyfile(rec.result.output, output)
        return dataclasses.replace(rec.result, output=Path(output)), rec.report, rec
    return res, rec.report, rec
