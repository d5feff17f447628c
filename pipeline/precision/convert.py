"""Float conversions of a model: FP16 weights and compute, and raw uint8 frames as input."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.model import ModelSpec
from pipeline.precision.onnx_io import (
    PRECISION_KEY,
    SPEC_KEY,
    get_metadata,
    load_model,
    model_precision,
    set_metadata,
    spec_of,
)

if TYPE_CHECKING:
    import onnx

UINT8_PREFIX = "inferpath_uint8/"  # the names of the nodes and constants :func:`wrap_uint8_input` adds
FP16_REVISION = 2  # bump when convert_fp16's output changes (see fp16_converter_version)


def convert_fp16(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of ``model`` whose inputs and outputs stay float32.

    Uses onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``: maintained by
    the ONNX/ONNX Runtime team, it converts initializers and Constant nodes, inserts the I/O Casts,
    clamps out-of-range constants, and keeps ops without FP16 kernels (Resize, TopK, NMS, ...) in
    FP32 behind Casts. The same converter is vendored in ONNX Runtime's transformer tools, so ORT
    runs its output. NVIDIA's ModelOpt AutoCast is the alternative TensorRT 11 documents, but it
    pulls in PyTorch; for a conv detector the plain conversion is enough and the accuracy gate
    checks it. Keeping float32 I/O means the pipeline's preprocessing and decoding do not change.

    A ``--uint8-input`` model's wrapper (the ``inferpath_uint8/*`` nodes: Cast, Transpose, channel
    swap, normalization) stays in float32: the converter would otherwise turn its constants and
    value_info to float16 but leave its ``Cast(to=FLOAT)``, an ONNX that ONNX Runtime and
    ``onnx.checker`` refuse. The converter puts one Cast to float16 after the wrapper instead. The
    result is checked in full (``onnx.checker``, shape inference included) before it is returned.
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
    wrapper = [n.name for n in m.graph.node if n.name.startswith(UINT8_PREFIX)]
    with warnings.catch_warnings():  # one warning per clamped constant (e.g. -inf max-pool padding)
        warnings.simplefilter("ignore", UserWarning)
        out = float16.convert_float_to_float16(m, keep_io_types=True, node_block_list=wrapper)
    meta = get_metadata(m)
    meta[PRECISION_KEY] = "fp16"
    set_metadata(out, meta)
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"FP16 conversion produced an invalid ONNX: {first}") from None
    return out


def fp16_converter_version() -> str:
    """What produced an FP16 conversion: onnxconverter-common's version and this module's revision.

    Part of the key of a cached conversion, so a fixed converter never reuses a file an older one
    wrote (revision 2: the uint8-input wrapper is kept in float32).
    """
    import importlib.metadata

    try:
        version = importlib.metadata.version("onnxconverter-common")
    except importlib.metadata.PackageNotFoundError:
        version = "missing"
    return f"onnxconverter-common {version}; inferpath fp16 rev {FP16_REVISION}"


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
