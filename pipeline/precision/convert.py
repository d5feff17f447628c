"""Float conversions of a model: raw uint8 frames as input; FP16 (:func:`convert_fp16`) lives in
:mod:`pipeline.onnx_tools`, below the backends, which convert for TensorRT 11."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.model import ModelSpec
from pipeline.onnx_tools import (
    SPEC_KEY,
    UINT8_PREFIX,
    load_model,
    set_metadata,
    spec_of,
)

if TYPE_CHECKING:
    import onnx

def wrap_uint8_input(model: str | Path | onnx.ModelProto, spec: ModelSpec | None = None) -> onnx.ModelProto:
    """A copy of ``model`` that takes raw uint8 frames ``[B, H, W, 3]`` BGR (already letterboxed).

    The graph does, in order: Cast to float (first: TensorRT accepts a UINT8 input only when it
    feeds a Cast or Identity directly), NHWC->NCHW Transpose, channel swap to the model's colour
    order (Gather), ``x * (scale/std) - mean/std`` (one Mul and one Add with per-channel
    constants), and a Cast to float16 if the model's input is float16.
    The input keeps its name. The written spec says layout NHWC, input_dtype uint8, colour BGR, so
    :func:`pipeline.preprocess.to_input` hands the padded frame over as is.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(load_model(model))
    spec = spec or spec_of(m)
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
    p = UINT8_PREFIX
    new_inits = [numpy_helper.from_array(mul, p + "mul"), numpy_helper.from_array(add, p + "add")]
    nodes = [
        helper.make_node("Cast", [name], [p + "float"], to=TensorProto.FLOAT, name=p + "cast"),
        helper.make_node("Transpose", [p + "float"], [p + "nchw"], perm=[0, 3, 1, 2], name=p + "transpose"),
    ]
    x = p + "nchw"
    if spec.color == "RGB":  # frames are BGR; swap to the model's order
        new_inits.append(numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), p + "bgr2rgb"))
        nodes.append(helper.make_node("Gather", [x, p + "bgr2rgb"], [p + "rgb"], axis=1, name=p + "swap"))
        x = p + "rgb"
    nodes.append(helper.make_node("Mul", [x, p + "mul"], [p + "scaled"], name=p + "scale"))
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
