"""ONNX files and what they carry: load/save (atomic), metadata, precision, quantization target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ModelError
from pipeline.fileio import staged_path
from pipeline.model import ModelSpec

if TYPE_CHECKING:
    import onnx

SPEC_KEY = "inferpath.spec"
PRECISION_KEY = "inferpath.precision"
PREPARED_KEY = "inferpath.prepared"
TARGET_KEY = "inferpath.target"  # INT8 only: "onnxruntime" (CPU form) or "tensorrt" (symmetric form)
TARGETS = ("onnxruntime", "tensorrt")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# QOperator-form ops (ONNX Runtime's integer kernels); any of them makes a model INT8.
QUANT_OPS = (*QDQ_OPS, "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")


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
    with staged_path(path) as tmp:
        onnx.save(model, tmp)
    return path


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, items: dict[str, str]) -> None:
    """Set (replace) metadata entries on ``model`` in place."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in items]
    del model.metadata_props[:]
    for k, v in [*keep, *items.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _proto(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if not Path(model).is_file():
        raise ModelError(f"{model}: model file not found")
    return onnx.load(str(model), load_external_data=False)


def model_precision(model: str | Path | onnx.ModelProto) -> str:
    """What an ONNX carries: ``int8`` (quantized ops), ``fp16`` (float16 tensors) or ``fp32``."""
    import onnx

    model = _proto(model)
    if any(n.op_type in QUANT_OPS for n in model.graph.node):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(i.data_type == fp16 for i in model.graph.initializer):
        return "fp16"
    for n in model.graph.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute):
            return "fp16"
    return "fp32"


def quant_target(model: str | Path | onnx.ModelProto) -> str | None:
    """The backend an INT8 model was quantized for (``TARGET_KEY``), or None (not INT8 / not said)."""
    return get_metadata(_proto(model)).get(TARGET_KEY)


def model_size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6


def spec_of(model: onnx.ModelProto, fallback: ModelSpec | None = None) -> ModelSpec:
    """The spec stored in the model's metadata, else ``fallback`` (or the defaults)."""
    meta = get_metadata(model)
    if SPEC_KEY in meta:
        return ModelSpec.from_dict(json.loads(meta[SPEC_KEY]), "model metadata inferpath.spec")
    return fallback or ModelSpec()


def graph_input_name(model: onnx.ModelProto) -> str:
    """The name of the model's (first) real input, skipping initializers listed as inputs."""
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)
