"""``inferpath inspect MODEL``: what a model file is, what it costs, and (``--run``) where the time goes.

Static part: inputs and outputs (names, shapes, dtypes), the output format the pipeline would
use (:func:`pipeline.postprocess.detect_format` with the spec's class count), the spec, operator
counts, parameter count and size, an estimate of FLOPs per frame, opset and metadata.

FLOPs are estimated from ONNX shape inference with the batch dimension fixed to 1 (a symbolic
batch becomes 1): a multiply-add counts as 2 FLOPs.

- Conv: ``2 * N*Cout*Hout*Wout * (Cin/groups)*kh*kw`` (+ ``N*Cout*Hout*Wout`` for the bias);
  ConvTranspose likewise from the input side.
- MatMul: ``2 * prod(output) * K``; Gemm: ``2*M*N*K`` (+ ``M*N`` for C).
- Element-wise ops and activations: one FLOP per output element (BatchNormalization 2, Softmax 5);
  pooling: one per window element; reductions: one per input element.
- Data movement (Reshape, Concat, Transpose, Resize, Slice, ...) counts as 0.

``--run`` runs the pipeline over the start of a sample video (outputs off) and prints the
per-stage p50/p99 from the run's own summary, and each stage's share of the mean end-to-end
latency (``e2e = capture + preprocess + queue + inference + postprocess``; ``sink`` comes after
the e2e stamp, so it is shown but not part of the share).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.config import build_config
from pipeline.errors import ModelError, SourceError
from pipeline.metrics import STAGES
from pipeline.model import ONNX_MAGIC_HINT, load_onnx_metadata, load_spec
from pipeline.postprocess import detect_format
from pipeline.tables import render_table

SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "sample_videos" / "vtest.avi"
RUN_FRAMES = 60
E2E_PARTS = tuple(s for s in STAGES if s != "sink")

_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Max", "Min", "Sum",
    "Mean", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip",
    "Erf", "Gelu", "Mish", "Softplus", "Floor", "Ceil", "Round", "Where", "Equal", "Greater", "Less",
}
_PER_ELEMENT_COST = {"BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 5,
                     "Softmax": 5, "LogSoftmax": 5}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "GlobalAveragePool",
           "GlobalMaxPool", "ArgMax", "ArgMin"}
_POOL = {"MaxPool", "AveragePool", "LpPool"}


def _dims(type_proto: Any) -> list[int | str | None]:
    """A tensor type's shape: ints, symbolic names, None for unknown."""
    if not type_proto.tensor_type.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _fmt_shape(shape: list[Any]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _prod(values: list[int]) -> int:
    return math.prod(values) if values else 1


def _load(path: Path) -> Any:
    import onnx

    load_onnx_metadata(path)  # ModelError for a missing file, a directory, non-ONNX bytes, an empty graph
    try:
        return onnx.load(str(path))
    except Exception as exc:  # external data missing and friends
        raise ModelError(f"{path}: cannot load ONNX weights ({type(exc).__name__}: {str(exc)[:160]}); "
                         f"{ONNX_MAGIC_HINT}") from None


def estimate_flops(model: Any) -> dict[str, Any]:
    """FLOPs per frame (batch 1) by operator type, from shape inference (see the module doc).

    Returns ``{"total", "macs", "by_op": {op: flops}, "unknown_nodes": n}``; nodes whose shapes
    inference could not resolve are counted in ``unknown_nodes`` and left out of the total.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    init_names = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in init_names or not inp.type.tensor_type.HasField("shape"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and (not dims[0].HasField("dim_value") or dims[0].dim_value <= 0):
            dims[0].Clear()
            dims[0].dim_value = 1  # a symbolic batch becomes 1: FLOPs per frame
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: whatever it resolved before failing is lost, count unknown
        pass
    shapes: dict[str, list[Any]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        shapes[vi.name] = _dims(vi.type)
    for t in m.graph.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = [int(d) for d in a.t.dims]

    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return s  # type: ignore[return-value]

    by_op: Counter[str] = Counter()
    macs = 0
    unknown = 0
    for node in m.graph.node:
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        out = known(node.output[0]) if node.output else None
        try:
            if op in ("Conv", "ConvInteger", "QLinearConv"):
                w_idx = 3 if op == "QLinearConv" else 1
                w = known(node.input[w_idx])
                if out is None or w is None:
                    unknown += 1
                    continue
                mac = _prod(out) * _prod(w[1:])
                has_bias = op == "Conv" and len(node.input) > 2 and node.input[2]
                by_op[op] += 2 * mac + (_prod(out) if has_bias else 0)
                macs += mac
            elif op == "ConvTranspose":
                x, w = known(node.input[0]), known(node.input[1])
                if x is None or w is None or out is None:
                    unknown += 1
                    continue
                mac = _prod(x) * _prod(w[1:])
                has_bias = len(node.input) > 2 and node.input[2]
                by_op[op] += 2 * mac + (_prod(out) if has_bias else 0)
                macs += mac
            elif op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
                a = known(node.input[0])
                if a is None or out is None:
                    unknown += 1
                    continue
                mac = _prod(out) * a[-1]
                by_op[op] += 2 * mac
                macs += mac
            elif op == "Gemm":
                a = known(node.input[0])
                if a is None or out is None:
                    unknown += 1
                    continue
                k = a[0] if attrs.get("transA", 0) else a[-1]
                mac = _prod(out) * k
                has_c = len(node.input) > 2 and node.input[2]
                by_op[op] += 2 * mac + (_prod(out) if has_c else 0)
                macs += mac
            elif op in _ELEMENTWISE or op in _PER_ELEMENT_COST:
                if out is None:
                    unknown += 1
                    continue
                by_op[op] += _prod(out) * _PER_ELEMENT_COST.get(op, 1)
            elif op in _POOL:
                if out is None:
                    unknown += 1
                    continue
                by_op[op] += _prod(out) * _prod(list(attrs.get("kernel_shape", [1])))
            elif op in _REDUCE:
                x = known(node.input[0])
                if x is None:
                    unknown += 1
                    continue
                by_op[op] += _prod(x)
        except (IndexError, TypeError):
            unknown += 1
    return {"total": int(sum(by_op.values())), "macs": int(macs),
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])), "unknown_nodes": unknown}


def describe_model(path: str | Path) -> dict[str, Any]:
    """The static report of :func:`inspect_model`, as plain data (what ``--json`` prints)."""
    import onnx

    p = Path(path).expanduser()
    model = _load(p)
    g = model.graph
    init_names = {t.name for t in g.initializer}
    inputs = [{"name": i.name, "shape": _dims(i.type), "dtype": _dtype_name(i.type.tensor_type.elem_type)}
              for i in g.input if i.name not in init_names]
    outputs = [{"name": o.name, "shape": _dims(o.type), "dtype": _dtype_name(o.type.tensor_type.elem_type)}
               for o in g.output]
    spec = load_spec(p)
    num_classes = len(spec.names) or None
    try:
        fmt = detect_format([o["shape"] for o in outputs], num_classes, str(p))
        fmt_error = None
    except ModelError as exc:
        fmt, fmt_error = None, str(exc)
    params = 0
    param_bytes = 0
    for t in g.initializer:
        n = _prod([int(d) for d in t.dims])
        params += n
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 0
        param_bytes += n * itemsize
    ops = Counter(n.op_type for n in g.node)
    data = p.read_bytes()
    return {
        "path": str(p),
        "file_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "ir_version": int(model.ir_version),
        "opset": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "inputs": inputs,
        "outputs": outputs,
        "format": fmt,
        "format_error": fmt_error,
        "spec_format": spec.output_format,
        "num_classes": len(spec.names),
        "spec": spec.to_dict(),
        "nodes": len(g.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": int(params),
        "parameter_bytes": int(param_bytes),
        "flops": estimate_flops(model),
        "metadata": {m.key: m.value for m in model.metadata_props},
    }


def profile_run(path: str | Path, video: str | Path | None = None, frames: int = RUN_FRAMES) -> dict[str, Any]:
    """Run the pipeline with ``path`` over the first ``frames`` frames of ``video`` (outputs off)
    and return where the time went: per stage p50/p95/p99 and mean ms, and share of the mean e2e."""

    import numpy as np

    from pipeline.runtime import Pipeline

    v = Path(video).expanduser() if video else SAMPLE_VIDEO
    if not v.is_file():
        raise SourceError(f"{v}: video not found; pass --video PATH")
    cfg = build_config({
        "sources": [{"uri": str(v), "max_frames": frames}],
        "model": {"path": str(Path(path).expanduser())},
        "output": {"jsonl": False, "video": False, "display": False},
        "pipeline": {"progress": False},
        "metrics": {"log_interval_s": 0},
    }, "<inspect --run>")
    pipe = Pipeline(cfg)
    summary = pipe.run(progress=False)
    if summary.errors:
        stage, msg = summary.errors[0]
        raise ModelError(f"{path}: the pipeline failed in {stage}: {msg}")
    means = {stage: float(np.mean(pipe.metrics.stage_values(stage))) * 1000
             for stage in summary.stages_ms}
    e2e_mean = means.get("e2e", float("nan"))
    stages = {}
    for stage, (p50, p95, p99) in summary.stages_ms.items():
        share = means[stage] / e2e_mean if stage in E2E_PARTS and e2e_mean > 0 else None
        stages[stage] = {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": means[stage], "e2e_share": share}
    return {"video": str(v), "frames": summary.frames, "wall_s": summary.wall_s, "fps": summary.fps,
            "backend": summary.backend, "stages": stages}


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def format_report(data: dict[str, Any]) -> str:
    """The human report for :func:`describe_model` (+ ``run``) data."""
    lines = [f"model       {data['path']}  ({data['file_bytes'] / 1e6:.1f} MB, sha256 {data['sha256'][:12]})"]
    opsets = ", ".join(f"{k} {v}" for k, v in data["opset"].items())
    lines.append(f"onnx        IR {data['ir_version']}, opset {opsets}" +
                 (f", producer {data['producer']}" if data["producer"] else ""))
    for key in ("inputs", "outputs"):
        for i, t in enumerate(data[key]):
            label = key if i == 0 else ""
            lines.append(f"{label:<11} {t['name']}  {t['dtype']} {_fmt_shape(t['shape'])}")
    if data["format"]:
        out0 = _fmt_shape(data["outputs"][0]["shape"])
        classes = f"{data['num_classes']} class names" if data["num_classes"] else "no class names"
        spec_says = data["spec_format"]
        note = "" if spec_says == "auto" else (
            "; the spec agrees" if spec_says == data["format"] else f"; the spec says {spec_says}, which is used")
        lines.append(f"format      {data['format']} (detected from output {out0} and {classes}{note})")
    else:
        lines.append(f"format      none understood: {data['format_error']}")
    s = data["spec"]
    names = s["names"]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    lines.append(f"spec        input {s['input_size'][0]}x{s['input_size'][1]} {s['layout']} {s['color']} "
                 f"{s['input_dtype']}, scale {s['scale']:.6g}, mean {s['mean']}, std {s['std']}, "
                 f"output {s['output_format']}")
    lines.append(f"classes     {shown or '(none)'}")
    lines.append(f"parameters  {_human(data['parameters'])} ({data['parameter_bytes'] / 1e6:.1f} MB of weights)")
    f = data["flops"]
    top = ", ".join(f"{op} {_human(v)}" for op, v in list(f["by_op"].items())[:4])
    lines.append(f"FLOPs       {_human(f['total'], 'FLOPs')} per frame at batch 1 ({_human(f['macs'])} MACs); {top}" +
                 (f"; {f['unknown_nodes']} node(s) without shapes not counted" if f["unknown_nodes"] else ""))
    ops = ", ".join(f"{k} {v}" for k, v in data["ops"].items())
    lines.append(f"operators   {data['nodes']} nodes: {ops}")
    if data["metadata"]:
        lines.append("metadata")
        for k, v in data["metadata"].items():
            v1 = " ".join(v.split())
            lines.append(f"  {k}: {v1[:100] + '...' if len(v1) > 100 else v1}")
    run = data.get("run")
    if run:
        lines += ["", f"run: {run['frames']} frames of {Path(run['video']).name} on {run['backend']} in "
                      f"{run['wall_s']:.1f} s ({run['fps']:.1f} fps)"]
        rows = [(stage, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['mean_ms']:.2f}",
                 f"{r['e2e_share'] * 100:.1f}%" if r["e2e_share"] is not None else ("100%" if stage == "e2e" else "after"))
                for stage, r in run["stages"].items()]
        lines += render_table(("stage", "p50 ms", "p99 ms", "mean ms", "of e2e"), rows,
                              min_widths=(12, 8, 8, 8, 7)).splitlines()
        lines.append("(a file is read as fast as it decodes, so frames queue for inference: 'queue' is backpressure)")
        inf = run["stages"].get("inference")
        if inf and f["total"] and inf["p50_ms"] > 0:
            lines.append(f"inference runs at about {f['total'] / (inf['p50_ms'] / 1000) / 1e9:.1f} GFLOP/s (p50)")
    return "\n".join(lines)


def inspect_model(path: str | Path, run: bool = False, video: str | Path | None = None,
                  frames: int = RUN_FRAMES) -> str:
    """The report on a model file, as text; ``run=True`` adds a timed pipeline run (see module doc)."""
    data = describe_model(path)
    if run:
        data["run"] = profile_run(path, video, frames)
    return format_report(data)


__all__ = ["inspect_model", "describe_model", "estimate_flops", "profile_run", "format_report"]
