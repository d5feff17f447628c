"""Preparing a model's precision once, from the ONNX: INT8 (Q/DQ), FP16, uint8 input; the accuracy gate.

Precision is a property of the model file. TensorRT 11 removed its FP16/INT8 builder flags and
INT8 calibrators: an engine's precision comes from the ONNX it is built from (Q/DQ nodes for
INT8, float16 tensors for FP16, built as a strongly typed network). So this module writes those
ONNX files, and the same files run on ONNX Runtime's CPU provider, which is how every path here is
tested without a GPU.

* :func:`quantize_int8`: static INT8 Q/DQ calibrated on frames of the user's own video, put
  through :func:`pipeline.preprocess.preprocess` exactly as the pipeline does. TensorRT accepts
  only symmetric quantization, so activations and weights are symmetric (every zero point 0),
  weights per output channel, biases left in float. The detection head's last convolutions stay
  in float: their outputs are box distributions and scores, where INT8 costs the most accuracy.
  :func:`check_tensorrt_qdq` verifies the result against TensorRT's rules.
* :func:`convert_fp16`: float16 weights and compute, float32 inputs/outputs kept.
* :func:`wrap_uint8_input`: the model takes raw letterboxed uint8 BGR frames (NHWC) and does cast,
  scale, mean/std, channel swap and transpose in the graph (on the GPU under TensorRT; a quarter of
  the bytes cross PCIe).
* :func:`run_gate`: the prepared model vs FP32 on held-out frames; refuses one that falls below
  ``precision.gate`` thresholds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import AccuracyGateError, ConfigError, ModelError, SourceError
from pipeline.model import ModelSpec, load_spec
from pipeline.preprocess import Letterbox, preprocess

if TYPE_CHECKING:
    import onnx

    from pipeline.config import GateConfig, ModelConfig

log = logging.getLogger(__name__)

SPEC_KEY = "inferpath.spec"
PRECISION_KEY = "inferpath.precision"
PREPARED_KEY = "inferpath.prepared"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
CALIB_PHASE, GATE_PHASE = 0.25, 0.75  # where in each stride frames are taken: disjoint sets


# --------------------------------------------------------------------------------------------
# ONNX helpers


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """An ONNX ModelProto from a path (ModelError if unreadable) or the proto itself."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path}: cannot parse as ONNX ({type(exc).__name__})") from None


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` atomically (temp file + rename), creating the parent directory."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def temp_path_beside(path: Path) -> Path:
    """A unique hidden temp name in ``path``'s directory (same filesystem, so ``os.replace`` is atomic).

    Unlike ``mkstemp`` (mode 0600), a file created there gets the usual umask permissions.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, items: dict[str, str]) -> None:
    """Set (replace) metadata entries on ``model`` in place."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in items]
    del model.metadata_props[:]
    for k, v in [*keep, *items.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def model_precision(model: str | Path | onnx.ModelProto) -> str:
    """What an ONNX carries: ``int8`` (has Q/DQ nodes), ``fp16`` (float16 tensors) or ``fp32``."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(i.data_type == fp16 for i in model.graph.initializer):
        return "fp16"
    for n in model.graph.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute):
            return "fp16"
    return "fp32"


def model_size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6


def _spec_of(model: onnx.ModelProto, fallback: ModelSpec | None = None) -> ModelSpec:
    meta = get_metadata(model)
    if SPEC_KEY in meta:
        return ModelSpec.from_dict(json.loads(meta[SPEC_KEY]), "model metadata inferpath.spec")
    return fallback or ModelSpec()


# --------------------------------------------------------------------------------------------
# Frames from the user's video


def spread_indices(total: int, n: int, phase: float) -> list[int]:
    """``n`` frame indices spread evenly over ``total`` frames, each at ``phase`` of its stride.

    Calibration uses phase 0.25 and the gate 0.75, so the two never share a frame while the video
    has at least twice as many frames as either set asks for.
    """
    if total <= 0 or n <= 0:
        return []
    n = min(n, total)
    return sorted({min(total - 1, int((i + phase) * total / n)) for i in range(n)})


def _frame_count(cap: Any) -> int:
    import cv2

    return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def read_frames(
    video: str | Path, n: int, phase: float = CALIB_PHASE, exclude: Iterable[int] = ()
) -> tuple[list[np.ndarray], list[int]]:
    """Decode ``n`` BGR frames spread over ``video`` (see :func:`spread_indices`).

    Frames in ``exclude`` (e.g. the calibration set) are skipped, so the gate's frames are held
    out. Returns (frames, their indices). Reads sequentially with ``grab`` (no seeking), which is
    exact for every codec.
    """
    import cv2

    path = Path(video)
    if not path.is_file():
        raise SourceError(f"{path}: video file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: cannot open video")
    try:
        total = _frame_count(cap)
        if total <= 0:  # some containers do not say; count once
            while cap.grab():
                total += 1
            cap.release()
            cap = cv2.VideoCapture(str(path))
        excluded = set(exclude)
        wanted = [i for i in spread_indices(total, n, phase) if i not in excluded]
        frames, got, idx = [], [], 0
        for target in wanted:
            while idx < target:
                if not cap.grab():
                    break
                idx += 1
            ok, frame = cap.read()
            idx += 1
            if not ok or frame is None:
                break
            frames.append(frame)
            got.append(target)
    finally:
        cap.release()
    if not frames:
        raise SourceError(f"{path}: no frames could be decoded")
    return frames, got


class FrameCalibrationReader:
    """ONNX Runtime calibration data: one preprocessed frame per call, batch of 1.

    Frames go through :func:`pipeline.preprocess.preprocess` with the model's spec, so
    calibration sees exactly the tensors the pipeline will feed.
    """

    def __init__(self, frames: Sequence[np.ndarray], spec: ModelSpec, input_name: str) -> None:
        self._frames, self._spec, self._name = list(frames), spec, input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._frames):
            return None
        tensor, _ = preprocess(self._frames[self._i], self._spec)
        self._i += 1
        return {self._name: tensor[None]}

    def rewind(self) -> None:
        self._i = 0


def _calibration_reader(frames: Sequence[np.ndarray], spec: ModelSpec, input_name: str) -> Any:
    """A real ``CalibrationDataReader`` subclass instance (ORT checks the type)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(FrameCalibrationReader, CalibrationDataReader):
        pass

    return _Reader(frames, spec, input_name)


# --------------------------------------------------------------------------------------------
# INT8


def find_head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes that feed a graph output through non-Conv ops only.

    These are the detector head's last convolutions (class scores, box distributions); everything
    after them is decoding arithmetic. Walking back from each output, the search stops at the
    first Conv on every path. A 1-output-channel Conv (a DFL projection) is treated as decoding
    and walked through.
    """
    producers = {out: n for n in model.graph.node for out in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            w = inits.get(node.input[1]) if len(node.input) > 1 else None
            if w is not None and len(w.dims) > 0 and w.dims[0] == 1:
                stack.extend(node.input[:1])
                continue
            found.append(node.name)
            continue
        stack.extend(i for i in node.input if i and i not in inits)
    unnamed = [n for n in model.graph.node if n.op_type == "Conv" and not n.name]
    if unnamed:
        log.warning("%d Conv node(s) have no name; they cannot be excluded by name", len(unnamed))
    return sorted(set(found) - {""})


def _calib_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    try:
        return methods[name]
    except KeyError:
        raise ConfigError(f"precision.calib_method: expected one of {', '.join(methods)}, got {name!r}") from None


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_int8` wrote and how."""

    output: Path
    calib_frames: list[int]
    excluded_nodes: list[str]
    seconds: float


def quantize_int8(
    model_path: str | Path,
    frames: Sequence[np.ndarray],
    output: str | Path,
    spec: ModelSpec | None = None,
    calib_method: str = "minmax",
    calib_indices: Sequence[int] = (),
    preprocess_graph: bool = True,
) -> QuantizeResult:
    """Write an INT8 Q/DQ ONNX of ``model_path`` calibrated on ``frames`` (BGR images).

    Symmetric int8 activations and weights (zero points 0), per-channel weights, float bias, head
    convolutions excluded: the form TensorRT 10/11 builds and ONNX Runtime runs. Only Conv inputs
    are quantized, which is NVIDIA's recommended Q/DQ placement (quantize the inputs of weighted
    layers; let TensorRT fuse the rest). Raises ModelError if the result breaks a TensorRT rule.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    src = Path(model_path)
    original = load_model(src)
    spec = spec or load_spec(src)
    if model_precision(original) != "fp32":
        raise ModelError(f"{src}: quantize an FP32 model (this one is {model_precision(original)})")
    if spec.input_dtype == "uint8":
        raise ModelError(f"{src}: quantize the float-input model, then add --uint8-input with `inferpath convert`")
    if not frames:
        raise ConfigError("quantize: no calibration frames")
    inits = {i.name for i in original.graph.initializer}
    input_name = next(i.name for i in original.graph.input if i.name not in inits)
    with tempfile.TemporaryDirectory(prefix="inferpath-quant-") as tmp:
        work = Path(tmp) / "model.onnx"
        if preprocess_graph:
            # Shape inference + graph optimization first, as ORT recommends for static quantization.
            try:
                # ONNX shape inference suffices for a conv detector; symbolic inference would need sympy.
                quant_pre_process(str(src), str(work), skip_symbolic_shape=True)
            except Exception as exc:  # pre-processing is an optimization; quantize the raw graph instead
                log.warning("quant_pre_process failed (%s); quantizing the model as is", exc)
                save_model(original, work)
        else:
            save_model(original, work)
        prepared = onnx.load(str(work))
        exclude = find_head_convs(prepared)
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(work),
            str(Path(tmp) / "int8.onnx"),
            calibration_data_reader=_calibration_reader(frames, spec, input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=_calib_method(calib_method),
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "AddQDQPairToWeight": True,
            },
        )
        qmodel = onnx.load(str(Path(tmp) / "int8.onnx"))
    violations = check_tensorrt_qdq(qmodel)
    if violations:
        raise ModelError("INT8 model breaks TensorRT's Q/DQ rules: " + "; ".join(violations[:5]))
    meta = get_metadata(original)
    meta[PRECISION_KEY] = "int8"
    meta[PREPARED_KEY] = json.dumps(
        {"from": src.name, "calib_frames": len(frames), "calib_method": calib_method, "excluded": exclude}
    )
    set_metadata(qmodel, meta)
    save_model(qmodel, out)
    return QuantizeResult(out, list(calib_indices), exclude, time.perf_counter() - t0)


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant-node output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def check_tensorrt_qdq(model: onnx.ModelProto) -> list[str]:
    """Static check of a Q/DQ ONNX against TensorRT's explicit-quantization rules.

    Returns human-readable violations (empty: fine):
    - zero points must be constant and all 0 (TensorRT supports symmetric quantization only);
    - quantized types must be int8 (uint8 activations, the ORT default, are rejected; a
      QuantizeLinear without a zero point produces uint8);
    - scales must be constant and positive;
    - per-channel weight scales of a Conv must be on axis 0 (output channels), of a
      ConvTranspose on axis 1;
    - every QuantizeLinear must feed DequantizeLinear nodes only, with the same scale and zero
      point (a Q without its matching DQ leaves int8 in a float graph);
    - a DequantizeLinear of an activation must come from a QuantizeLinear;
    - Conv biases stay float (no int32 bias DQ).
    """
    import onnx

    violations: list[str] = []
    nodes = list(model.graph.node)
    producers = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    int8, uint8 = onnx.TensorProto.INT8, onnx.TensorProto.UINT8

    def attr(node: Any, name: str, default: int) -> int:
        for a in node.attribute:
            if a.name == name:
                return int(a.i)
        return default

    def dtype_of(name: str) -> int | None:
        for init in model.graph.initializer:
            if init.name == name:
                return init.data_type
        return None

    for n in nodes:
        if n.op_type not in QDQ_OPS:
            continue
        label = f"{n.op_type} {n.name or n.output[0]!r}"
        scale = _const(model, n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            violations.append(f"{label}: scale is not a constant")
        elif not np.all(scale > 0):
            violations.append(f"{label}: scale has non-positive values")
        zp_name = n.input[2] if len(n.input) > 2 else ""
        if zp_name:
            zp = _const(model, zp_name)
            if zp is None:
                violations.append(f"{label}: zero point is not a constant")
            else:
                if np.any(zp != 0):
                    violations.append(f"{label}: non-zero zero point (TensorRT needs symmetric quantization)")
                if zp.dtype == np.uint8:
                    violations.append(f"{label}: uint8 quantization (TensorRT accepts int8 only)")
                elif zp.dtype != np.int8:
                    violations.append(f"{label}: zero point type {zp.dtype} (expected int8)")
        elif n.op_type == "QuantizeLinear" and not any(a.name == "output_dtype" and a.i == int8 for a in n.attribute):
            violations.append(f"{label}: no zero point, so the output is uint8 (TensorRT accepts int8 only)")
        elif n.op_type == "DequantizeLinear":
            t = dtype_of(n.input[0])
            if t == uint8:
                violations.append(f"{label}: uint8 input (TensorRT accepts int8 only)")
        if scale is not None and scale.size > 1:
            axis = attr(n, "axis", 1)
            users = consumers.get(n.output[0], [])
            if n.op_type == "QuantizeLinear":  # weight Q -> DQ -> Conv: look through the DQ
                users = [u2 for u in users if u.op_type == "DequantizeLinear" for u2 in consumers.get(u.output[0], [])]
            for u in users:
                if (
                    u.op_type in ("Conv", "ConvTranspose")
                    and len(u.input) > 1
                    and u.input[1] in (n.output[0], *(c.output[0] for c in consumers.get(n.output[0], [])))
                ):
                    want = 0 if u.op_type == "Conv" else 1
                    if axis != want:
                        violations.append(f"{label}: per-channel axis {axis} for {u.op_type} weights (expected {want})")
        if n.op_type == "QuantizeLinear":
            users = consumers.get(n.output[0], [])
            if n.output[0] in graph_outputs or not users:
                violations.append(f"{label}: quantized tensor leaves the graph without a DequantizeLinear")
            for u in users:
                if u.op_type != "DequantizeLinear":
                    violations.append(f"{label}: feeds {u.op_type} {u.name!r} instead of a DequantizeLinear")
                    continue
                if list(u.input[1:3]) != list(n.input[1:3]):
                    s2 = _const(model, u.input[1])
                    if scale is None or s2 is None or not np.array_equal(scale, s2):
                        violations.append(f"{label}: its DequantizeLinear {u.name!r} uses a different scale")
        else:
            src = n.input[0]
            prod = producers.get(src)
            if prod is not None and prod.op_type != "QuantizeLinear" and prod.op_type != "Constant":
                violations.append(f"{label}: input comes from {prod.op_type}, not a QuantizeLinear")
            dt = dtype_of(src)
            if dt == onnx.TensorProto.INT32:
                users = consumers.get(n.output[0], [])
                if any(u.op_type == "Conv" and len(u.input) > 2 and u.input[2] == n.output[0] for u in users):
                    violations.append(f"{label}: quantized (int32) Conv bias; TensorRT expects a float bias")
    return violations


# --------------------------------------------------------------------------------------------
# FP16 and uint8 input


def convert_fp16(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of ``model`` whose inputs and outputs stay float32.

    Uses onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``: maintained by
    the ONNX/ONNX Runtime team, it converts initializers and Constant nodes, inserts the I/O Casts,
    clamps out-of-range constants, and keeps ops without FP16 kernels (Resize, TopK, NMS, ...) in
    FP32 behind Casts. The same converter is vendored in ONNX Runtime's transformer tools, so ORT
    runs its output. NVIDIA's ModelOpt AutoCast is the alternative TensorRT 11 documents, but it
    pulls in PyTorch; for a conv detector the plain conversion is enough and the accuracy gate
    checks it. Keeping float32 I/O means the pipeline's preprocessing and decoding do not change.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ModelError("FP16 conversion needs onnxconverter-common: pip install 'inferpath[precision]'") from None
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(load_model(model))
    if model_precision(m) != "fp32":
        raise ModelError(f"FP16 conversion needs an FP32 model (this one is {model_precision(m)})")
    with warnings.catch_warnings():  # one warning per clamped constant (e.g. -inf max-pool padding)
        warnings.simplefilter("ignore", UserWarning)
        out = float16.convert_float_to_float16(m, keep_io_types=True)
    meta = get_metadata(m)
    meta[PRECISION_KEY] = "fp16"
    set_metadata(out, meta)
    return out


def wrap_uint8_input(model: str | Path | onnx.ModelProto, spec: ModelSpec | None = None) -> onnx.ModelProto:
    """A copy of ``model`` that takes raw uint8 frames ``[B, H, W, 3]`` BGR (already letterboxed).

    The graph does, in order: NHWC->NCHW Transpose (on uint8, the cheapest place), channel swap to
    the model's colour order (Gather), Cast to float, ``x * (scale/std) - mean/std`` (one Mul and
    one Add with per-channel constants), and a Cast to float16 if the model's input is float16.
    The input keeps its name. The written spec says layout NHWC, input_dtype uint8, colour BGR, so
    :func:`pipeline.preprocess.to_input` hands the padded frame over as is.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(load_model(model))
    spec = spec or _spec_of(m)
    if spec.input_dtype == "uint8" or spec.layout == "NHWC":
        raise ModelError("model already takes NHWC/uint8 input; wrap the float model")
    g = m.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise ModelError(f"--uint8-input needs a model with one input, this one has {len(graph_inputs)}")
    inp = graph_inputs[0]
    tt = inp.type.tensor_type
    dims = list(tt.shape.dim)
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise ModelError(
            f"--uint8-input needs an NCHW input with 3 channels, got {onnx.helper.printable_type(inp.type)}"
        )
    in_type = tt.elem_type
    name = inp.name
    inner = f"{name}__inferpath_normalized"
    for node in g.node:
        for k, x in enumerate(node.input):
            if x == name:
                node.input[k] = inner
    scale = np.float32(spec.scale)
    std = np.asarray(spec.std, np.float32)
    mean = np.asarray(spec.mean, np.float32)
    mul = (scale / std).reshape(1, 3, 1, 1).astype(np.float32)
    add = (-mean / std).reshape(1, 3, 1, 1).astype(np.float32)
    p = "inferpath_uint8/"
    new_inits = [numpy_helper.from_array(mul, p + "mul"), numpy_helper.from_array(add, p + "add")]
    nodes = [helper.make_node("Transpose", [name], [p + "nchw"], perm=[0, 3, 1, 2], name=p + "transpose")]
    x = p + "nchw"
    if spec.color == "RGB":  # frames are BGR; swap to the model's order
        new_inits.append(numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), p + "bgr2rgb"))
        nodes.append(helper.make_node("Gather", [x, p + "bgr2rgb"], [p + "rgb"], axis=1, name=p + "swap"))
        x = p + "rgb"
    nodes.append(helper.make_node("Cast", [x], [p + "float"], to=TensorProto.FLOAT, name=p + "cast"))
    nodes.append(helper.make_node("Mul", [p + "float", p + "mul"], [p + "scaled"], name=p + "scale"))
    last = inner if in_type == TensorProto.FLOAT else p + "normalized"
    nodes.append(helper.make_node("Add", [p + "scaled", p + "add"], [last], name=p + "shift"))
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [last], [inner], to=in_type, name=p + "cast_in"))
    new_dims: list[Any] = [
        dims[0].dim_param or dims[0].dim_value or "batch",
        dims[2].dim_value or dims[2].dim_param,
        dims[3].dim_value or dims[3].dim_param,
        3,
    ]
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, new_dims)
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old_nodes)
    g.initializer.extend(new_inits)
    idx = list(g.input).index(inp)
    g.input.remove(inp)
    g.input.insert(idx, new_input)
    new_spec = replace(
        spec, layout="NHWC", input_dtype="uint8", color="BGR", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    set_metadata(m, {SPEC_KEY: json.dumps(new_spec.to_dict())})
    # TensorRT and ORT want the ops used present in the opset; Gather/Transpose/Cast exist since 1.
    onnx.checker.check_model(m)
    return m


# --------------------------------------------------------------------------------------------
# Running a model on ONNX Runtime (gate, tests, measurements)


class OrtModel:
    """A minimal ONNX Runtime runner with the model's spec: ``detect(frames) -> list[Detections]``."""

    def __init__(self, path: str | Path, spec: ModelSpec | None = None, threads: int = 0, fmt: str = "auto") -> None:
        import onnxruntime as ort

        from pipeline.postprocess import detect_format

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{self.path}: ONNX Runtime cannot load the model ({str(exc).splitlines()[0]})") from None
        self.spec = spec or load_spec(self.path)
        self.input_name = self.session.get_inputs()[0].name
        if fmt == "auto":
            fmt = self.spec.output_format
        if fmt == "auto":
            shapes = [o.shape for o in self.session.get_outputs()]
            fmt = detect_format(shapes, len(self.spec.names) or None, str(self.path))
        self.fmt = fmt

    def raw(self, frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[Letterbox]]:
        """Raw outputs for a batch of BGR frames, and their letterboxes."""
        items = [preprocess(f, self.spec) for f in frames]
        batch = np.stack([t for t, _ in items])
        return self.session.run(None, {self.input_name: batch}), [lb for _, lb in items]

    def detect(self, frames: Sequence[np.ndarray], conf: float, iou: float, max_det: int) -> list[Any]:
        from pipeline.postprocess import postprocess

        outs: list[Any] = []
        for f in frames:  # batch 1: works for fixed-batch models too
            raw, lbs = self.raw([f])
            outs.extend(postprocess(raw, lbs, self.fmt, conf, iou, max_det))
        return outs


# --------------------------------------------------------------------------------------------
# Accuracy gate


@dataclass(frozen=True)
class GateReport:
    """A prepared model vs FP32 on held-out frames. Recall/precision are measured against FP32."""

    frames: int
    reference_boxes: int
    candidate_boxes: int
    matched: int
    recall: float
    precision: float
    mean_iou: float
    min_recall: float
    min_precision: float
    min_mean_iou: float
    reference_mb: float
    candidate_mb: float
    candidate_precision: str = "?"
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        """A small fixed-width table for the CLI."""
        rows = [
            ("precision (vs FP32)", f"{self.precision:.3f}", f">= {self.min_precision:.2f}"),
            ("recall (vs FP32)", f"{self.recall:.3f}", f">= {self.min_recall:.2f}"),
            ("mean IoU of matches", f"{self.mean_iou:.3f}", f">= {self.min_mean_iou:.2f}"),
            ("boxes FP32 / prepared", f"{self.reference_boxes} / {self.candidate_boxes}", f"{self.matched} matched"),
            ("held-out frames", str(self.frames), ""),
            ("model size MB", f"{self.reference_mb:.2f} -> {self.candidate_mb:.2f}", f"({self.candidate_precision})"),
            ("gate", "PASS" if self.passed else "FAIL", ""),
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)

    def raise_if_failed(self) -> None:
        if self.failures:
            raise AccuracyGateError(
                f"accuracy gate failed ({self.candidate_precision} vs FP32 on {self.frames} held-out frames): "
                + "; ".join(self.failures)
                + " (use --no-gate to keep the model anyway)"
            )


def match_detections(ref: Any, cand: Any, iou_threshold: float = 0.5) -> list[float]:
    """IoUs of greedy one-to-one matches (same class, IoU >= threshold), best pairs first."""
    from pipeline.postprocess import box_iou

    if len(ref) == 0 or len(cand) == 0:
        return []
    ious = box_iou(ref.xyxy.astype(np.float64), cand.xyxy.astype(np.float64))
    ious = np.where(ref.class_id[:, None] == cand.class_id[None, :], ious, 0.0)
    pairs = np.argwhere(ious >= iou_threshold)
    order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_r, used_c, matched = set(), set(), []
    for r, c in pairs[order]:
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        matched.append(float(ious[r, c]))
    return matched


def compare_detections(
    ref: Sequence[Any], cand: Sequence[Any], iou_threshold: float = 0.5
) -> tuple[int, int, list[float]]:
    """(reference boxes, candidate boxes, matched IoUs) over frames."""
    n_ref = sum(len(d) for d in ref)
    n_cand = sum(len(d) for d in cand)
    ious: list[float] = []
    for r, c in zip(ref, cand):
        ious.extend(match_detections(r, c, iou_threshold))
    return n_ref, n_cand, ious


def run_gate(
    reference: str | Path,
    candidate: str | Path,
    frames: Sequence[np.ndarray],
    gate: GateConfig,
    model_cfg: ModelConfig | None = None,
    threads: int = 0,
    reference_spec: ModelSpec | None = None,
) -> GateReport:
    """Compare ``candidate`` with the FP32 ``reference`` on ``frames``; the report lists failures.

    Both run on ONNX Runtime's CPU provider with the pipeline's own preprocessing and decoding
    (each with its own spec, so a uint8-input candidate is fed raw frames). Boxes match when they
    have the same class and IoU >= 0.5; recall and precision are against FP32's boxes, so 1.0
    means "the same detections", not ground-truth accuracy.
    """
    from pipeline.config import ModelConfig

    mc = model_cfg or ModelConfig()
    ref_model = OrtModel(reference, reference_spec, threads, mc.format)
    cand_model = OrtModel(candidate, None, threads, mc.format)
    ref = ref_model.detect(frames, mc.conf_threshold, mc.iou_threshold, mc.max_detections)
    cand = cand_model.detect(frames, mc.conf_threshold, mc.iou_threshold, mc.max_detections)
    n_ref, n_cand, ious = compare_detections(ref, cand)
    matched = len(ious)
    recall = matched / n_ref if n_ref else (1.0 if n_cand == 0 else 0.0)
    precision = matched / n_cand if n_cand else (1.0 if n_ref == 0 else 0.0)
    mean_iou = float(np.mean(ious)) if ious else (1.0 if n_ref == n_cand == 0 else 0.0)
    failures = []
    if recall < gate.min_recall:
        failures.append(f"recall {recall:.3f} < {gate.min_recall:.2f}")
    if precision < gate.min_precision:
        failures.append(f"precision {precision:.3f} < {gate.min_precision:.2f}")
    if mean_iou < gate.min_mean_iou:
        failures.append(f"mean IoU {mean_iou:.3f} < {gate.min_mean_iou:.2f}")
    if n_ref == 0:
        log.warning("accuracy gate: FP32 found no objects in %d frames; the comparison says little", len(frames))
    return GateReport(
        frames=len(frames),
        reference_boxes=n_ref,
        candidate_boxes=n_cand,
        matched=matched,
        recall=recall,
        precision=precision,
        mean_iou=mean_iou,
        min_recall=gate.min_recall,
        min_precision=gate.min_precision,
        min_mean_iou=gate.min_mean_iou,
        reference_mb=model_size_mb(reference),
        candidate_mb=model_size_mb(candidate),
        candidate_precision=model_precision(candidate),
        failures=failures,
    )


# --------------------------------------------------------------------------------------------
# Measurement (for the closing note and scripts/bench.py)


def measure_fps(
    model_path: str | Path, frame: np.ndarray, iterations: int = 50, warmup: int = 5, threads: int = 0
) -> float:
    """Inference-only frames per second at batch 1 on ONNX Runtime CPU (preprocessing excluded)."""
    m = OrtModel(model_path, threads=threads)
    tensor, _ = preprocess(frame, m.spec)
    feed = {m.input_name: tensor[None]}
    for _ in range(warmup):
        m.session.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(iterations):
        m.session.run(None, feed)
    return iterations / (time.perf_counter() - t0)


__all__ = [
    "GateReport",
    "QuantizeResult",
    "FrameCalibrationReader",
    "OrtModel",
    "check_tensorrt_qdq",
    "compare_detections",
    "convert_fp16",
    "find_head_convs",
    "match_detections",
    "measure_fps",
    "model_precision",
    "quantize_int8",
    "read_frames",
    "run_gate",
    "save_model",
    "spread_indices",
    "wrap_uint8_input",
]
