"""TensorRT's explicit-quantization rules, checked statically on a Q/DQ ONNX.

TensorRT 10/11 builds INT8 only from symmetric Q/DQ (every zero point 0, int8 types). ONNX
Runtime's fast CPU form (uint8 activations with non-zero zero points) breaks that rule, so an
engine build from it is refused up front with one line that says how to make the right model
(:func:`require_tensorrt_form`), instead of a parser error minutes into the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.onnx_tools import QDQ_OPS, TARGET_KEY, get_metadata, load_model

if TYPE_CHECKING:
    import onnx


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


def require_tensorrt_form(model: str | Path | onnx.ModelProto) -> None:
    """Refuse (ModelError, one line) an INT8 model TensorRT cannot build: ONNX Runtime's CPU form.

    Called before an engine build. A model whose metadata says it was quantized for onnxruntime,
    or whose Q/DQ nodes have non-zero zero points or uint8 types, is refused with the command that
    makes the TensorRT form.
    """
    proto = load_model(model)
    name = Path(model).name if isinstance(model, str | Path) else "model"
    target = get_metadata(proto).get(TARGET_KEY)
    bad = [v for v in check_tensorrt_qdq(proto) if "zero point" in v or "uint8" in v]
    non_qdq = [n.op_type for n in proto.graph.node if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")]
    if target == "onnxruntime" or bad or non_qdq:
        raise ModelError(
            f"{name}: INT8 in ONNX Runtime's CPU form (uint8 activations, non-zero zero points), which TensorRT "
            "cannot build; make the TensorRT form from the FP32 model: "
            "inferpath quantize --target tensorrt --calib VIDEO"
        )
