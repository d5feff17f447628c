"""ONNX files and what they carry: load/save (atomic), metadata, precision, quantization target;
the FP16 conversion.

Below both :mod:`pipeline.backends` (the TensorRT backend reads a model's precision and converts
it to FP16 for TensorRT 11) and :mod:`pipeline.precision` (which prepares models), so neither
imports the other's package to share them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ModelError
from pipeline.fileio import sha256_file, staged_path
from pipeline.model import ModelSpec

if TYPE_CHECKING:
    import onnx

SPEC_KEY = "inferpath.spec"
PRECISION_KEY = "inferpath.precision"
PREPARED_KEY = "inferpath.prepared"
# INT8 / FP16: the FP32 model it was made from ({"path", "name", "sha256"}): the canary's default reference
SOURCE_KEY = "inferpath.made_from"
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


def source_record(path: str | Path) -> str:
    """The :data:`SOURCE_KEY` value for a model made from ``path``: its absolute path, name and
    sha256, so the one it names can be found again and told apart from another file of that name."""
    p = Path(path).resolve()
    return json.dumps({"path": str(p), "name": p.name, "sha256": sha256_file(p)})


def made_from(model: str | Path | onnx.ModelProto) -> dict[str, str] | None:
    """What :data:`SOURCE_KEY` says a prepared model was made from, or None. An older INT8 model
    that names only its source file (``inferpath.prepared``'s ``from``) gives ``{"name": ...}``."""
    meta = get_metadata(_proto(model))
    for key, pick in ((SOURCE_KEY, lambda d: d), (PREPARED_KEY, lambda d: {"name": d["from"]} if "from" in d else None)):
        if key in meta:
            try:
                rec = pick(json.loads(meta[key]))
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(rec, dict) and rec.get("name"):
                return {k: str(v) for k, v in rec.items()}
    return None


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
